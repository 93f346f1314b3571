"""Argument parsers shared by the subcommands: ``NS/NAME`` references, ``-H`` headers and
``on``/``off`` switches; help text from docstrings; YAML output without anchors."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml

# :mod:`x`, :func:`x`, :class:`~a.b.c` ... -> the name as a reader would type it.
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain(doc: str | None) -> str:
    """A module docstring as ``--help`` text: reStructuredText roles and literals made plain."""
    text = _ROLE.sub(r"\1", doc or "")
    return _LITERAL.sub(r"\1", text)


class _NoAliases(yaml.SafeDumper):
    """Never write anchors (``&id001``) for objects that appear twice: kubectl users read it."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_NoAliases, sort_keys=False)


def dump_yaml_all(objs: Iterable[Any]) -> str:
    return yaml.dump_all(objs, Dumper=_NoAliases, sort_keys=False)


def namespaced(flag: str, second: str = "NAME") -> Callable[[str], tuple[str, str]]:
    """An argparse ``type`` for ``NAMESPACE/<second>``, naming ``flag`` in its error."""

    def parse(text: str) -> tuple[str, str]:
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise argparse.ArgumentTypeError(f"{flag} must be NAMESPACE/{second}, got {text!r}")
        return namespace, name

    return parse


def on_off(text: str) -> bool:
    """An argparse ``type`` for an ``on``/``off`` switch (use ``metavar="{on,off}"``)."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"must be on or off, got {text!r}")
    return text == "on"


def add_access_log_flag(parser: Any, flag: str = "--access-log") -> None:
    """``flag`` (dest from its name) for ``BootstrapOptions.access_log`` on ``parser`` or a group."""
    parser.add_argument(
        flag,
        type=on_off,
        default=True,
        metavar="{on,off}",
        help="the waypoint Envoy's JSON access log on stdout (default: on; off saves 6-15%% "
        "of its CPU per request)",
    )


def parse_headers(raw: Sequence[str]) -> list[tuple[str, str]]:
    """``-H 'Name: value'`` flags as (name, value) pairs; a malformed one raises ValueError."""
    out = []
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header must be 'NAME: VALUE', got {item!r}")
        out.append((name.strip(), value.strip()))
    return out
