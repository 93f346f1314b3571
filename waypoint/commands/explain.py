"""``waypoint explain``: which listener, route and cluster a request takes through a waypoint.

Offline, like ``istioctl x describe`` and ``proxy-config`` in one: the objects are translated
and rendered exactly as ``waypoint render`` does, and ``waypoint.simulate`` walks the request
through the resulting Envoy config. ``URL`` is ``http://<service>.<namespace>[:port]/path``
(the Service's ClusterIP is looked up in the input) or ``http://<VIP>:<port>/path``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from waypoint import model, names, pipeline, simulate, wellknown
from waypoint.commands import args as cli_args
from waypoint.commands import report
from waypoint.envoy import ext_authz, resources
from waypoint.envoy import options as options_mod
from waypoint.runtime import inputs
from waypoint.simulate import authz as authz_sim
from waypoint.translate import status as status_mod

Obj = Mapping[str, Any]
USE_WAYPOINT = wellknown.USE_WAYPOINT


class ExplainError(ValueError):
    """The request cannot be explained; the message says what is wrong with it."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="trace a request through a waypoint's config: listener, route, cluster (offline)",
        description=cli_args.plain(__doc__),
    )
    parser.add_argument("url", metavar="URL", help="http://SERVICE.NAMESPACE[:PORT]/PATH or VIP")
    parser.add_argument(
        "-f", "--filename", action="append", required=True, metavar="FILE",
        help="YAML file or directory of Kubernetes objects (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--waypoint", type=cli_args.namespaced("--waypoint"), required=True, metavar="NS/NAME"
    )
    parser.add_argument(
        "--from", dest="source", type=cli_args.namespaced("--from", "SERVICEACCOUNT"), metavar="NS/SA",
        help="the client's namespace and service account (its SPIFFE ID)",
    )  # fmt: skip
    parser.add_argument(
        "--from-ip", dest="source_ip", metavar="IP",
        help="the client's IP address (for AuthorizationPolicy ipBlocks and source.ip)",
    )  # fmt: skip
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument("--trust-domain", default=options_mod.BootstrapOptions().trust_domain)
    parser.set_defaults(func=run)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the URL points: the CONNECT authority, the Host header, the Service if any."""

    authority: str
    host: str
    path: str
    service: tuple[str, str] | None  # (namespace, name)


def run(args: argparse.Namespace) -> int:
    try:
        objects = inputs.load_objects(args.filename)
        headers = cli_args.parse_headers(args.header)
    except (inputs.InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    namespace, name = args.waypoint
    opts = options_mod.BootstrapOptions(trust_domain=args.trust_domain)
    try:
        rendered = pipeline.render(objects, namespace, name, opts)
        default_ns = args.source[0] if args.source else None
        target = resolve(objects, args.url, default_ns)
        check_served(rendered, target, objects)
    except (pipeline.WaypointNotFound, ExplainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report.schema_problems(rendered.translation.statuses, sys.stderr)
    request = build_request(target, args.method, headers, args.source, args.trust_domain)
    if args.source_ip:
        request = dataclasses.replace(request, source_address=args.source_ip)
    try:
        trace = simulate.trace(resources.build(rendered.waypoint, opts), request)
    except (simulate.ConfigError, simulate.UnsupportedConfig) as exc:
        print(f"error: cannot simulate this config: {exc}", file=sys.stderr)
        return 1
    notes = route_notes(rendered.translation, target.service)
    if args.output == "json":
        data = trace.to_dict()
        data["notes"] = list(notes)
        print(json.dumps(data, indent=2))
    else:
        print(format_trace(trace, f"{namespace}/{name}", notes))
    return 0


# --- resolving the URL ---------------------------------------------------------------------


def _meta(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _services(objects: Sequence[Obj]) -> dict[tuple[str, str], Obj]:
    return {_meta(o): o for o in objects if o.get("kind") == "Service"}


def _cluster_ips(service: Obj) -> list[str]:
    spec = service.get("spec") or {}
    ips = [str(ip) for ip in spec.get("clusterIPs") or []]
    if spec.get("clusterIP") and str(spec["clusterIP"]) not in ips:
        ips.insert(0, str(spec["clusterIP"]))
    return [ip for ip in ips if ip != "None"]


def _service_name(host: str, default_ns: str | None) -> tuple[str, str]:
    for suffix in (f".svc.{names.CLUSTER_DOMAIN}", ".svc"):
        if host.endswith(suffix):
            host = host[: -len(suffix)]
            break
    parts = host.split(".")
    if len(parts) == 2 and all(parts):
        return parts[1], parts[0]
    if len(parts) == 1 and default_ns is not None:
        return default_ns, parts[0]
    if len(parts) == 1:
        raise ExplainError(f"{host!r}: write <service>.<namespace>, or give --from NS/SA")
    raise ExplainError(f"{host!r} is not <service>.<namespace>[.svc.{names.CLUSTER_DOMAIN}]")


def resolve(objects: Sequence[Obj], url: str, default_ns: str | None = None) -> Target:
    """Turn ``url`` into the CONNECT authority a ztunnel would send, checking the Service."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise ExplainError(f"expected http://HOST[:PORT]/PATH, got {url!r}")
    try:
        port = parsed.port or 80
    except ValueError as exc:
        raise ExplainError(f"{url!r}: {exc}") from None
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    host = parsed.hostname
    services = _services(objects)
    if names.is_ip(host):
        owner = next((key for key, svc in services.items() if host in _cluster_ips(svc)), None)
        return Target(names.authority(host, port), parsed.netloc, path, owner)
    key = _service_name(host, default_ns)
    service = services.get(key)
    if service is None:
        known = sorted(n for ns, n in services if ns == key[0])
        listing = ", ".join(known) if known else "none"
        raise ExplainError(
            f"no Service {key[0]}/{key[1]} in the input (Services in {key[0]}: {listing})"
        )
    ips = _cluster_ips(service)
    if not ips:
        raise ExplainError(f"Service {key[0]}/{key[1]} has no ClusterIP (headless?)")
    ports = [int(p["port"]) for p in (service.get("spec") or {}).get("ports") or [] if "port" in p]
    if port not in ports:
        raise ExplainError(
            f"Service {key[0]}/{key[1]} has no port {port} (ports: "
            f"{', '.join(map(str, ports)) or 'none'})"
        )
    return Target(names.authority(ips[0], port), parsed.netloc, path, key)


# --- is it served, and why not ---------------------------------------------------------------


def _served(waypoint: model.Waypoint, authority: str) -> bool:
    address, port = names.parse_authority(authority)
    return any(d.port == port and address in d.addresses for d in waypoint.destinations)


def _status_of(translation: model.Translation, kind: str, key: tuple[str, str]) -> list[str]:
    out = []
    for status in translation.statuses:
        ref = status.ref
        if (ref.kind, ref.namespace, ref.name) != (kind, *key):
            continue
        for cond in status.conditions:
            if cond.type == status_mod.WAYPOINT_BOUND:
                state = "True" if cond.status else "False"
                out.append(f"{status_mod.WAYPOINT_BOUND}={state} ({cond.reason}): {cond.message}")
    return out


def _label_reason(objects: Sequence[Obj], namespace: str, name: str) -> str:
    """Why a Service with no WaypointBound condition is not bound: its labels say so."""
    for kind, key, what in (
        ("Service", (namespace, name), f"Service {namespace}/{name}"),
        ("Namespace", ("default", namespace), f"Namespace {namespace}"),
    ):
        for obj in objects:
            if obj.get("kind") == kind and _meta(obj) == key:
                labels = (obj.get("metadata") or {}).get("labels") or {}
                if labels.get(USE_WAYPOINT) == "none":
                    return f"{what} opts out ({USE_WAYPOINT}: none)"
    return (
        f"neither Service {namespace}/{name} nor Namespace {namespace} has an {USE_WAYPOINT} label"
    )


def check_served(rendered: pipeline.Rendered, target: Target, objects: Sequence[Obj] = ()) -> None:
    """Raise ExplainError saying why the waypoint does not take ``target``, if it does not."""
    waypoint = rendered.waypoint
    if _served(waypoint, target.authority):
        return
    where = f"waypoint {waypoint.namespace}/{waypoint.name}"
    if target.service is None:
        raise ExplainError(
            f"{target.authority} is not served by {where}: no Service in the input has that "
            "ClusterIP, and no workload it captures has that address and port"
        )
    ns, name = target.service
    conditions = _status_of(rendered.translation, "Service", target.service)
    if not conditions:
        conditions = [_label_reason(objects, ns, name)]
    raise ExplainError(
        f"Service {ns}/{name} ({target.authority}) is not served by {where}: "
        + "; ".join(conditions)
    )


def route_notes(translation: model.Translation, service: tuple[str, str] | None) -> list[str]:
    """Routes naming this Service that were (partly) rejected, so their rules are missing."""
    if service is None:
        return []
    out = []
    for status in translation.statuses:
        for parent in status.parents:
            ref = parent.parent
            if ref.kind != "Service" or (ref.namespace, ref.name) != service:
                continue
            for cond in parent.conditions:
                if not cond.status:
                    out.append(report.describe(status.ref, cond))
    return out


def build_request(
    target: Target,
    method: str,
    headers: Sequence[tuple[str, str]],
    source: tuple[str, str] | None,
    trust_domain: str,
) -> simulate.Request:
    host = next((v for k, v in headers if k.lower() == "host"), target.host)
    return simulate.Request(
        authority=target.authority,
        method=method.upper(),
        path=target.path,
        headers=tuple((k, v) for k, v in headers if k.lower() != "host"),
        source_principal=names.spiffe_id(trust_domain, *source) if source else None,
        host=host,
    )


# --- text output -----------------------------------------------------------------------------

_KINDS = {"httproute": "HTTPRoute", "grpcroute": "GRPCRoute"}


def describe_route(name: str) -> str:
    try:
        ref = names.parse_route_name(name)
    except ValueError:
        parts = name.split("/")
        if len(parts) == 4 and parts[0] == "default":
            return f"the default route of {parts[1]}/{parts[2]}:{parts[3]} (no route attached)"
        return name
    if ref.kind == "consumer-default":
        return (
            f"clients in namespace {ref.namespace} have consumer routes for "
            f"{ref.name}:{ref.rule}, and none matched: 404"
        )
    kind = _KINDS.get(ref.kind, ref.kind)
    return f"{kind} {ref.namespace}/{ref.name}, rule {ref.rule}, match {ref.match}"


def _endpoint_lines(endpoint: simulate.Endpoint) -> list[str]:
    if not endpoint.hbone:
        return [f"    endpoint {endpoint.address} (plain)"]
    return [
        f"    endpoint {endpoint.address} over HBONE",
        f"      via {endpoint.via} to {endpoint.tunnel_to}, peer {endpoint.peer}",
    ]


def _upstream_lines(upstream: simulate.Upstream, protocol: str | None) -> list[str]:
    share = f" {upstream.share:.0%}" + (f" (weight {upstream.weight})" if upstream.weight else "")
    lines = [f"  cluster {upstream.cluster}{share if upstream.weight is not None else ''}"]
    if not upstream.exists:
        return [*lines, "    no such cluster: the request fails"]
    if not upstream.endpoints:
        lines.append("    no ready endpoints: 503")
    for endpoint in upstream.endpoints:
        lines += _endpoint_lines(endpoint)
    lines += [f"    backend headers: {c}" for c in upstream.header_changes]
    if upstream.request is not None and protocol == "http":
        lines.append(f"    upstream sees: {upstream.request.host} {upstream.request.path}")
    return lines


def _action_lines(action: simulate.Action, protocol: str | None) -> list[str]:
    lines = [f"action: {action.kind.replace('_', ' ')}"]
    if action.kind == "redirect":
        lines.append(f"  {action.status} Location: {action.location}")
    elif action.kind == "direct_response":
        lines.append(
            f"  status {action.status}" + (f", body {action.body!r}" if action.body else "")
        )
    if action.path_rewrite is not None:
        lines.append(f"  path rewritten to {action.path_rewrite}")
    if action.host_rewrite is not None:
        lines.append(f"  host rewritten to {action.host_rewrite}")
    lines += [f"  request headers: {c}" for c in action.header_changes]
    lines += [f"  response headers: {c}" for c in action.response_header_changes]
    lines += [f"  mirror to {m}" for m in action.mirrors]
    if action.timeout_seconds is not None:
        lines.append(f"  timeout {action.timeout_seconds:g}s")
    if action.retry is not None:
        lines.append(f"  retry: {action.retry}")
    lines += [f"  policy filter on: {p}" for p in action.policies]
    for upstream in action.upstreams:
        lines += _upstream_lines(upstream, protocol)
    return lines


def _result(trace: simulate.Trace) -> str:
    if not trace.connect.peer_accepted:
        return "result: the TLS handshake fails (client identity refused)"
    if trace.authz is not None and trace.authz.status is not None:
        return f"result: Envoy answers {trace.status} ({trace.authz.decided_by})"
    if trace.status is not None:
        return f"result: Envoy answers {trace.status}"
    clusters = " or ".join(trace.clusters)
    by_weight = " (by weight)" if len(trace.clusters) > 1 else ""
    if trace.action is not None and ext_authz.EXT_AUTHZ in trace.action.policies:
        # The check is not simulated: extauthz answers 401/403 itself when it denies.
        return (
            f"result: ext_authz decides first (not simulated); if it allows, forwarded to "
            f"{clusters}{by_weight} and the upstream answers, else ext_authz's 401/403"
        )
    return f"result: forwarded to {clusters}{by_weight}; the upstream answers"


def format_trace(trace: simulate.Trace, waypoint: str, notes: Sequence[str] = ()) -> str:
    request = trace.request
    who = request.source_principal or "an unspecified client (consumer routes cannot match)"
    lines = [
        f"{request.method} http://{request.host or request.authority}{request.path}",
        f"  from {who}",
        f"  through waypoint {waypoint}, CONNECT {request.authority}",
        "",
    ]
    connect = trace.connect
    if connect.cluster is None:
        lines.append(f"hbone: {connect.listener}: {connect.reason}")
    else:
        lines.append(
            f"hbone: {connect.listener} route {connect.route} -> cluster {connect.cluster}"
        )
    if trace.listener is not None:
        lines.append(f"listener: {trace.listener} ({(trace.protocol or '').upper()})")
    if trace.rejected:
        lines.append(f"  rejected before routing: {trace.rejected}")
    for check in trace.checks:
        if not check.matched:
            lines.append(f"  skipped {check.name}: {check.reason}")
    if trace.route is not None:
        lines.append(f"route: {trace.route}")
        lines.append(f"  {describe_route(trace.route)}")
    elif trace.protocol == "http" and not trace.rejected:
        lines.append("route: none matched: 404")
    if trace.authz is not None:
        lines += [f"authz: {line}" for line in authz_sim.describe(trace.authz)]
    if trace.action is not None and (trace.authz is None or trace.authz.status is None):
        lines += _action_lines(trace.action, trace.protocol)
    lines += [f"note: {n}" for n in notes]
    lines.append(_result(trace))
    return "\n".join(lines)
