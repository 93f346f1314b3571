"""``waypoint render``: print the Envoy bootstrap of one waypoint from Kubernetes YAML, offline."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

import yaml

from waypoint import model, pipeline
from waypoint.commands import args as cli_args
from waypoint.commands import report
from waypoint.envoy import options, secrets
from waypoint.kube import gateway
from waypoint.kube import render as kube_render
from waypoint.runtime import inputs, sds
from waypoint.xds import bootstrap as xds_bootstrap


def add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that shapes a waypoint's Envoy config."""
    defaults = options.BootstrapOptions()
    group = parser.add_argument_group("envoy")
    group.add_argument("--trust-domain", default=defaults.trust_domain)
    group.add_argument(
        "--cert-dir",
        default=defaults.cert_dir,
        help="directory with cert-chain.pem, key.pem and root-cert.pem (watched for rotation)",
    )
    group.add_argument("--hbone-port", type=int, default=defaults.hbone_port)
    group.add_argument("--upstream-hbone-port", type=int, default=defaults.upstream_hbone_port)
    group.add_argument("--admin-port", type=int, default=defaults.admin_port)
    group.add_argument("--readiness-port", type=int, default=defaults.readiness_port)
    group.add_argument("--stats-port", type=int, default=defaults.stats_port)
    group.add_argument("--bind", default=defaults.bind, help="address the listeners bind to")
    group.add_argument(
        "--extauthz-address",
        default="",
        help="the extauthz sidecar (host:port or unix:/path) for ExtAuthzPolicy routes (default 127.0.0.1:9191)",
    )
    group.add_argument(
        "--otel-collector", default="", help="host:port of an OpenTelemetry collector (tracing)"
    )
    group.add_argument(
        "--sds-dir",
        default="",
        help="where to write the SDS files Envoy watches (default: beside -o FILE; with output to "
        "stdout nothing is written unless this is given)",
    )
    cli_args.add_access_log_flag(group)


def _sds_dir(args: argparse.Namespace) -> str:
    if args.sds_dir:
        return str(pathlib.Path(args.sds_dir).absolute())
    output = getattr(args, "output", "-")
    if output and output != "-":
        return str(pathlib.Path(output).absolute().parent)
    return ""


def bootstrap_options(
    args: argparse.Namespace, namespace: str, name: str
) -> options.BootstrapOptions:
    return options.BootstrapOptions(
        trust_domain=args.trust_domain,
        cert_dir=str(pathlib.Path(args.cert_dir).absolute()),
        bind=args.bind,
        hbone_port=args.hbone_port,
        upstream_hbone_port=args.upstream_hbone_port,
        admin_port=args.admin_port,
        readiness_port=args.readiness_port,
        stats_port=args.stats_port,
        sds_dir=_sds_dir(args),
        extauthz_address=getattr(args, "extauthz_address", ""),
        otel_collector=getattr(args, "otel_collector", ""),
        access_log=args.access_log,
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render",
        help="print the Envoy bootstrap for a waypoint from Kubernetes YAML (no cluster needed)",
        description=cli_args.plain(__doc__),
    )
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file or directory of Kubernetes objects (repeatable)",
    )
    parser.add_argument("--waypoint", type=cli_args.namespaced("--waypoint"), metavar="NS/NAME")
    parser.add_argument("-o", "--output", default="-", metavar="FILE|-")
    parser.add_argument(
        "--xds",
        metavar="ADDR",
        help="print a minimal bootstrap that gets everything else from the ADS server at ADDR",
    )
    parser.add_argument(
        "--xds-delta", action="store_true", help="with --xds: use the incremental (delta) protocol"
    )
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        help="print every object the controller would apply for the waypoint Gateways in the input",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero if any input object was rejected or breaks its schema "
        "(unknown field, wrong type, unsupported value)",
    )
    add_bootstrap_options(parser)
    parser.set_defaults(func=run)


def report_statuses(statuses: tuple[model.ResourceStatus, ...], stream: Any = None) -> int:
    """Print every rejected condition and schema problem; return how many objects had one."""
    return report.statuses(statuses, stream or sys.stderr)


def _write_sds_files(args: argparse.Namespace, opts: options.BootstrapOptions) -> bool:
    """Write the SDS files where the user named a place, else say how; False on failure."""
    if not _writes_files(args):
        print(
            f"note: the config reads its certificates through SDS files in {secrets.sds_dir(opts)}; "
            "nothing was written (to stdout, rendering has no side effects): name a directory "
            "with --sds-dir DIR, or render with -o FILE, to have them written",
            file=sys.stderr,
        )
        return True
    try:
        sds.write_files(opts)
    except OSError as exc:
        print(
            f"error: cannot write the SDS files ({exc}); choose a directory with --sds-dir",
            file=sys.stderr,
        )
        return False
    return True


def _writes_files(args: argparse.Namespace) -> bool:
    """Files are written only where the user named a place: ``--sds-dir`` or ``-o FILE``."""
    return bool(args.sds_dir) or args.output != "-"


def _write(text: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(text)
    else:
        pathlib.Path(output).write_text(text)


def run(args: argparse.Namespace) -> int:
    if args.xds and args.waypoint is not None:
        namespace, name = args.waypoint
        return _run_xds(args, bootstrap_options(args, namespace, name), namespace, name)
    if not args.filename:
        print("error: -f FILE is required (or --xds ADDR with --waypoint)", file=sys.stderr)
        return 2
    try:
        objects = inputs.load_objects(args.filename)
    except inputs.InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.kubernetes:
        return _run_kubernetes(args, objects)
    if args.waypoint is None:
        # Like kubectl, a Gateway without a namespace is in "default".
        keys = [gateway.key(o) for o in objects if o.get("kind") == "Gateway"]
        gateways = sorted((namespace or "default", name) for namespace, name in keys)
        if len(gateways) != 1:
            found = ", ".join(f"{ns}/{n}" for ns, n in gateways) or "none"
            print(
                f"error: --waypoint NS/NAME is required when the input does not hold exactly "
                f"one Gateway (found: {found})",
                file=sys.stderr,
            )
            return 2
        args.waypoint = gateways[0]
    namespace, name = args.waypoint
    opts = bootstrap_options(args, namespace, name)
    try:
        rendered = pipeline.render(objects, namespace, name, opts)
    except pipeline.WaypointNotFound as exc:
        report_statuses(pipeline.translate_objects(objects, opts.trust_domain).statuses)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bad = report_statuses(rendered.translation.statuses)
    if rendered.waypoint.proxy_port is None and not _write_sds_files(args, opts):
        return 1  # behind ztunnel's sandwich there is no certificate, so no SDS files
    _write(rendered.bootstrap_yaml, args.output)
    return 1 if (bad and args.strict) else 0


def _run_kubernetes(args: argparse.Namespace, objects: list[dict[str, Any]]) -> int:
    """Offline: the ServiceAccount, ConfigMap, Service, Deployment, HPA (and PDB) per waypoint."""
    if args.waypoint is not None:
        namespace, name = args.waypoint
        objects = [o for o in objects if not _is_other_gateway(o, namespace, name)]
    try:
        generated = kube_render.render_kubernetes(objects, bootstrap_options(args, "", ""))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not generated:
        print(
            "error: no waypoint Gateway (gatewayClassName: waypoint) in the input", file=sys.stderr
        )
        return 1
    _write(cli_args.dump_yaml_all(generated), args.output)
    return 0


def _is_other_gateway(obj: dict[str, Any], namespace: str, name: str) -> bool:
    meta = obj.get("metadata") or {}
    return obj.get("kind") == "Gateway" and (meta.get("namespace"), meta.get("name")) != (
        namespace,
        name,
    )


def _run_xds(
    args: argparse.Namespace, opts: options.BootstrapOptions, namespace: str, name: str
) -> int:
    """The xDS bootstrap needs no input world: the ADS server serves the waypoint's config."""
    try:
        config = xds_bootstrap.build(args.xds, namespace, name, opts, delta=args.xds_delta)
    except xds_bootstrap.AddressError as exc:
        print(f"error: --xds: {exc}", file=sys.stderr)
        return 2
    _write(yaml.safe_dump(config, sort_keys=False), args.output)
    return 0
