"""``waypoint status``: each waypoint's conditions and addresses, its ready replicas, and what
it serves (from a translation of the cluster's objects), with every object that names it but
is not bound, and why."""

from __future__ import annotations

import argparse
from typing import Any

from waypoint import model, pipeline
from waypoint.commands import kubecli
from waypoint.controller import apiclient, reconcile, serving
from waypoint.envoy import options as envoy_options
from waypoint.kube import gateway

Obj = dict[str, Any]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        parents=[kubecli.connection_flags()],
        help="show waypoint conditions and what they serve",
    )
    parser.add_argument("-n", "--namespace")
    parser.add_argument("--trust-domain", default=envoy_options.BootstrapOptions().trust_domain)
    parser.set_defaults(func=run)


@kubecli.guard
def run(args: argparse.Namespace) -> int:
    with kubecli.connect(args) as cluster:
        namespace = kubecli.namespace(args)
        waypoints = kubecli.waypoints(cluster, namespace)
        if not waypoints:
            print(f"no waypoints found in namespace {namespace}")
            return 0
        translation, problem = _translation(cluster, args.trust_domain)
        for gw in waypoints:
            replicas = kubecli.replicas(cluster, *gateway.key(gw))
            print(describe(gw, replicas, translation, problem))
    return 0


def _translation(
    cluster: apiclient.Cluster, trust_domain: str
) -> tuple[model.Translation | None, str]:
    try:
        return pipeline.translate_objects(reconcile.list_world(cluster), trust_domain), ""
    except (apiclient.ClusterError, ValueError) as exc:
        return None, str(exc)


def describe(gw: Obj, replicas: str, translation: model.Translation | None, problem: str) -> str:
    namespace, name = gateway.key(gw)
    lines = [
        f"waypoint {namespace}/{name}  for: {gateway.traffic_type(gw)}  "
        f"service account: {gateway.service_account(gw) or '-'}"
    ]
    for condition in (gw.get("status") or {}).get("conditions") or []:
        lines.append(
            f"  {condition.get('type', ''):<11} {condition.get('status', ''):<6} "
            f"{condition.get('reason', '')}: {condition.get('message', '')}"
        )
    if not (gw.get("status") or {}).get("conditions"):
        lines.append("  no status yet: is the waypoint controller running?")
    addresses = [a.get("value", "") for a in (gw.get("status") or {}).get("addresses") or []]
    lines.append(f"  addresses: {', '.join(addresses) or '-'}")
    lines.append(f"  replicas:  {replicas} ready")
    if translation is None:
        lines.append(f"  services:  unknown ({problem})")
        return "\n".join(lines)
    served = translation.waypoint(namespace, name)
    lines.append(f"  services:  {', '.join(serving.services(served)) or '-'}")
    workloads = serving.workloads(served)
    if workloads:
        lines.append(f"  workloads: {', '.join(workloads)}")
    lines.append(f"  routes:    {', '.join(serving.routes(served)) or '-'}")
    for where, reason, message in serving.unbound_claims(translation, namespace, name):
        lines.append(f"  not bound: {where}: {reason}: {message}")
    return "\n".join(lines)
