"""``waypoint generate``: print a waypoint Gateway (and, on request, its Namespace label and
the ``--require-waypoint`` policies) without a cluster.

The Gateway flags and the objects built from them are ``apply``'s too: ``apply`` sends what
``generate`` prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from waypoint import wellknown
from waypoint.commands import args as cli_args
from waypoint.commands import kubecli
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, failclosed, gateway

Obj = dict[str, Any]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("generate", help="print a waypoint Gateway without a cluster")
    gateway_flags(parser)
    parser.set_defaults(func=run, output="yaml")


def gateway_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that describe a waypoint, for ``generate`` and ``apply``."""
    parser.add_argument("-n", "--namespace")
    parser.add_argument("--name", default="waypoint")
    parser.add_argument(
        "--for", dest="traffic_type", choices=gateway.TRAFFIC_TYPES, default="service"
    )
    parser.add_argument(
        "--service-account",
        metavar="SA",
        help="serve only workloads running as this ServiceAccount",
    )
    parser.add_argument(
        "--enroll-namespace",
        action="store_true",
        help=f"label the namespace {wellknown.USE_WAYPOINT}=NAME (generate: print the Namespace "
        "with that label too)",
    )
    parser.add_argument(
        "-r", "--revision",
        help=f"label the waypoint {constants.REVISION}=REVISION, as istioctl does",
    )  # fmt: skip
    parser.add_argument("--min-replicas", type=_positive, metavar="N")
    parser.add_argument("--max-replicas", type=_positive, metavar="N")
    parser.add_argument(
        "--require-waypoint",
        action="store_true",
        help="also write Istio AuthorizationPolicies so that ztunnel admits only the waypoint "
        "into the namespace's workloads: traffic cannot bypass L7 policy (docs/istio.md)",
    )
    parser.add_argument(
        "--trust-domain",
        default=envoy_options.BootstrapOptions().trust_domain,
        help="the mesh's trust domain, for --require-waypoint's principal",
    )
    parser.add_argument("-o", "--output", choices=["yaml", "json"])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def waypoint_gateway(args: argparse.Namespace, namespace: str) -> Obj:
    """The Gateway the flags describe."""
    return gateway.generate_gateway(
        namespace,
        args.name,
        args.traffic_type,
        args.service_account,
        args.min_replicas,
        args.max_replicas,
        args.revision,
    )


def fail_closed(args: argparse.Namespace, namespace: str) -> list[Obj]:
    """The ``--require-waypoint`` policies, or none."""
    if not args.require_waypoint:
        return []
    failclosed.check(args.traffic_type, args.service_account)
    return failclosed.policies(namespace, args.name, args.trust_domain)


def _enrollment(args: argparse.Namespace, namespace: str) -> list[Obj]:
    """For ``--enroll-namespace``: the Namespace carrying the enrollment label."""
    if not args.enroll_namespace:
        return []
    metadata = {"name": namespace, "labels": {wellknown.USE_WAYPOINT: args.name}}
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}]


@kubecli.guard
def run(args: argparse.Namespace) -> int:
    namespace = args.namespace or "default"
    found = [
        *_enrollment(args, namespace),
        waypoint_gateway(args, namespace),
        *fail_closed(args, namespace),
    ]
    if len(found) == 1:
        kubecli.dump(found[0], args.output or "yaml", sys.stdout)
    elif args.output == "json":
        kubecli.dump({"apiVersion": "v1", "kind": "List", "items": found}, "json", sys.stdout)
    else:
        sys.stdout.write(cli_args.dump_yaml_all(found))
    return 0
