"""Argument parsers shared by the subcommands: ``NS/NAME`` references and ``-H`` headers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def namespaced(flag: str, second: str = "NAME") -> Callable[[str], tuple[str, str]]:
    """An argparse ``type`` for ``NAMESPACE/<second>``, naming ``flag`` in its error."""

    def parse(text: str) -> tuple[str, str]:
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise argparse.ArgumentTypeError(f"{flag} must be NAMESPACE/{second}, got {text!r}")
        return namespace, name

    return parse


def parse_headers(raw: Sequence[str]) -> list[tuple[str, str]]:
    """``-H 'Name: value'`` flags as (name, value) pairs; a malformed one raises ValueError."""
    out = []
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header must be 'NAME: VALUE', got {item!r}")
        out.append((name.strip(), value.strip()))
    return out
