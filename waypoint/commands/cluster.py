"""Waypoints on a cluster, with istioctl's habits: apply, delete, list, status, generate, controller.

Every command but ``generate`` talks to the API server named by ``--kubeconfig``/``--context``
(or ``$KUBECONFIG``, ~/.kube/config, or the in-cluster service account). Errors name the object
and the reason, on stderr, with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from waypoint import model, names, pipeline, version, wellknown
from waypoint.commands import args as cli_args
from waypoint.controller import cluster as kcluster
from waypoint.controller import leader, manager, reconcile, serving
from waypoint.controller import metrics as kmetrics
from waypoint.controller import xds as kxds
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, failclosed, gateway, settings
from waypoint.xds import bootstrap as xds_bootstrap
from waypoint.xds import cache as xds_cache
from waypoint.xds import runner as xds_runner

CLI_FIELD_MANAGER = "waypoint"
Obj = dict[str, Any]


class CommandError(RuntimeError):
    """A user-facing failure: printed as ``error: <message>``, exit code 1."""


# --- registration ------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    connection.add_argument("--context", help="kubeconfig context to use")

    apply = subparsers.add_parser(
        "apply",
        parents=[connection],
        help="create or update a waypoint Gateway (server-side apply)",
    )
    _gateway_flags(apply)
    apply.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing enrollment label, take over conflicting fields",
    )
    apply.add_argument("--wait", action="store_true", help="wait until the waypoint is Programmed")
    apply.add_argument(
        "--timeout", type=parse_duration, default=90.0, help="how long --wait waits (e.g. 90s, 2m)"
    )
    apply.add_argument(
        "--dry-run", action="store_true", help="validate with the API server without persisting"
    )
    apply.set_defaults(func=run_apply)

    generate = subparsers.add_parser("generate", help="print a waypoint Gateway without a cluster")
    _gateway_flags(generate)
    generate.set_defaults(func=run_generate, output="yaml")

    delete = subparsers.add_parser("delete", parents=[connection], help="delete waypoint Gateways")
    delete.add_argument("names", nargs="*", metavar="NAME")
    delete.add_argument("--all", action="store_true", help="delete every waypoint in the namespace")
    delete.add_argument("-n", "--namespace")
    delete.set_defaults(func=run_delete)

    listing = subparsers.add_parser("list", parents=[connection], help="list waypoints")
    scope = listing.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    listing.set_defaults(func=run_list)

    status = subparsers.add_parser(
        "status", parents=[connection], help="show waypoint conditions and what they serve"
    )
    status.add_argument("-n", "--namespace")
    status.add_argument("--trust-domain", default=envoy_options.BootstrapOptions().trust_domain)
    status.set_defaults(func=run_status)

    controller = subparsers.add_parser(
        "controller", parents=[connection], help="run the waypoint controller"
    )
    controller.add_argument(
        "--leader-elect", action="store_true", help="hold a Lease so only one replica reconciles"
    )
    controller.add_argument(
        "--leader-elect-namespace", default=os.environ.get("POD_NAMESPACE", "waypoint-system")
    )
    controller.add_argument("--leader-elect-name", default="waypoint-controller")
    controller.add_argument(
        "--metrics-listen",
        default="",
        metavar="ADDR",
        help="serve Prometheus /metrics on HOST:PORT",
    )
    controller.add_argument(
        "--resync", type=parse_duration, default=300.0, help="periodic resync interval"
    )
    controller.add_argument(
        "--workers",
        type=int,
        default=manager.DEFAULT_WORKERS,
        help="Gateways reconciled at once (one key is never reconciled twice at once)",
    )
    controller.add_argument(
        "-r", "--revision", default="",
        help=f"manage only waypoints labelled {constants.REVISION}=REVISION (default: those "
        "without the label, or labelled default), so two controllers can run side by side "
        "during an upgrade, as istiod revisions do",
    )  # fmt: skip
    controller.add_argument(
        "--xds-listen",
        default="",
        metavar="ADDR",
        help="serve live config over ADS on HOST:PORT; the generated ConfigMaps then hold "
        "only an xDS bootstrap, so config changes land without a rollout",
    )
    controller.add_argument(
        "--xds-address",
        default="",
        metavar="HOST:PORT",
        help="where waypoint pods reach the ADS server (default: the waypoint-controller-xds "
        "Service in the controller's namespace, on the --xds-listen port)",
    )
    controller.add_argument(
        "--image",
        default=version.default_image(),
        help="the waypoint-mesh image the generated waypoint pods run (default: %(default)s); "
        "the manifests pass the controller's own image",
    )
    controller.add_argument("--envoy-image", help="override --image for the Envoy container")
    controller.add_argument("--extauthz-image", help="override --image for the extauthz sidecar")
    controller.add_argument("--trust-domain", default=envoy_options.BootstrapOptions().trust_domain)
    controller.add_argument("--cert-dir", default=envoy_options.BootstrapOptions().cert_dir)
    # Shapes both the ConfigMap bootstraps and the config served over --xds-listen.
    cli_args.add_access_log_flag(controller)
    controller.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    controller.set_defaults(func=run_controller)


def _gateway_flags(parser: argparse.ArgumentParser) -> None:
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


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """``90s``, ``2m``, ``1m30s``, ``1h`` or plain seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 2m, 1m30s)")
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (
            CommandError,
            kcluster.ClusterError,
            settings.SettingsError,
            names.InvalidName,
        ) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return wrapped


def _connect(args: argparse.Namespace) -> kcluster.Cluster:
    return kcluster.Cluster.connect(args.kubeconfig, args.context)


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    return kcluster.context_namespace(
        getattr(args, "kubeconfig", None), getattr(args, "context", None)
    )


def _dump(obj: Any, output: str, stream: TextIO) -> None:
    if output == "json":
        stream.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    else:
        stream.write(cli_args.dump_yaml(obj))


def _generated(args: argparse.Namespace, namespace: str) -> Obj:
    return gateway.generate_gateway(
        namespace,
        args.name,
        args.traffic_type,
        args.service_account,
        args.min_replicas,
        args.max_replicas,
        args.revision,
    )


def _enrollment(args: argparse.Namespace, namespace: str) -> list[Obj]:
    """For ``generate --enroll-namespace``: the Namespace carrying the enrollment label."""
    if not args.enroll_namespace:
        return []
    metadata = {"name": namespace, "labels": {wellknown.USE_WAYPOINT: args.name}}
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}]


# --- generate / apply ----------------------------------------------------------------------


def _fail_closed(args: argparse.Namespace, namespace: str) -> list[Obj]:
    """The ``--require-waypoint`` policies, or none."""
    if not args.require_waypoint:
        return []
    failclosed.check(args.traffic_type, args.service_account)
    return failclosed.policies(namespace, args.name, args.trust_domain)


@_guard
def run_generate(args: argparse.Namespace) -> int:
    namespace = args.namespace or "default"
    found = [
        *_enrollment(args, namespace),
        _generated(args, namespace),
        *_fail_closed(args, namespace),
    ]
    if len(found) == 1:
        _dump(found[0], args.output or "yaml", sys.stdout)
    elif args.output == "json":
        _dump({"apiVersion": "v1", "kind": "List", "items": found}, "json", sys.stdout)
    else:
        sys.stdout.write(cli_args.dump_yaml_all(found))
    return 0


@_guard
def run_apply(args: argparse.Namespace) -> int:
    with _connect(args) as cluster:
        namespace = _namespace(args)
        desired = _generated(args, namespace)
        policies = _fail_closed(args, namespace)
        cluster.resource(kcluster.GATEWAY)
        if policies:
            cluster.resource(kcluster.AUTHORIZATION_POLICY)  # Istio's CRDs, or a clear error
        _check_existing(cluster, namespace, args.name)
        if args.enroll_namespace:
            _check_enrollment(cluster, namespace, args.name, args.overwrite)
        _warn_unless_ambient(cluster, namespace)
        try:
            applied = cluster.apply(
                desired, CLI_FIELD_MANAGER, force=args.overwrite, dry_run=args.dry_run
            )
        except kcluster.Conflict as exc:
            raise CommandError(f"{exc} (use --overwrite to take these fields over)") from exc
        if args.enroll_namespace and not args.dry_run:
            patch = {"metadata": {"labels": {wellknown.USE_WAYPOINT: args.name}}}
            cluster.merge_patch(kcluster.NAMESPACE, "", namespace, patch, CLI_FIELD_MANAGER)
        suffix = " (dry run)" if args.dry_run else ""
        if args.output:
            _dump(applied, args.output, sys.stdout)
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
    cluster: kcluster.Cluster, args: argparse.Namespace, policies: list[Obj], suffix: str
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
        cluster.apply(policy, CLI_FIELD_MANAGER, force=args.overwrite, dry_run=args.dry_run)
        if not args.output:
            name = policy["metadata"]["name"]
            print(f"AuthorizationPolicy {policy['metadata']['namespace']}/{name} applied{suffix}")


def _warn_unless_ambient(cluster: kcluster.Cluster, namespace: str) -> None:
    """istioctl's warning (istioctl/pkg/waypoint): without ambient mode, no ztunnel captures
    the namespace's pods, so nothing sends their traffic to any waypoint."""
    found = cluster.get(kcluster.NAMESPACE, "", namespace)
    labels = ((found or {}).get("metadata") or {}).get("labels") or {}
    if found is not None and labels.get(wellknown.DATAPLANE_MODE_LABEL) != "ambient":
        print(
            f"warning: namespace {namespace} is not enrolled in ambient mode; consider running "
            f"`kubectl label namespace {namespace} {wellknown.DATAPLANE_MODE_LABEL}=ambient`",
            file=sys.stderr,
        )


def _check_existing(cluster: kcluster.Cluster, namespace: str, name: str) -> None:
    live = cluster.get(kcluster.GATEWAY, namespace, name)
    if live is not None and not gateway.is_waypoint(live):
        klass = (live.get("spec") or {}).get("gatewayClassName")
        raise CommandError(
            f"Gateway {namespace}/{name} already exists with gatewayClassName {klass!r}, "
            f"not {wellknown.GATEWAY_CLASS!r}; choose another --name"
        )


def _check_enrollment(
    cluster: kcluster.Cluster, namespace: str, name: str, overwrite: bool
) -> None:
    found = cluster.get(kcluster.NAMESPACE, "", namespace)
    if found is None:
        raise CommandError(f"namespace {namespace} not found")
    current = ((found.get("metadata") or {}).get("labels") or {}).get(wellknown.USE_WAYPOINT)
    if current and current != name and not overwrite:
        raise CommandError(
            f"namespace {namespace} already has {wellknown.USE_WAYPOINT}={current}; "
            "use --overwrite to replace it"
        )


# Programmed=False reasons that resolve on their own: keep waiting. Any other reason on the
# current generation (an apply the API rejected, an object in the way, Envoy refusing the
# config) needs a person, so ``--wait`` fails at once.
WAITING_REASONS = frozenset({"Pending", "AddressNotAssigned"})


def wait_programmed(
    cluster: kcluster.Cluster,
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
        live = cluster.get(kcluster.GATEWAY, namespace, name) or {}
        generation = int((live.get("metadata") or {}).get("generation") or 0)
        seen = _observed(_condition(live, "Accepted"), generation, gateway.observed_marker(live))
        accepted = _condition(live, "Accepted") if seen else {}
        programmed = _condition(live, "Programmed") if seen else {}
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


def _condition(obj: Obj, kind: str) -> Obj:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


# --- delete / list / status ------------------------------------------------------------------


@_guard
def run_delete(args: argparse.Namespace) -> int:
    if bool(args.names) == bool(args.all):
        raise CommandError("give waypoint NAMEs or --all (not both)")
    with _connect(args) as cluster:
        namespace = _namespace(args)
        failures = 0
        if args.all:
            targets = [gateway.key(gw)[1] for gw in _waypoints(cluster, namespace)]
            if not targets:
                print(f"no waypoints in namespace {namespace}")
        else:
            targets = list(args.names)
        for name in targets:
            live = cluster.get(kcluster.GATEWAY, namespace, name)
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
                cluster.delete(kcluster.GATEWAY, namespace, name)
                print(f"waypoint {namespace}/{name} deleted")
        return 1 if failures else 0


def _waypoints(cluster: kcluster.Cluster, namespace: str | None) -> list[Obj]:
    items, _ = cluster.list(kcluster.GATEWAY, namespace)
    return sorted((gw for gw in items if gateway.is_waypoint(gw)), key=gateway.key)


@_guard
def run_list(args: argparse.Namespace) -> int:
    with _connect(args) as cluster:
        namespace = None if args.all_namespaces else _namespace(args)
        waypoints = _waypoints(cluster, namespace)
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
                    _replicas(cluster, ns, name),
                    _condition(gw, "Programmed").get("status", "Unknown"),
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


def _replicas(cluster: kcluster.Cluster, namespace: str, name: str) -> str:
    try:
        deployment_name = names.names_for(namespace, name).deployment
    except names.InvalidName:
        return "-"
    deployment = cluster.get(kcluster.DEPLOYMENT, namespace, deployment_name)
    if deployment is None:
        return "0/0"
    state = deployment.get("status") or {}
    return f"{int(state.get('readyReplicas') or 0)}/{int(state.get('replicas') or 0)}"


@_guard
def run_status(args: argparse.Namespace) -> int:
    with _connect(args) as cluster:
        namespace = _namespace(args)
        waypoints = _waypoints(cluster, namespace)
        if not waypoints:
            print(f"no waypoints found in namespace {namespace}")
            return 0
        translation, problem = _translation(cluster, args.trust_domain)
        for gw in waypoints:
            print(describe(gw, _replicas(cluster, *gateway.key(gw)), translation, problem))
    return 0


def _translation(
    cluster: kcluster.Cluster, trust_domain: str
) -> tuple[model.Translation | None, str]:
    try:
        return pipeline.translate_objects(reconcile.list_world(cluster), trust_domain), ""
    except (kcluster.ClusterError, ValueError) as exc:
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


# --- controller ------------------------------------------------------------------------------


@_guard
def run_controller(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    metrics = kmetrics.Metrics()
    options = controller_options(args)
    ads = _start_ads(args) if args.xds_listen else None
    server = metrics.serve(args.metrics_listen) if args.metrics_listen else None
    try:
        with _connect(args) as cluster:
            publisher = None
            if ads is not None:
                address = args.xds_address or kxds.default_address(
                    args.leader_elect_namespace, ads.port
                )
                publisher = kxds.Publisher(ads.cache, address, options)
                print(f"serving xDS on {ads.target}; waypoints dial {address}", flush=True)
            controller = manager.Controller(
                cluster,
                options=options,
                defaults=controller_defaults(args),
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


def controller_defaults(args: argparse.Namespace) -> settings.Settings:
    """The settings every waypoint starts from: one image for every container unless overridden."""
    return settings.Settings(
        envoy_image=args.envoy_image or args.image,
        extauthz_image=args.extauthz_image or args.image,
        istio_certs_image=args.image,
    )


def controller_options(args: argparse.Namespace) -> envoy_options.BootstrapOptions:
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
        raise kcluster.ClusterError(f"--xds-listen {args.xds_listen}: {exc}") from exc
    return ads


def _run_elected(
    args: argparse.Namespace,
    cluster: kcluster.Cluster,
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
