"""Replay one GAMMA conformance case through a LocalStack and judge it as upstream does.

The cases are data (``cases.json``, see its README): this module sends each one the way
upstream's echo client would (from a client pod's identity, to the Service VIP:port the
``host`` names, Host header as given, never following redirects) and checks what came back.
Checking is pure (:func:`check_request`, :func:`check_weights`) so it is tested on its own.

Beyond upstream's mesh comparator (status, backend prefix, request headers, response
headers) we also enforce ``namespace`` (when a backend answered), ``redirect`` (filled in
the way upstream's gateway comparator does) and ``request_seen_by_backend.path``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tests.conformance import world as world_mod
from waypoint import names
from waypoint.local import echo
from waypoint.local import stack as stack_mod
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import echo_pb2, errors, grpcwire

Case = Mapping[str, Any]
CONSECUTIVE_PASSES = 3  # upstream: a case passes once it passed 3 times in a row
MAX_ATTEMPTS = 5  # our config is static, so 5 tries are plenty to see 3 in a row
RETRY_PAUSE = 0.1  # upstream waits 100 ms after a failed try
WEIGHTED_CONCURRENCY = 32
GRPC_METHOD = "/proto.EchoTestService/Echo"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a case's request goes: the CONNECT authority and the Host it carries."""

    authority: str
    host: str
    client_namespace: str
    client_service_account: str


@dataclasses.dataclass(frozen=True)
class Observed:
    """What one request produced, as the client saw it."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    report: echo.EchoReport | None = None
    error: str = ""

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def describe(self) -> str:
        parts = [f"status {self.status}"]
        if self.report is not None:
            parts.append(f"backend {self.report.namespace}/{self.report.hostname}")
            parts.append(f"url {self.report.url!r}")
        if self.error:
            parts.append(f"error {self.error}")
        location = self.header_values("location")
        if location:
            parts.append(f"location {location[0]!r}")
        return ", ".join(parts)


def selector(text: str) -> dict[str, str]:
    """``app=echo,version=v1`` → a label selector dict."""
    out = {}
    for term in text.split(","):
        key, sep, value = term.partition("=")
        if not sep:
            raise ValueError(f"bad selector term {term!r} in {text!r}")
        out[key.strip()] = value.strip()
    return out


def _split_host(host: str) -> tuple[str, int]:
    name, sep, port = host.rpartition(":")
    return (name, int(port)) if sep and port.isdigit() else (host, 80)


def target(case: Case, world: world_mod.World, stack: stack_mod.LocalStack) -> Target:
    """The client pod's identity and the address the mesh sends the request to."""
    client = case["client"]
    pod = world.first_pod(client["namespace"], selector(client["selector"]))
    request = case["request"]
    from_pod = request.get("host_from_pod")
    if from_pod:
        dest = world.first_pod(from_pod["namespace"], selector(from_pod["selector"]))
        authority = names.authority(dest.ip, int(from_pod["port"]))
        return Target(authority, authority, pod.namespace, world_mod.SERVICE_ACCOUNT)
    name, port = _split_host(request["host"])
    service, _, namespace = name.partition(".")
    authority = stack.authority(namespace or pod.namespace, service, port)
    return Target(authority, request["host"], pod.namespace, world_mod.SERVICE_ACCOUNT)


def _headers(case: Case) -> tuple[list[tuple[str, str]], str | None]:
    """Headers to send, and a Host override (which changes only the authority)."""
    host = None
    out = []
    for name, value in (case["request"].get("headers") or {}).items():
        if name.lower() == "host":
            host = value
        else:
            out.append((name, value))
    return out, host


def send(client: hbone_client.SyncHboneClient, case: Case, where: Target) -> Observed:
    """Send the case's request once; transport failures become an Observed error."""
    headers, host = _headers(case)
    request = case["request"]
    try:
        if request["protocol"] == "grpc":
            result = client.grpc_unary(
                where.authority,
                GRPC_METHOD,
                echo_pb2.EchoRequest(message="").SerializeToString(),
                headers,
            )
            return _grpc_observed(result)
        response = client.request(
            where.authority,
            request.get("method") or "GET",
            request.get("path") or "/",
            headers,
            host=host or where.host,
        )
    except (errors.HboneError, OSError, TimeoutError, ValueError) as exc:
        return Observed(status=0, error=f"{type(exc).__name__}: {exc}")
    return _http_observed(response)


def _http_observed(response: hbone_client.Response) -> Observed:
    report = None
    if response.status == 200:
        try:
            report = echo.parse_echo(response.body)
        except ValueError as exc:
            return Observed(response.status, tuple(response.headers), error=str(exc))
    return Observed(response.status, tuple(response.headers), report)


def _grpc_observed(result: hbone_client.GrpcResult) -> Observed:
    if result.status != grpcwire.OK:
        return Observed(0, tuple(result.trailers), error=f"gRPC status {result.status}")
    text = echo_pb2.EchoResponse.FromString(result.message).message
    return Observed(200, tuple(result.trailers), echo.parse_echo(text))


# --- checks ------------------------------------------------------------------------------


def _joined(report: echo.EchoReport, name: str) -> str | None:
    values = report.headers.get(name.lower())
    return None if values is None else ",".join(values)


def _check_seen(seen: Mapping[str, Any], report: echo.EchoReport, skip: set[str]) -> list[str]:
    problems = []
    for name, want in (seen.get("headers") or {}).items():
        got = _joined(report, name)
        if got != want:
            problems.append(f"backend saw header {name}={got!r}, expected {want!r}")
    for name in seen.get("absent_headers") or []:
        if _joined(report, name) is not None:
            problems.append(f"backend saw header {name}={_joined(report, name)!r}, expected none")
    path = seen.get("path")
    got_path = urllib.parse.urlsplit(report.url).path
    if path is not None and "path" not in skip and got_path != path:
        problems.append(f"backend saw path {got_path!r}, expected {path!r}")
    return problems


def _check_response_headers(expect: Mapping[str, Any], seen: Observed) -> list[str]:
    problems = []
    for name, want in (expect.get("response_headers") or {}).items():
        got = seen.header_values(name)
        if got != [want]:
            problems.append(f"response header {name}={got}, expected [{want!r}]")
    for name in expect.get("absent_response_headers") or []:
        if seen.header_values(name):
            problems.append(f"response header {name}={seen.header_values(name)}, expected none")
    return problems


def expected_location(redirect: Mapping[str, Any], request_path: str) -> dict[str, str | None]:
    """Upstream's gateway comparator fills what a test leaves out of its redirect.

    The scheme defaults to the request's (http), the path to the request's path, a missing
    host is not checked (None), and a missing port means "absent or the scheme's default".
    """
    scheme = redirect.get("scheme") or "http"
    return {
        "scheme": scheme,
        "host": redirect.get("host"),
        "port": str(redirect["port"]) if redirect.get("port") else None,
        "path": redirect.get("path") or urllib.parse.urlsplit(request_path).path,
    }


def check_redirect(redirect: Mapping[str, Any], request_path: str, seen: Observed) -> list[str]:
    locations = seen.header_values("location")
    if len(locations) != 1:
        return [f"expected one Location header, got {locations}"]
    got = urllib.parse.urlsplit(locations[0])
    want = expected_location(redirect, request_path)
    problems = []
    if got.scheme != want["scheme"]:
        problems.append(f"redirect scheme {got.scheme!r}, expected {want['scheme']!r}")
    if want["host"] is not None and got.hostname != want["host"]:
        problems.append(f"redirect host {got.hostname!r}, expected {want['host']!r}")
    default_port = {"http": "80", "https": "443"}.get(str(want["scheme"]))
    got_port = str(got.port) if got.port is not None else None
    allowed = {want["port"]} if want["port"] else {None, default_port}
    if got_port not in allowed:
        problems.append(f"redirect port {got_port!r}, expected one of {sorted(map(str, allowed))}")
    if got.path != want["path"]:
        problems.append(f"redirect path {got.path!r}, expected {want['path']!r}")
    return [f"{p} (Location {locations[0]!r})" for p in problems]


def check_request(case: Case, seen: Observed, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every problem with ``seen`` against the case's ``expect`` ([] means it passed).

    ``skip`` names fields not to enforce for this case (``path`` for a known false
    expectation); host is never enforced, see docs/conformance.md.
    """
    expect = case["expect"]
    wanted = expect["status"] if isinstance(expect["status"], list) else [expect["status"]]
    if seen.status not in wanted:
        return [f"status {seen.status}, expected {wanted} ({seen.describe()})"]
    problems = []
    report = seen.report
    backend = expect.get("backend")
    if backend is not None and (report is None or not report.hostname.startswith(backend)):
        problems.append(f"answered by {report and report.hostname!r}, expected {backend}-*")
    namespace = expect.get("namespace")
    if namespace is not None and report is not None and report.namespace != namespace:
        problems.append(f"answered from namespace {report.namespace!r}, expected {namespace!r}")
    if expect.get("request_seen_by_backend"):
        if report is None:
            problems.append("no echo report, but the case checks what the backend saw")
        else:
            problems += _check_seen(expect["request_seen_by_backend"], report, set(skip))
    problems += _check_response_headers(expect, seen)
    if expect.get("redirect") is not None:
        problems += check_redirect(expect["redirect"], case["request"].get("path") or "/", seen)
    return problems


def backend_key(hostname: str) -> str:
    """``echo-v1-7c9d-x2k`` → ``echo-v1``: drop the two generated name parts."""
    parts = hostname.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else hostname


def check_weights(weighted: Mapping[str, Any], hostnames: Sequence[str | None]) -> list[str]:
    """Upstream's distribution check on one batch of responders (None: no echo answer)."""
    weights: Mapping[str, float] = weighted["weights"]
    total = len(hostnames)
    counts = collections.Counter(backend_key(h) if h else None for h in hostnames)
    problems = [
        f"{n} responses from {k!r}, not a weighted backend"
        for k, n in counts.items()
        if k not in weights
    ]
    expected_seen = {k for k, w in weights.items() if w > 0}
    if set(counts) != expected_seen:
        problems.append(
            f"backends seen {sorted(map(str, counts))}, expected {sorted(expected_seen)}"
        )
    for key, weight in sorted(weights.items()):
        share = counts.get(key, 0) / total
        if abs(share - weight) > weighted["tolerance"]:
            problems.append(
                f"{key}: {share:.3f} of {total}, expected {weight} ± {weighted['tolerance']}"
            )
    return problems


# --- running -----------------------------------------------------------------------------


def run_request(
    make_client: Callable[[], hbone_client.SyncHboneClient],
    case: Case,
    where: Target,
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """Repeat until 3 consecutive passes (at most MAX_ATTEMPTS); return the last problems."""
    streak, problems = 0, ["never sent"]
    with make_client() as client:
        for _attempt in range(MAX_ATTEMPTS):
            problems = check_request(case, send(client, case, where), skip)
            if problems:
                streak = 0
                time.sleep(RETRY_PAUSE)
                continue
            streak += 1
            if streak == CONSECUTIVE_PASSES:
                return []
    return problems


async def _one_hostname(
    client: hbone_client.HboneClient, case: Case, where: Target, gate: asyncio.Semaphore
) -> str | None:
    headers, host = _headers(case)
    request = case["request"]
    async with gate:
        try:
            if request["protocol"] == "grpc":
                observed = _grpc_observed(
                    await client.grpc_unary(
                        where.authority,
                        GRPC_METHOD,
                        echo_pb2.EchoRequest(message="").SerializeToString(),
                        headers,
                    )
                )
            else:
                observed = _http_observed(
                    await client.request(
                        where.authority,
                        request.get("method") or "GET",
                        request.get("path") or "/",
                        headers,
                        host=host or where.host,
                    )
                )
        except (errors.HboneError, OSError, TimeoutError, ValueError):
            return None
    return observed.report.hostname if observed.report else None


async def _batch(
    client: hbone_client.HboneClient, case: Case, where: Target, count: int
) -> list[str | None]:
    gate = asyncio.Semaphore(WEIGHTED_CONCURRENCY)
    try:
        return list(
            await asyncio.gather(*(_one_hostname(client, case, where, gate) for _ in range(count)))
        )
    finally:
        await client.aclose()


def run_weighted(
    make_client: Callable[[], hbone_client.HboneClient], case: Case, where: Target
) -> list[str]:
    """Batches of ``requests`` until one meets the weights (at most ``max_attempts``)."""
    weighted = case["weighted"]
    problems = ["never sent"]
    for _attempt in range(int(weighted["max_attempts"])):
        hostnames = asyncio.run(_batch(make_client(), case, where, int(weighted["requests"])))
        problems = check_weights(weighted, hostnames)
        if not problems:
            return []
    return problems
