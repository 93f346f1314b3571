"""``waypoint proxy-config``: what a running waypoint Envoy holds, read from its admin API.

Like ``istioctl proxy-config``: listeners, routes, clusters, endpoints and secrets as tables,
or the raw admin sections with ``-o json|yaml``. Locally (``waypoint up``) point ``--admin``
at the admin port. On a cluster, ``--pod NS/POD`` runs ``kubectl port-forward`` to the pod's
admin port (15000) for the duration of the command, or forward it yourself and use
``--admin``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from waypoint.commands import args as cli_args

Obj = Mapping[str, Any]
Row = tuple[str, ...]
SECTIONS = ("listeners", "routes", "clusters", "endpoints", "secrets", "all")
ADMIN_PORT = 15000
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


class ProxyConfigError(Exception):
    """The admin API could not be read: unreachable, not Envoy, or a port-forward failed."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy-config",
        help="show a running waypoint's listeners, routes, clusters, endpoints or secrets",
        description=cli_args.plain(__doc__),
    )
    parser.add_argument("section", choices=SECTIONS)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--admin", default=f"127.0.0.1:{ADMIN_PORT}", metavar="HOST:PORT",
        help="the Envoy admin address (default %(default)s)",
    )  # fmt: skip
    where.add_argument(
        "--pod", type=cli_args.namespaced("--pod", "POD"), metavar="NS/POD",
        help="a waypoint pod on the cluster, reached through kubectl port-forward",
    )  # fmt: skip
    parser.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    parser.set_defaults(func=run)


# --- reading the admin API -------------------------------------------------------------------


def fetch(admin: str, path: str) -> Any:
    """GET ``http://<admin><path>`` as JSON."""
    url = f"http://{admin}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ProxyConfigError(f"cannot read {url}: {exc}") from None
    except ValueError:
        raise ProxyConfigError(f"{url} did not answer JSON: is it an Envoy admin port?") from None


def read_admin(admin: str) -> dict[str, Any]:
    """The three admin documents the tables need."""
    return {
        "config_dump": fetch(admin, "/config_dump?include_eds"),
        "clusters": fetch(admin, "/clusters?format=json"),
        "certs": fetch(admin, "/certs"),
    }


def _dump_of(config_dump: Obj, kind: str) -> Obj:
    for config in config_dump.get("configs") or []:
        if str(config.get("@type", "")).endswith(f".{kind}"):
            return config  # type: ignore[no-any-return]
    return {}


# --- the tables --------------------------------------------------------------------------------


def _address(address: Obj) -> str:
    socket = address.get("socket_address")
    if socket:
        return f"{socket.get('address', '')}:{socket.get('port_value', '')}"
    internal = address.get("envoy_internal_address")
    if internal:
        return f"internal:{internal.get('server_listener_name', '')}"
    return "-"


def _listeners(dump: Obj) -> Iterator[tuple[str, Obj]]:
    """(static|dynamic, Listener) for every listener in the config dump."""
    section = _dump_of(dump, "ListenersConfigDump")
    for item in section.get("static_listeners") or []:
        yield "static", item.get("listener") or {}
    for item in section.get("dynamic_listeners") or []:
        active = (item.get("active_state") or {}).get("listener")
        if active:
            yield "dynamic", active


def listener_rows(admin: Obj) -> list[Row]:
    rows: list[Row] = [("NAME", "ADDRESS", "CHAINS", "FROM")]
    for source, listener in _listeners(admin["config_dump"]):
        address = _address(listener.get("address") or {})
        if "internal_listener" in listener:
            address = "internal"
        chains = len(listener.get("filter_chains") or []) + int("default_filter_chain" in listener)
        rows.append((str(listener.get("name", "")), address, str(chains), source))
    return rows


def _route_configs(dump: Obj) -> Iterator[tuple[str, Obj]]:
    """(where, RouteConfiguration): inline in each HTTP connection manager, then the others.

    Envoy lists inline route configs among the static ones too; each is shown once, under
    its listener.
    """
    seen: set[str] = set()
    for inline in _inline_route_configs(dump):
        seen.add(_identity(inline[1]))
        yield inline
    section = _dump_of(dump, "RoutesConfigDump")
    for source, key in (("static", "static_route_configs"), ("rds", "dynamic_route_configs")):
        for item in section.get(key) or []:
            config = item.get("route_config") or {}
            if _identity(config) not in seen:
                yield source, config


def _identity(config: Obj) -> str:
    """A route config's content, without the ``@type`` the dump adds to listed ones."""
    return json.dumps({k: v for k, v in config.items() if k != "@type"}, sort_keys=True)


def _inline_route_configs(dump: Obj) -> Iterator[tuple[str, Obj]]:
    for _, listener in _listeners(dump):
        chains = [
            *(listener.get("filter_chains") or []),
            listener.get("default_filter_chain") or {},
        ]
        for chain in chains:
            for network_filter in chain.get("filters") or []:
                config = network_filter.get("typed_config") or {}
                if "route_config" in config:
                    yield str(listener.get("name", "")), config["route_config"]


def _match(match: Obj) -> str:
    for key in ("path", "prefix", "path_separated_prefix"):
        if key in match:
            text = f"{key} {match[key]}"
            break
    else:
        if "safe_regex" in match:
            text = f"regex {match['safe_regex'].get('regex', '')}"
        elif "connect_matcher" in match:
            text = "CONNECT"
        else:
            text = "*"
    headers = [h.get("name", "") for h in match.get("headers") or []]
    return text + (f" +headers {','.join(headers)}" if headers else "")


def _action(route: Obj) -> str:
    if "route" in route:
        action = route["route"]
        if "cluster" in action:
            return str(action["cluster"])
        weighted = (action.get("weighted_clusters") or {}).get("clusters") or []
        return ", ".join(f"{c.get('name')} ({c.get('weight')})" for c in weighted) or "-"
    if "redirect" in route:
        return "redirect"
    if "direct_response" in route:
        return f"direct {route['direct_response'].get('status', '')}"
    return "-"


def route_rows(admin: Obj) -> list[Row]:
    rows: list[Row] = [("LISTENER", "VIRTUAL HOST", "DOMAINS", "MATCH", "ROUTE", "TO")]
    for where, config in _route_configs(admin["config_dump"]):
        for vhost in config.get("virtual_hosts") or []:
            domains = ",".join(vhost.get("domains") or [])
            for route in vhost.get("routes") or []:
                rows.append(
                    (
                        where,
                        str(vhost.get("name", "")),
                        domains,
                        _match(route.get("match") or {}),
                        str(route.get("name", "")),
                        _action(route),
                    )
                )
    return rows


def _statuses(admin: Obj) -> list[Obj]:
    return list((admin["clusters"] or {}).get("cluster_statuses") or [])


def cluster_rows(admin: Obj) -> list[Row]:
    endpoints = {str(s.get("name")): len(s.get("host_statuses") or []) for s in _statuses(admin)}
    rows: list[Row] = [("NAME", "TYPE", "ENDPOINTS", "FROM")]
    section = _dump_of(admin["config_dump"], "ClustersConfigDump")
    listed = [("static", i.get("cluster") or {}) for i in section.get("static_clusters") or []]
    listed += [
        ("dynamic", i.get("cluster") or {}) for i in section.get("dynamic_active_clusters") or []
    ]
    for source, cluster in listed:
        name = str(cluster.get("name", ""))
        kind = str(cluster.get("type") or (cluster.get("cluster_type") or {}).get("name") or "EDS")
        rows.append((name, kind, str(endpoints.get(name, 0)), source))
    return rows


def endpoint_rows(admin: Obj) -> list[Row]:
    rows: list[Row] = [("CLUSTER", "ENDPOINT", "HEALTH", "WEIGHT")]
    for status in _statuses(admin):
        for host in status.get("host_statuses") or []:
            health = host.get("health_status") or {}
            failed = [k for k, v in health.items() if k.startswith("failed") and v]
            state = ",".join(failed) or str(health.get("eds_health_status", "HEALTHY"))
            rows.append(
                (
                    str(status.get("name", "")),
                    _address(host.get("address") or {}),
                    state,
                    str(host.get("weight", "")),
                )
            )
    return rows


def _sans(cert: Obj) -> str:
    return ",".join(
        str(value) for san in cert.get("subject_alt_names") or [] for value in san.values()
    )


def secret_rows(admin: Obj) -> list[Row]:
    rows: list[Row] = [("NAME", "KIND", "SUBJECT ALT NAMES", "SERIAL", "EXPIRES")]
    section = _dump_of(admin["config_dump"], "SecretsConfigDump")
    names = [
        str(item.get("name", ""))
        for key in ("static_secrets", "dynamic_active_secrets", "dynamic_warming_secrets")
        for item in section.get(key) or []
    ]
    rows += [(name, "secret", "-", "-", "-") for name in names]
    certs: dict[Row, None] = {}  # /certs repeats a certificate for every TLS context using it
    for entry in (admin["certs"] or {}).get("certificates") or []:
        for kind, key in (("cert", "cert_chain"), ("root", "ca_cert")):
            for cert in entry.get(key) or []:
                row = (
                    "-",
                    kind,
                    _sans(cert) or "-",
                    str(cert.get("serial_number", "")),
                    str(cert.get("expiration_time", "")),
                )
                certs[row] = None
    return rows + list(certs)


TABLES: dict[str, Callable[[Obj], list[Row]]] = {
    "listeners": listener_rows,
    "routes": route_rows,
    "clusters": cluster_rows,
    "endpoints": endpoint_rows,
    "secrets": secret_rows,
}
RAW: dict[str, Callable[[Obj], Any]] = {
    "listeners": lambda a: _dump_of(a["config_dump"], "ListenersConfigDump"),
    "routes": lambda a: [
        {"where": where, "route_config": c} for where, c in _route_configs(a["config_dump"])
    ],
    "clusters": lambda a: _dump_of(a["config_dump"], "ClustersConfigDump"),
    "endpoints": lambda a: a["clusters"],
    "secrets": lambda a: {
        "secrets": _dump_of(a["config_dump"], "SecretsConfigDump"),
        "certs": a["certs"],
    },
}


def format_table(rows: Sequence[Row]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def render(admin: Obj, section: str, output: str) -> str:
    wanted = list(TABLES) if section == "all" else [section]
    if output == "table":
        return "\n\n".join(format_table(TABLES[name](admin)) for name in wanted) + "\n"
    data = {name: RAW[name](admin) for name in wanted}
    if output == "json":
        return json.dumps(data, indent=2) + "\n"
    return cli_args.dump_yaml(data)


# --- the command -----------------------------------------------------------------------------


def port_forward(namespace: str, pod: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``kubectl port-forward`` to the pod's admin port; return it and the local address."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ProxyConfigError("--pod needs kubectl on PATH (or forward the port and use --admin)")
    proc = subprocess.Popen(
        [kubectl, "-n", namespace, "port-forward", f"pod/{pod}", f":{ADMIN_PORT}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()
    found = _FORWARDING.search(first)
    if found is None:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise ProxyConfigError(f"kubectl port-forward to {namespace}/{pod} failed: {err or first}")
    return proc, f"127.0.0.1:{found.group(1)}"


def run(args: argparse.Namespace) -> int:
    forward = None
    try:
        admin = args.admin
        if args.pod is not None:
            forward, admin = port_forward(*args.pod)
        sys.stdout.write(render(read_admin(admin), args.section, args.output))
    except ProxyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(timeout=10)
    return 0
