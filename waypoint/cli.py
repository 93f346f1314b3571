"""The ``waypoint`` command line: one subcommand module per concern, wired here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from waypoint import version

# Each module defines register(subparsers) and sets args.func(args) -> int on its parsers.
COMMAND_MODULES: tuple[str, ...] = (
    "waypoint.commands.render",
    "waypoint.commands.apply",
    "waypoint.commands.generate",
    "waypoint.commands.delete",
    "waypoint.commands.list",
    "waypoint.commands.status",
    "waypoint.commands.controller",
    "waypoint.commands.serve",
    "waypoint.commands.up",
    "waypoint.commands.request",
    "waypoint.commands.explain",
    "waypoint.commands.certs",
    "waypoint.commands.proxyconfig",
    "waypoint.commands.istiocerts",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waypoint", description="Envoy waypoint proxies for ambient meshes."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version.package_version()}"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
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
