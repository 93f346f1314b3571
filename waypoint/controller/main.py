"""The controller's entry point, ``waypoint controller``: its flags made settings, logging,
the ADS and metrics servers, the connection, signal handling, and leader election.

The flags are defined with the CLI (``waypoint.commands.controller``); ``main`` takes them
parsed. SIGTERM and SIGINT stop the controller cleanly. With ``--leader-elect`` only the
Lease holder reconciles; losing the Lease without being asked to stop exits 1, so that the pod
restarts clean.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
import uuid

from waypoint.controller import apiclient, leader, manager
from waypoint.controller import metrics as kmetrics
from waypoint.controller import xds as kxds
from waypoint.envoy import options as envoy_options
from waypoint.kube import settings
from waypoint.xds import bootstrap as xds_bootstrap
from waypoint.xds import cache as xds_cache
from waypoint.xds import runner as xds_runner


def main(args: argparse.Namespace) -> int:
    """Run the controller until SIGTERM or SIGINT (0), or until it loses its Lease (1)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    metrics = kmetrics.Metrics()
    bootstrap_options = options(args)
    ads = _start_ads(args) if args.xds_listen else None
    server = metrics.serve(args.metrics_listen) if args.metrics_listen else None
    try:
        with apiclient.Cluster.connect(args.kubeconfig, args.context) as cluster:
            publisher = None
            if ads is not None:
                address = args.xds_address or kxds.default_address(
                    args.leader_elect_namespace, ads.port
                )
                publisher = kxds.Publisher(ads.cache, address, bootstrap_options)
                print(f"serving xDS on {ads.target}; waypoints dial {address}", flush=True)
            controller = manager.Controller(
                cluster,
                options=bootstrap_options,
                defaults=defaults(args),
                metrics=metrics,
                resync_period=args.resync,
                workers=args.workers,
                publisher=publisher,
                revision=args.revision,
            )
            if not args.leader_elect:
                controller.run(stop)
                return 0
            return _run_elected(args, cluster, controller, metrics, stop)
    finally:
        if server is not None:
            server.shutdown()
        if ads is not None:
            ads.stop(grace=1.0)


def defaults(args: argparse.Namespace) -> settings.Settings:
    """The settings every waypoint starts from: one image for every container unless overridden."""
    return settings.Settings(
        envoy_image=args.envoy_image or args.image,
        extauthz_image=args.extauthz_image or args.image,
        istio_certs_image=args.image,
    )


def options(args: argparse.Namespace) -> envoy_options.BootstrapOptions:
    """What every waypoint's config is built with: its ConfigMap bootstrap and its xDS."""
    return envoy_options.BootstrapOptions(
        trust_domain=args.trust_domain, cert_dir=args.cert_dir, access_log=args.access_log
    )


def _start_ads(args: argparse.Namespace) -> xds_runner.ServerThread:
    try:
        xds_bootstrap.parse_address(args.xds_address or args.xds_listen)
        ads = xds_runner.ServerThread(xds_cache.SnapshotCache(), args.xds_listen)
        ads.start()
    except (OSError, ValueError) as exc:
        raise apiclient.ClusterError(f"--xds-listen {args.xds_listen}: {exc}") from exc
    return ads


def _run_elected(
    args: argparse.Namespace,
    cluster: apiclient.Cluster,
    controller: manager.Controller,
    metrics: kmetrics.Metrics,
    stop: threading.Event,
) -> int:
    identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    elector = leader.LeaderElector(
        cluster, args.leader_elect_namespace, args.leader_elect_name, identity
    )
    # With live config every replica serves xDS, leader or not: its informers and publisher
    # run for the whole process, and only reconciling (the writes) follows the Lease.
    live = controller.publisher is not None
    if live:
        controller.start_informers()
        threading.Thread(
            target=controller.run_publisher, args=(stop,), name="xds-publish", daemon=True
        ).start()

    def lead(lost: threading.Event) -> None:
        metrics.leader.set(1)
        controller.run(lost, own_informers=not live)
        metrics.leader.set(0)

    try:
        elector.run(lead, stop)
    finally:
        if live:
            controller.stop_informers()
    # Losing the Lease without being asked to stop: exit so the pod restarts clean.
    return 0 if stop.is_set() else 1
