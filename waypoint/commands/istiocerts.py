"""``waypoint istio-certs``: the waypoint's SPIFFE certificate from istiod's CA.

Run in the waypoint pod (certSource ``istio``): with ``--once`` as an init container, so
Envoy starts with a certificate; without, as a sidecar that renews it at half-life. It writes
``cert-chain.pem``, ``key.pem`` and ``root-cert.pem`` into ``--cert-dir`` with one atomic
``..data`` swap, which Envoy's file SDS watches. See docs/istio-ca.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

import prometheus_client

from waypoint import names
from waypoint.commands import args as cli_args
from waypoint.envoy import options as envoy_options
from waypoint.istioca import agent, client


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "istio-certs",
        help="obtain and renew the waypoint's certificate from istiod's CA",
        description=cli_args.plain(__doc__),
    )
    env = os.environ.get
    parser.add_argument(
        "--ca-address",
        default=env("CA_ADDR", client.DEFAULT_ADDRESS),
        help="istiod's CA, HOST:PORT (env CA_ADDR; default %(default)s)",
    )
    parser.add_argument(
        "--ca-server-name",
        default="",
        help="DNS name istiod's certificate must carry (default: the address's host)",
    )
    parser.add_argument(
        "--root-cert",
        default=client.DEFAULT_ROOT_CERT_PATH,
        help="mesh root(s) from the istio-ca-root-cert ConfigMap (default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=client.DEFAULT_TOKEN_PATH,
        help="projected service-account token, audience istio-ca (default %(default)s)",
    )
    parser.add_argument(
        "--cluster-id",
        default=env("ISTIO_META_CLUSTER_ID", client.DEFAULT_CLUSTER_ID),
        help="cluster ID sent to istiod (env ISTIO_META_CLUSTER_ID; default %(default)s)",
    )
    parser.add_argument(
        "--trust-domain",
        default=env("TRUST_DOMAIN", "cluster.local"),
        help="SPIFFE trust domain (env TRUST_DOMAIN; default %(default)s)",
    )
    parser.add_argument(
        "--namespace",
        default=env("POD_NAMESPACE", ""),
        help="the pod's namespace (env POD_NAMESPACE)",
    )
    parser.add_argument(
        "--service-account",
        default=env("SERVICE_ACCOUNT", ""),
        help="the pod's service account (env SERVICE_ACCOUNT)",
    )
    parser.add_argument(
        "--cert-dir",
        default=envoy_options.DEFAULT_CERT_DIR,
        help="where Envoy reads its certificate (default %(default)s)",
    )
    parser.add_argument(
        "--validity",
        type=int,
        default=client.DEFAULT_VALIDITY_SECONDS,
        help="requested certificate lifetime in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--grace-ratio",
        type=float,
        default=0.5,
        help="renew when this share of the lifetime is left (default %(default)s)",
    )
    parser.add_argument(
        "--max-backoff", type=float, default=300.0, help="longest wait between failed calls"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="exit once a certificate is in --cert-dir (for an init container)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="with --once: give up (exit 1) after this many seconds (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on 0.0.0.0:PORT (0: off)",
    )
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace) -> agent.AgentConfig:
    spiffe_id = names.spiffe_id(args.trust_domain, args.namespace, args.service_account)
    ca = client.CaConfig(
        address=args.ca_address,
        root_cert_path=args.root_cert,
        token_path=args.token,
        cluster_id=args.cluster_id,
        server_name=args.ca_server_name,
        validity_seconds=args.validity,
    )
    return agent.AgentConfig(
        ca=ca,
        spiffe_id=spiffe_id,
        cert_dir=args.cert_dir,
        grace_ratio=args.grace_ratio,
        max_backoff=args.max_backoff,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.namespace or not args.service_account:
        print(
            "error: the pod's namespace and service account are required "
            "(--namespace/--service-account or POD_NAMESPACE/SERVICE_ACCOUNT)",
            file=sys.stderr,
        )
        return 2
    try:
        config = _config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    worker = agent.Agent(config)
    if args.once:
        try:
            issued = worker.obtain(args.timeout)
        except client.CaError as exc:
            print(f"error: no certificate from istiod's CA: {exc}", file=sys.stderr)
            return 1
        print(f"{issued.spiffe_id}: serial {issued.leaf.serial_number:x} in {args.cert_dir}")
        return 0
    # The init container's certificate, if usable, so the first scrape shows its expiry.
    worker.load_existing()
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.run(stop)
    return 0
