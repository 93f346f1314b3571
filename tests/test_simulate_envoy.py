"""The simulator against real Envoy, on the GAMMA conformance world.

Every single-request conformance case that goes through the waypoint (plus a few requests
of our own that probe path normalisation, case and unknown authorities) is simulated from the
generated resources and then sent through a LocalStack. Envoy's access log line for the
request (found by its ``x-request-id``) must name the route the simulator chose and an
upstream cluster it predicted; the status and ``Location`` Envoy made must be the ones it
predicted. Weighted cases check that every cluster Envoy picked is one the simulator gives a
share, and that the shares are the route's weights. One LocalStack serves the module.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests import conftest
from tests.conformance import replay
from tests.conformance import world as world_mod
from waypoint import names, simulate
from waypoint.envoy import resources
from waypoint.local import stack as stack_mod
from waypoint.local.hbone import errors
from waypoint.runtime import inputs

GAMMA = conftest.SHARED / "conformance" / "gamma"
CASES = GAMMA / "cases.json"
LOG_WAIT = 15.0
WEIGHTED_REQUESTS = 12
Case = Mapping[str, Any]

# Requests beyond the conformance cases, per test name: (method, path, headers).
EXTRA: Mapping[str, tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]] = {
    "MeshHTTPRouteMatching": (
        ("GET", "/V2/example", ()),  # paths are case sensitive
        ("GET", "/v2/./example", ()),  # dot segments are normalised before matching
        ("GET", "/foo/../v2/example", ()),
        ("GET", "/v2?x=/example", ()),  # the query string is not part of the path
        ("POST", "/example", (("version", "two"),)),
        ("GET", "/%762/example", ()),  # percent-encoded unreserved characters
        ("GET", "/v2%2Fexample", ()),  # escaped slashes are kept as they are
        ("GET", "//v2//example", ()),  # slashes are not merged
        ("GET", "/", (("version", "TWO"),)),  # header values are case sensitive
    ),
    "MeshHTTPRouteQueryParamMatching": (
        ("GET", "/?animal=wha%6Ce", ()),  # values are percent-decoded
        ("GET", "/?animal=dolphin&animal=whale", ()),  # the first value counts
        ("GET", "/?Animal=whale", ()),  # names are case sensitive
        ("GET", "/?animal=whale#frag", ()),
    ),
    "MeshHTTPRouteRewritePath": (
        ("GET", "/prefix/one/two?keep=1", ()),
        ("GET", "/strip-prefix/three?x=1", ()),
        ("GET", "/strip-prefix//three", ()),
        ("GET", "/full/one/two?x=1", ()),
    ),
    "MeshHTTPRouteRedirectPath": (
        ("GET", "/original-prefix/lemon?q=1", ()),
        ("GET", "/full/path/original?q=1", ()),
        ("GET", "/path-and-host", (("Host", "echo.example:1234"),)),
    ),
    "MeshHTTPRouteRedirectPort": (("GET", "/port", (("Host", "echo:8888"),)),),
    "MeshHTTPRouteSchemeRedirect": (("GET", "/scheme?a=b", ()),),
}


def _tests() -> list[dict[str, Any]]:
    if not CASES.exists():
        return []
    tests: list[dict[str, Any]] = json.loads(CASES.read_text())
    return tests


def _world(files: list[str]) -> world_mod.World:
    manifests = GAMMA / "manifests"
    paths = [manifests / "base.yaml", *(manifests / f for f in files)]
    # Pods of their own: the conformance replay may hold 127.0.20.x in the same session.
    return world_mod.build(inputs.load_objects(paths), ipaddress.IPv4Address("127.0.21.1"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_mod.LocalStack]:
    if not CASES.exists():
        pytest.skip(f"no conformance cases at {CASES}")
    world = _world([])
    with stack_mod.LocalStack(
        world.objects,
        world_mod.MESH_NS,
        world_mod.WAYPOINT,
        workdir=tmp_path_factory.mktemp("simulate"),
    ) as running:
        yield running


def _with_request_id(case: Case, request_id: str, method: str, path: str, extra: Any) -> Case:
    request = dict(case["request"])
    headers = dict(request.get("headers") or {})
    headers.update(dict(extra))
    headers["x-request-id"] = request_id
    request.update(headers=headers, method=method, path=path)
    return {**case, "request": request}


def _simulated(stack: stack_mod.LocalStack, case: Case, where: replay.Target) -> simulate.Request:
    request = case["request"]
    headers = [(k, v) for k, v in (request.get("headers") or {}).items() if k.lower() != "host"]
    host = next((v for k, v in (request.get("headers") or {}).items() if k.lower() == "host"), None)
    principal = names.spiffe_id(stack.trust_domain, where.client_namespace, "default")
    if request["protocol"] == "grpc":
        headers += [("content-type", "application/grpc"), ("te", "trailers")]
        return simulate.Request(
            where.authority, "POST", replay.GRPC_METHOD, tuple(headers), principal, where.authority
        )
    return simulate.Request(
        where.authority,
        request.get("method") or "GET",
        request.get("path") or "/",
        tuple(headers),
        principal,
        host or where.host,
    )


def _flush_logs(stack: stack_mod.LocalStack) -> None:
    """Envoy writes access logs every 10 s by default; ``/reopen_logs`` flushes them now."""
    url = f"http://{stack.options.admin_address}:{stack.options.admin_port}/reopen_logs"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as reply:
        reply.read()


def _log_lines(stack: stack_mod.LocalStack, wanted: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Access log lines by request id, once every wanted id has shown up."""
    _flush_logs(stack)
    deadline = time.monotonic() + LOG_WAIT
    while True:
        found: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for entry in conftest.json_lines(stack.envoy_log()):
            if entry.get("request_id") in wanted:
                found[entry["request_id"]].append(entry)
        if wanted <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _cases(test: Case) -> Iterator[tuple[str, Case, str, str, Any]]:
    """(request id, case, method, path, extra headers) for every request to send."""
    for index, case in enumerate(test["cases"]):
        request = case["request"]
        rid = f"sim-{test['name']}-{index}"
        yield rid, case, request.get("method") or "GET", request.get("path") or "/", ()
    base = next((c for c in test["cases"] if c["kind"] == "request"), None)
    for extra_index, (method, path, headers) in enumerate(EXTRA.get(test["name"], ())):
        assert base is not None
        yield f"sim-{test['name']}-extra{extra_index}", base, method, path, headers


def _compare(trace: simulate.Trace, seen: replay.Observed, log: dict[str, Any]) -> list[str]:
    problems = []
    if log.get("route_name") != trace.route:
        problems.append(f"Envoy route {log.get('route_name')!r}, simulated {trace.route!r}")
    cluster = log.get("upstream_cluster")
    if trace.clusters and cluster not in trace.clusters:
        problems.append(f"Envoy cluster {cluster!r}, simulated {trace.clusters}")
    if trace.status is not None and int(log["response_code"]) != trace.status:
        problems.append(f"Envoy status {log['response_code']}, simulated {trace.status}")
    if trace.status is not None and seen.status != trace.status:
        problems.append(f"client saw status {seen.status}, simulated {trace.status}")
    if trace.action is not None and cluster in trace.clusters:
        problems += _forwarded(trace, seen, cluster)
    location = trace.action.location if trace.action is not None else None
    if location is not None and seen.header_values("location") != [location]:
        problems.append(f"Location {seen.header_values('location')}, simulated {location!r}")
    return problems


def _forwarded(trace: simulate.Trace, seen: replay.Observed, cluster: str) -> list[str]:
    """What the backend saw: the simulated path, Host, and route-configured headers."""
    report = seen.report
    upstreams = trace.action.upstreams if trace.action is not None else ()
    upstream = next((u for u in upstreams if u.cluster == cluster), None)
    if report is None or upstream is None or upstream.request is None:
        return []
    want = upstream.request
    problems = []
    got = report.url
    if not got.startswith("/"):  # an absolute URL; a path may itself start with //
        split = urllib.parse.urlsplit(got)
        got = split.path + (f"?{split.query}" if split.query else "")
    if trace.request.method != "POST" and got != want.path:  # gRPC echo reports no URL
        problems.append(f"backend saw path {got!r}, simulated {want.path!r}")
    if report.host and report.host != want.host:
        problems.append(f"backend saw Host {report.host!r}, simulated {want.host!r}")
    names_sent = {k.lower() for k, _ in trace.request.headers} | {k for k, _ in want.headers}
    for name in sorted(names_sent - {"te", "content-type"}):
        expected = [v for k, v in want.headers if k == name]
        values = report.headers.get(name, [])
        if ",".join(values) != ",".join(expected):
            problems.append(f"backend saw {name}={values}, simulated {expected}")
    return problems


def _weights(trace: simulate.Trace, case: Case) -> list[str]:
    """The simulated shares must be the route's weights (by backend Service)."""
    want = case["weighted"]["route_weights"]
    assert trace.action is not None
    got = {}
    for upstream in trace.action.upstreams:
        if upstream.exists:
            ref, _port = names.parse_outbound_cluster(upstream.cluster)
            got[ref.name] = upstream.weight
    expected = {k: v for k, v in want.items() if k in got}
    return [] if got == expected else [f"simulated weights {got}, route weights {want}"]


def _run(stack: stack_mod.LocalStack, world: world_mod.World, test: Case) -> list[str]:
    built = resources.build(stack.waypoint, stack.options)
    sent: dict[str, tuple[simulate.Trace, replay.Observed, Case]] = {}
    problems: list[str] = []
    for rid, case, method, path, extra in _cases(test):
        where = replay.target(case, world, stack)
        if stack.hop(where.authority)[0] != stack.waypoint_address:
            continue  # goes straight to the pod: the waypoint never sees it
        count = WEIGHTED_REQUESTS if case["kind"] == "weighted" else 1
        tagged = _with_request_id(case, rid, method, path, extra)
        trace = simulate.trace(built, _simulated(stack, tagged, where))
        if case["kind"] == "weighted":
            problems += [f"{rid}: {p}" for p in _weights(trace, case)]
        with stack.client(where.client_namespace, destination=where.authority) as client:
            for _ in range(count):
                sent[rid] = (trace, replay.send(client, tagged, where), case)
    logs = _log_lines(stack, set(sent))
    for rid, (trace, seen, _case) in sorted(sent.items()):
        entries = logs.get(rid)
        if not entries:
            problems.append(f"{rid}: no access log line (client saw {seen.describe()})")
            continue
        for entry in entries:
            problems += [f"{rid}: {p}" for p in _compare(trace, seen, entry)]
    return problems


@pytest.mark.parametrize("test", _tests(), ids=lambda t: t["name"])
def test_simulator_agrees_with_envoy(stack: stack_mod.LocalStack, test: Case) -> None:
    world = _world(test["manifests"])
    stack.reload(world.objects)
    problems = _run(stack, world, test)
    assert not problems, "\n".join(problems)


def test_unknown_authority_is_a_connect_404(stack: stack_mod.LocalStack) -> None:
    authority = "10.96.255.254:80"
    trace = simulate.trace(
        resources.build(stack.waypoint, stack.options), simulate.Request(authority)
    )
    assert (trace.connect.status, trace.status, trace.listener) == (404, 404, None)
    with stack.client(world_mod.MESH_NS) as client, pytest.raises(errors.TunnelRejected) as err:
        client.request(authority, "GET", "/")
    assert err.value.status == trace.connect.status
