"""The ``waypoint`` command line: one subcommand module per concern, wired here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from waypoint import version
from waypoint.commands import (
    apply,
    certs,
    controller,
    delete,
    explain,
    generate,
    istiocerts,
    proxyconfig,
    render,
    request,
    serve,
    status,
    up,
)

# ``list`` is the subcommand's name; the alias keeps the builtin usable here.
from waypoint.commands import list as list_cmd

# Each module defines register(subparsers) and sets args.func(args) -> int on its parsers; the
# help lists the subcommands in this order.
COMMAND_MODULES: tuple[ModuleType, ...] = (
    render,
    apply,
    generate,
    delete,
    list_cmd,
    status,
    controller,
    serve,
    up,
    request,
    explain,
    certs,
    proxyconfig,
    istiocerts,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waypoint", description="Envoy waypoint proxies for ambient meshes."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version.package_version()}"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
