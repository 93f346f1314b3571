"""``waypoint list``: the waypoints of a namespace (or all) as a kubectl-style table."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence
from typing import Any

from waypoint.commands import kubecli
from waypoint.kube import gateway


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "list", parents=[kubecli.connection_flags()], help="list waypoints"
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    parser.set_defaults(func=run)


@kubecli.guard
def run(args: argparse.Namespace) -> int:
    with kubecli.connect(args) as cluster:
        namespace = None if args.all_namespaces else kubecli.namespace(args)
        waypoints = kubecli.waypoints(cluster, namespace)
        if not waypoints:
            where = "any namespace" if namespace is None else f"namespace {namespace}"
            print(f"no waypoints found in {where}")
            return 0
        rows = [["NAME", "NAMESPACE", "FOR", "SERVICE-ACCOUNT", "REPLICAS", "PROGRAMMED", "AGE"]]
        for gw in waypoints:
            ns, name = gateway.key(gw)
            rows.append(
                [
                    name,
                    ns,
                    gateway.traffic_type(gw),
                    gateway.service_account(gw) or "-",
                    kubecli.replicas(cluster, ns, name),
                    kubecli.condition(gw, "Programmed").get("status", "Unknown"),
                    age((gw.get("metadata") or {}).get("creationTimestamp")),
                ]
            )
        print(table(rows))
    return 0


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    if not timestamp:
        return "-"
    created = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
