"""``waypoint delete``: delete waypoint Gateways by name or ``--all`` in a namespace; a
Gateway of another class is named and left alone."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from waypoint.commands import kubecli
from waypoint.controller import apiclient
from waypoint.kube import gateway


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "delete", parents=[kubecli.connection_flags()], help="delete waypoint Gateways"
    )
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--all", action="store_true", help="delete every waypoint in the namespace")
    parser.add_argument("-n", "--namespace")
    parser.set_defaults(func=run)


@kubecli.guard
def run(args: argparse.Namespace) -> int:
    if bool(args.names) == bool(args.all):
        raise kubecli.CommandError("give waypoint NAMEs or --all (not both)")
    with kubecli.connect(args) as cluster:
        namespace = kubecli.namespace(args)
        failures = 0
        if args.all:
            targets = [gateway.key(gw)[1] for gw in kubecli.waypoints(cluster, namespace)]
            if not targets:
                print(f"no waypoints in namespace {namespace}")
        else:
            targets = list(args.names)
        for name in targets:
            live = cluster.get(apiclient.GATEWAY, namespace, name)
            if live is None:
                print(f"error: waypoint {namespace}/{name} not found", file=sys.stderr)
                failures += 1
            elif not gateway.is_waypoint(live):
                klass = (live.get("spec") or {}).get("gatewayClassName")
                print(
                    f"error: Gateway {namespace}/{name} has gatewayClassName {klass!r}, "
                    "not a waypoint; left alone",
                    file=sys.stderr,
                )
                failures += 1
            else:
                cluster.delete(apiclient.GATEWAY, namespace, name)
                print(f"waypoint {namespace}/{name} deleted")
        return 1 if failures else 0
