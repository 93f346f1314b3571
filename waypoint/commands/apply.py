"""``waypoint apply``: create or update a waypoint Gateway by server-side apply, optionally
label its namespace, write the ``--require-waypoint`` policies, and ``--wait`` until the
controller says it is Programmed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from waypoint import wellknown
from waypoint.commands import generate, kubecli
from waypoint.controller import apiclient
from waypoint.kube import gateway

FIELD_MANAGER = "waypoint"
Obj = dict[str, Any]

# Programmed=False reasons that resolve on their own: keep waiting. Any other reason on the
# current generation (an apply the API rejected, an object in the way, Envoy refusing the
# config) needs a person, so ``--wait`` fails at once.
WAITING_REASONS = frozenset({"Pending", "AddressNotAssigned"})


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "apply",
        parents=[kubecli.connection_flags()],
        help="create or update a waypoint Gateway (server-side apply)",
    )
    generate.gateway_flags(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing enrollment label, take over conflicting fields",
    )
    parser.add_argument("--wait", action="store_true", help="wait until the waypoint is Programmed")
    parser.add_argument(
        "--timeout",
        type=kubecli.parse_duration,
        default=90.0,
        help="how long --wait waits (e.g. 90s, 2m)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate with the API server without persisting"
    )
    parser.set_defaults(func=run)


@kubecli.guard
def run(args: argparse.Namespace) -> int:
    with kubecli.connect(args) as cluster:
        namespace = kubecli.namespace(args)
        desired = generate.waypoint_gateway(args, namespace)
        policies = generate.fail_closed(args, namespace)
        cluster.resource(apiclient.GATEWAY)
        if policies:
            cluster.resource(apiclient.AUTHORIZATION_POLICY)  # Istio's CRDs, or a clear error
        _check_existing(cluster, namespace, args.name)
        if args.enroll_namespace:
            _check_enrollment(cluster, namespace, args.name, args.overwrite)
        _warn_unless_ambient(cluster, namespace)
        try:
            applied = cluster.apply(
                desired, FIELD_MANAGER, force=args.overwrite, dry_run=args.dry_run
            )
        except apiclient.Conflict as exc:
            raise kubecli.CommandError(
                f"{exc} (use --overwrite to take these fields over)"
            ) from exc
        if args.enroll_namespace and not args.dry_run:
            patch = {"metadata": {"labels": {wellknown.USE_WAYPOINT: args.name}}}
            cluster.merge_patch(apiclient.NAMESPACE, "", namespace, patch, FIELD_MANAGER)
        suffix = " (dry run)" if args.dry_run else ""
        if args.output:
            kubecli.dump(applied, args.output, sys.stdout)
        else:
            print(f"waypoint {namespace}/{args.name} applied{suffix}")
            if args.enroll_namespace and not args.dry_run:
                print(f"namespace {namespace} labeled with {wellknown.USE_WAYPOINT}={args.name}")
        if args.wait and not args.dry_run:
            code = wait_programmed(cluster, namespace, args.name, args.timeout, sys.stderr)
            if code:
                return code
        _apply_fail_closed(cluster, args, policies, suffix)
    return 0


def _apply_fail_closed(
    cluster: apiclient.Cluster, args: argparse.Namespace, policies: list[Obj], suffix: str
) -> None:
    """After the waypoint (and, with --wait, once it is Programmed): a policy that admits
    only the waypoint, applied before ztunnel sends traffic to it, would refuse everyone."""
    if policies and not args.wait and not args.dry_run:
        print(
            "warning: --require-waypoint without --wait: until the waypoint is Programmed, "
            "ztunnel refuses the clients it does not yet send through it",
            file=sys.stderr,
        )
    for policy in policies:
        cluster.apply(policy, FIELD_MANAGER, force=args.overwrite, dry_run=args.dry_run)
        if not args.output:
            name = policy["metadata"]["name"]
            print(f"AuthorizationPolicy {policy['metadata']['namespace']}/{name} applied{suffix}")


def _warn_unless_ambient(cluster: apiclient.Cluster, namespace: str) -> None:
    """istioctl's warning (istioctl/pkg/waypoint): without ambient mode, no ztunnel captures
    the namespace's pods, so nothing sends their traffic to any waypoint."""
    found = cluster.get(apiclient.NAMESPACE, "", namespace)
    labels = ((found or {}).get("metadata") or {}).get("labels") or {}
    if found is not None and labels.get(wellknown.DATAPLANE_MODE_LABEL) != "ambient":
        print(
            f"warning: namespace {namespace} is not enrolled in ambient mode; consider running "
            f"`kubectl label namespace {namespace} {wellknown.DATAPLANE_MODE_LABEL}=ambient`",
            file=sys.stderr,
        )


def _check_existing(cluster: apiclient.Cluster, namespace: str, name: str) -> None:
    live = cluster.get(apiclient.GATEWAY, namespace, name)
    if live is not None and not gateway.is_waypoint(live):
        klass = (live.get("spec") or {}).get("gatewayClassName")
        raise kubecli.CommandError(
            f"Gateway {namespace}/{name} already exists with gatewayClassName {klass!r}, "
            f"not {wellknown.GATEWAY_CLASS!r}; choose another --name"
        )


def _check_enrollment(
    cluster: apiclient.Cluster, namespace: str, name: str, overwrite: bool
) -> None:
    found = cluster.get(apiclient.NAMESPACE, "", namespace)
    if found is None:
        raise kubecli.CommandError(f"namespace {namespace} not found")
    current = ((found.get("metadata") or {}).get("labels") or {}).get(wellknown.USE_WAYPOINT)
    if current and current != name and not overwrite:
        raise kubecli.CommandError(
            f"namespace {namespace} already has {wellknown.USE_WAYPOINT}={current}; "
            "use --overwrite to replace it"
        )


def wait_programmed(
    cluster: apiclient.Cluster,
    namespace: str,
    name: str,
    timeout: float,
    stream: TextIO,
    poll: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Print progress until the controller has seen the Gateway's current generation and
    says it is Programmed: 0. 1 on a terminal failure (not Accepted, or Programmed=False for
    a reason that will not pass) or on timeout, with the reason."""
    deadline = clock() + timeout
    last = ""
    while True:
        live = cluster.get(apiclient.GATEWAY, namespace, name) or {}
        generation = int((live.get("metadata") or {}).get("generation") or 0)
        seen = _observed(
            kubecli.condition(live, "Accepted"), generation, gateway.observed_marker(live)
        )
        accepted = kubecli.condition(live, "Accepted") if seen else {}
        programmed = kubecli.condition(live, "Programmed") if seen else {}
        if programmed.get("status") == "True":
            print(f"waypoint {namespace}/{name} is Programmed", file=stream)
            return 0
        failed = next(
            (
                c
                for c in (accepted, programmed)
                if c.get("status") == "False"
                and not (c is programmed and c.get("reason") in WAITING_REASONS)
            ),
            None,
        )
        if failed is not None:
            print(
                f"error: waypoint {namespace}/{name} is not {failed.get('type')}: "
                f"{failed.get('reason')}: {failed.get('message')}",
                file=stream,
            )
            return 1
        progress = (
            f"{programmed.get('reason')}: {programmed.get('message')}"
            if programmed
            else "NoStatus: waiting for the controller to observe this version of the Gateway "
            f"(generation {generation}, {gateway.observed_marker(live)})"
        )
        if progress != last:
            print(f"waiting for waypoint {namespace}/{name}: {progress}", file=stream)
            last = progress
        if clock() >= deadline:
            print(
                f"error: waypoint {namespace}/{name} not Programmed after {timeout:g}s ({progress})",
                file=stream,
            )
            return 1
        time.sleep(poll)


def _observed(accepted: Obj, generation: int, marker: str) -> bool:
    """The status was computed from this version of the Gateway: its spec (generation) and
    its labels and annotations (the marker the controller ends ``Accepted`` with)."""
    return int(accepted.get("observedGeneration") or 0) == generation and str(
        accepted.get("message") or ""
    ).endswith(marker)
