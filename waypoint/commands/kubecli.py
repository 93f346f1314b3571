"""What the cluster subcommands share, as kubectl and istioctl do it: the ``--kubeconfig`` and
``--context`` flags and the client they open, the namespace a command acts in, how a failure
is reported (``error: <message>`` on stderr, exit code 1), ``-o yaml|json`` output, durations,
and the reads of waypoints that ``delete``, ``list`` and ``status`` have in common.

Every subcommand but ``generate`` talks to the API server named by ``--kubeconfig``/``--context``
(or ``$KUBECONFIG``, ~/.kube/config, or the in-cluster service account).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

from waypoint import names
from waypoint.commands import args as cli_args
from waypoint.controller import apiclient
from waypoint.kube import gateway

Obj = dict[str, Any]


class CommandError(RuntimeError):
    """A user-facing failure: printed as ``error: <message>``, exit code 1."""


def connection_flags() -> argparse.ArgumentParser:
    """A parent parser (``parents=[...]``) with the flags that choose the cluster."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    connection.add_argument("--context", help="kubeconfig context to use")
    return connection


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """``90s``, ``2m``, ``1m30s``, ``1h`` or plain seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 2m, 1m30s)")
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``func`` with its expected failures printed as ``error: ...`` and exit code 1."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args)
        # ValueError covers a bad setting (SettingsError) and a bad name (InvalidName) too.
        except (CommandError, apiclient.ClusterError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return wrapped


def connect(args: argparse.Namespace) -> apiclient.Cluster:
    return apiclient.Cluster.connect(args.kubeconfig, args.context)


def namespace(args: argparse.Namespace) -> str:
    """``-n``, else the namespace of the kubeconfig context, else ``default``."""
    if args.namespace:
        return str(args.namespace)
    return apiclient.context_namespace(
        getattr(args, "kubeconfig", None), getattr(args, "context", None)
    )


def dump(obj: Any, output: str, stream: TextIO) -> None:
    if output == "json":
        stream.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    else:
        stream.write(cli_args.dump_yaml(obj))


def condition(obj: Obj, kind: str) -> Obj:
    """The status condition of type ``kind``, or {}."""
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found.get("type") == kind:
            return dict(found)
    return {}


def waypoints(cluster: apiclient.Cluster, namespace: str | None) -> list[Obj]:
    """The waypoint Gateways in ``namespace`` (None: all namespaces), by namespace and name."""
    items, _ = cluster.list(apiclient.GATEWAY, namespace)
    return sorted((gw for gw in items if gateway.is_waypoint(gw)), key=gateway.key)


def replicas(cluster: apiclient.Cluster, namespace: str, name: str) -> str:
    """``ready/desired`` of the waypoint's Deployment, as ``list`` and ``status`` show it."""
    try:
        deployment_name = names.names_for(namespace, name).deployment
    except names.InvalidName:
        return "-"
    deployment = cluster.get(apiclient.DEPLOYMENT, namespace, deployment_name)
    if deployment is None:
        return "0/0"
    state = deployment.get("status") or {}
    return f"{int(state.get('readyReplicas') or 0)}/{int(state.get('replicas') or 0)}"
