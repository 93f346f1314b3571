"""``waypoint serve``: an xDS server fed by a directory of Kubernetes YAML, for local use.

Envoys started from ``waypoint render --xds ADDR`` bootstraps connect to it; every edit in the
directory reaches them within a second, without restarts. The Envoy options (ports, trust
domain, certificate directory) are those of ``waypoint render`` and apply to every waypoint
served; certificates are served over ADS as SDS secrets that point at ``--cert-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import signal
import sys
import threading
from typing import Any

import prometheus_client

from waypoint.commands import args as cli_args
from waypoint.commands import render
from waypoint.envoy import options as envoy_options
from waypoint.xds import cache, filesource, publish, runner


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve waypoint config over xDS from a watched directory of YAML",
        description=cli_args.plain(__doc__),
    )
    parser.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="DIR",
        help="directory of Kubernetes YAML, watched for changes",
    )
    parser.add_argument(
        "--xds-listen",
        default="127.0.0.1:15010",
        metavar="ADDR",
        help="HOST:PORT the ADS gRPC server listens on (default %(default)s)",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.1, help="seconds between directory scans"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on 127.0.0.1:PORT (0: off)",
    )
    parser.add_argument(
        "--removal-delay",
        type=float,
        default=1.0,
        help="seconds an unused cluster outlives the listeners that used it",
    )
    render.add_bootstrap_options(parser)
    parser.set_defaults(func=run)


def _options(args: argparse.Namespace) -> envoy_options.BootstrapOptions:
    # render's helper wants one waypoint's name for node fields, which resources never use.
    opts = render.bootstrap_options(args, "serve", "serve")
    return publish.xds_options(dataclasses.replace(opts, node_id="", cluster=""))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    directory = pathlib.Path(args.filename)
    if not directory.is_dir():
        print(f"error: -f {directory}: not a directory", file=sys.stderr)
        return 2
    snapshots = cache.SnapshotCache()
    source = filesource.FileSource(
        directory, snapshots, _options(args), poll_interval=args.poll_interval
    )
    server = runner.ServerThread(snapshots, args.xds_listen, removal_delay=args.removal_delay)
    try:
        server.start()
    except OSError as exc:
        print(f"error: --xds-listen {args.xds_listen}: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, addr="127.0.0.1")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    source.start()
    served = ", ".join(str(key) for key in snapshots.waypoints()) or "none yet"
    print(f"serving xDS on {server.target} from {directory} (waypoints: {served})", flush=True)
    try:
        stop.wait()
    finally:
        source.stop()
        server.stop(grace=1.0)
    return 0
