"""``waypoint controller``: the controller's flags; ``waypoint.controller.main`` runs it."""

from __future__ import annotations

import os
from typing import Any

from waypoint import version
from waypoint.commands import args as cli_args
from waypoint.commands import kubecli
from waypoint.controller import main as controller_main
from waypoint.controller import manager
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "controller", parents=[kubecli.connection_flags()], help="run the waypoint controller"
    )
    parser.add_argument(
        "--leader-elect", action="store_true", help="hold a Lease so only one replica reconciles"
    )
    parser.add_argument(
        "--leader-elect-namespace", default=os.environ.get("POD_NAMESPACE", "waypoint-system")
    )
    parser.add_argument("--leader-elect-name", default="waypoint-controller")
    parser.add_argument(
        "--metrics-listen",
        default="",
        metavar="ADDR",
        help="serve Prometheus /metrics on HOST:PORT",
    )
    parser.add_argument(
        "--resync", type=kubecli.parse_duration, default=300.0, help="periodic resync interval"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=manager.DEFAULT_WORKERS,
        help="Gateways reconciled at once (one key is never reconciled twice at once)",
    )
    parser.add_argument(
        "-r", "--revision", default="",
        help=f"manage only waypoints labelled {constants.REVISION}=REVISION (default: those "
        "without the label, or labelled default), so two controllers can run side by side "
        "during an upgrade, as istiod revisions do",
    )  # fmt: skip
    parser.add_argument(
        "--xds-listen",
        default="",
        metavar="ADDR",
        help="serve live config over ADS on HOST:PORT; the generated ConfigMaps then hold "
        "only an xDS bootstrap, so config changes land without a rollout",
    )
    parser.add_argument(
        "--xds-address",
        default="",
        metavar="HOST:PORT",
        help="where waypoint pods reach the ADS server (default: the waypoint-controller-xds "
        "Service in the controller's namespace, on the --xds-listen port)",
    )
    parser.add_argument(
        "--image",
        default=version.default_image(),
        help="the waypoint-mesh image the generated waypoint pods run (default: %(default)s); "
        "the manifests pass the controller's own image",
    )
    parser.add_argument("--envoy-image", help="override --image for the Envoy container")
    parser.add_argument("--extauthz-image", help="override --image for the extauthz sidecar")
    parser.add_argument("--trust-domain", default=envoy_options.BootstrapOptions().trust_domain)
    parser.add_argument("--cert-dir", default=envoy_options.BootstrapOptions().cert_dir)
    # Shapes both the ConfigMap bootstraps and the config served over --xds-listen.
    cli_args.add_access_log_flag(parser)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.set_defaults(func=kubecli.guard(controller_main.main))
