"""What the library codecs cost against the hand-written ones they replaced.

Three parts of the project were hand-written and are now libraries: HTTP/1.1 inside HBONE
tunnels and on the echo server (h11, ``waypoint/local/hbone/http1.py``), the echo gRPC messages
(generated protobuf, ``waypoint/local/hbone/echo_pb2.py``) and the small HTTP server under the
probes, metrics and the OPA test double (aiohttp.web, ``extauthz/httpserver.py``). Each
measurement runs in a child process against one source tree; with ``--against DIR`` (a tree
of another commit: ``git archive <commit> waypoint extauthz | tar -x -C DIR``) the
children alternate between that tree and this one, round by round, so machine-load drift
hits both alike. The measures that do not differ between the two trees show the noise.

Per message (in-process, no sockets; best of 5 repeats):

- ``echo-pb encode``/``decode``: an EchoRequest out, an echo-text EchoResponse in;
- ``http1 client``: one keep-alive GET exchange, the response fed from memory;
- ``http1 server``: one keep-alive request read and answered, the request fed from memory.

End to end on loopback (sequential; wall and this process's CPU per request, both ends
being in this process):

- ``hbone http1``: ``HboneClient.request`` (a new CONNECT tunnel each) -> terminator -> echo;
- ``hbone keep-alive``: GETs on one kept tunnel, as the load test's users send them;
- ``hbone grpc``: ``grpc_unary`` Echo through a tunnel to the echo's grpcio server;
- ``opa double``: aiohttp client POSTs to the OPA test double's Data API (the REST path's
  per-check query, served by ``extauthz/httpserver.py``).

    python -m loadtests.codec_bench                           # this tree, 3 rounds
    python -m loadtests.codec_bench --against /tmp/before      # interleaved with another tree
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp


def _module(*candidates: str) -> Any:
    """The first of ``candidates`` that imports.

    The bench measures other source trees too (``--against``), from before and after the dev
    tools moved into ``waypoint.local`` and ``extauthz.testing``; each name is tried where
    that tree keeps it.
    """
    for name in candidates:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"none of {candidates} imports")


opa_server = _module("extauthz.testing.opa_server", "extauthz.opa_testserver")
echo = _module("waypoint.local.echo", "waypoint.echo")
dev_ca = _module("waypoint.local.ca", "waypoint.pki")
client = _module("waypoint.local.hbone.client", "waypoint.hbone.client")
grpcwire = _module("waypoint.local.hbone.grpcwire", "waypoint.hbone.grpcwire")
http1 = _module("waypoint.local.hbone.http1", "waypoint.hbone.http1")
streams = _module("waypoint.local.hbone.streams", "waypoint.hbone.streams")
terminator = _module("waypoint.local.hbone.terminator", "waypoint.hbone.terminator")

REPO = pathlib.Path(__file__).resolve().parent.parent
POLICY = REPO / "loadtests" / "policy.rego"
ECHO_METHOD = "/proto.EchoTestService/Echo"
HEADERS = [("User-Agent", "codec-bench"), ("Accept", "*/*"), ("X-Version", "v2")]
OPA_INPUT = json.dumps(
    {
        "input": {
            "attributes": {"request": {"http": {"method": "GET", "path": "/public/catalog"}}},
            "parsed_path": ["public", "catalog"],
        }
    }
).encode()


class _Canned:
    """A :class:`~streams.ByteStream` that answers each read with the next canned chunk."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self._chunk = chunk
        self._left = count

    async def read(self, max_bytes: int = streams.READ_SIZE) -> bytes:
        if not self._left:
            return b""
        self._left -= 1
        return self._chunk

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def write_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _echo_codec() -> tuple[Callable[[str], bytes], Callable[[bytes], str]]:
    """Encode a request, decode a response: generated messages, or an older tree's codec."""
    try:
        echo_pb2 = _module("waypoint.local.hbone.echo_pb2", "waypoint.hbone.echo_pb2")
    except ImportError:
        old: Any = grpcwire  # the hand-made codec of older trees
        return old.echo_message, lambda data: str(old.decode_string_field(data, 1))

    def encode(text: str) -> bytes:
        data: bytes = echo_pb2.EchoRequest(message=text).SerializeToString()
        return data

    def decode(data: bytes) -> str:
        text: str = echo_pb2.EchoResponse.FromString(data).message
        return text

    return encode, decode


def _exchanges(stream: Any) -> Callable[[], Awaitable[Any]]:
    """One GET per call on a kept stream: the hand-written codec, or h11's tree (commit 132974c)."""
    api: Any = http1
    if hasattr(api, "ClientConnection"):  # the h11 adapter
        conn = api.ClientConnection(stream)
        return lambda: conn.exchange("GET", "/public/catalog", HEADERS, b"", "echo:80")
    reader = streams.BufferedReader(stream)

    async def exchange() -> Any:
        stream.write(api.encode_request("GET", "/public/catalog", HEADERS, b"", "echo:80"))
        await stream.drain()
        response: Any = await api.read_response(reader, "GET")
        return response

    return exchange


def _server(stream: Any) -> Callable[[bytes], Awaitable[bool]]:
    """Read one request and answer it with ``body``, in whichever API this tree has."""
    api: Any = http1
    if hasattr(api, "ServerConnection"):  # the h11 adapter
        conn = api.ServerConnection(stream)

        async def serve_h11(body: bytes) -> bool:
            assert await conn.read_request() is not None
            return bool(await conn.respond(200, [("Content-Type", "text/plain")], body))

        return serve_h11
    reader = streams.BufferedReader(stream)

    async def serve(body: bytes) -> bool:
        request = await api.read_request(reader, send_continue=stream)
        stream.write(api.encode_response(200, [("Content-Type", "text/plain")], body))
        await stream.drain()
        return bool(request.keep_alive)

    return serve


def _best_us(run: Callable[[int], None], count: int) -> float:
    return min(timeit.repeat(lambda: run(count), number=1, repeat=5)) / count * 1e6


def micro(count: int) -> dict[str, float]:
    """Per-message µs, best of 5."""
    encode, decode = _echo_codec()
    # A request and a response have the same wire shape (string message = 1).
    reply = encode(echo.format_text([("Hostname", "echo-v1-abc"), ("URL", ECHO_METHOD)]) * 6)
    body = b"ServiceVersion=v1\nHostname=echo-v1-abc\n" * 8
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    request = b"GET /public/catalog HTTP/1.1\r\nHost: echo:80\r\n" + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in HEADERS
    )
    request += b"\r\n"

    def clients(n: int) -> None:
        exchange = _exchanges(_Canned(response, n))

        async def go() -> None:
            for _ in range(n):
                await exchange()

        asyncio.run(go())

    def servers(n: int) -> None:
        serve = _server(_Canned(request, n))

        async def go() -> None:
            for _ in range(n):
                await serve(body)

        asyncio.run(go())

    def encodes(n: int) -> None:
        for _ in range(n):
            encode("hello")

    def decodes(n: int) -> None:
        for _ in range(n):
            decode(reply)

    return {
        "echo-pb encode": _best_us(encodes, count),
        "echo-pb decode": _best_us(decodes, count),
        "http1 client": _best_us(clients, count // 4),
        "http1 server": _best_us(servers, count // 4),
    }


async def _per_request(count: int, call: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(wall µs, CPU µs) per call, after a warm-up."""
    for _ in range(max(10, count // 20)):
        await call()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        await call()
    return (
        (time.perf_counter() - wall) / count * 1e6,
        (time.process_time() - cpu) / count * 1e6,
    )


async def end_to_end(count: int) -> dict[str, float]:
    """Per-request wall and CPU µs on loopback."""
    ca = dev_ca.CertificateAuthority.create("cluster.local")
    backend = echo.EchoServer("echo-v1-abc", "apps", http_ports=(0,), grpc_ports=(0,))
    term = terminator.HboneTerminator(
        ca.issue_workload("istio-system", "ztunnel").ssl_context(server=True),
        allowed_trust_domain="cluster.local",
    )
    ctx = ca.issue_workload("apps", "waypoint").ssl_context(server=False)
    encode, decode = _echo_codec()
    out: dict[str, float] = {}
    async with backend, term, client.HboneClient(term.address, ctx) as hbone:
        http = f"127.0.0.1:{backend.http_ports[0]}"
        grpc_at = f"127.0.0.1:{backend.grpc_ports[0]}"

        async def fresh_tunnel() -> None:
            assert (await hbone.request(http, "GET", "/public/catalog", HEADERS)).status == 200

        tunnel = await hbone.open_tunnel(http)
        kept = _exchanges(tunnel)

        async def keep_alive() -> None:
            assert (await kept()).status == 200

        async def grpc_call() -> None:
            result = await hbone.grpc_unary(grpc_at, ECHO_METHOD, encode("hello"))
            assert result.status == grpcwire.OK
            assert decode(result.message)

        for name, call in (
            ("hbone http1", fresh_tunnel),
            ("hbone keep-alive", keep_alive),
            ("hbone grpc", grpc_call),
        ):
            out[f"{name} wall"], out[f"{name} cpu"] = await _per_request(count, call)
        tunnel.reset()
    out.update(await _opa(count * 2))
    return out


async def _opa(count: int) -> dict[str, float]:
    server = opa_server.OpaTestServer([POLICY])
    port = await server.start()
    url = f"http://127.0.0.1:{port}/v1/data/envoy/authz/allow"
    try:
        async with aiohttp.ClientSession() as session:

            async def query() -> None:
                async with session.post(url, data=OPA_INPUT) as reply:
                    assert (await reply.json()) == {"result": True}

            wall, cpu = await _per_request(count, query)
    finally:
        await server.close()
        server.release()
    return {"opa double wall": wall, "opa double cpu": cpu}


def child(count: int) -> dict[str, float]:
    return micro(count * 20) | asyncio.run(end_to_end(count))


def _run_child(tree: pathlib.Path | None, count: int) -> dict[str, float]:
    source = (tree or REPO).resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(source), str(REPO)]))
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.codec_bench", "--child", "--count", str(count)],
        capture_output=True,
        text=True,
        env=env,
        cwd=source,  # -m puts the working directory first on sys.path
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child for {source} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if report["source"] != str(source):
        raise RuntimeError(f"child ran {report['source']}, not {source}")
    result: dict[str, float] = report["results"]
    return result


def markdown(rounds: dict[str, list[dict[str, float]]]) -> str:
    names = list(rounds["this"][0])
    sides = [s for s in ("that", "this") if rounds.get(s)]
    lines = [
        "| measure (µs) | "
        + " | ".join(f"{s} (median, range)" for s in sides)
        + " |"
        + (" this/that |" if len(sides) == 2 else ""),
        "|---" * (len(sides) + 1 + (len(sides) == 2)) + "|",
    ]
    for name in names:
        cells, medians = [], []
        for side in sides:
            values = [r[name] for r in rounds[side]]
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:.1f} ({min(values):.1f}–{max(values):.1f})")
        ratio = [f"{medians[1] / medians[0]:.2f}×"] if len(sides) == 2 else []
        lines.append("| " + " | ".join([name, *cells, *ratio]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.codec_bench", description=__doc__)
    parser.add_argument("--against", type=pathlib.Path, help="a source tree of another commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=1000, help="end-to-end requests per measure")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        source = str(pathlib.Path(http1.__file__).resolve().parents[2])
        print(json.dumps({"source": source, "results": child(args.count)}))
        return 0
    started = datetime.datetime.now(datetime.UTC).strftime("%H:%M UTC")
    load = os.getloadavg()[0]
    rounds: dict[str, list[dict[str, float]]] = {"that": [], "this": []}
    for number in range(args.rounds):
        order = [("that", args.against), ("this", None)] if args.against else [("this", None)]
        for side, tree in order if number % 2 == 0 else order[::-1]:
            rounds[side].append(_run_child(tree, args.count))
            print(f"round {number + 1} {side} done", file=sys.stderr, flush=True)
    print(f"Started {started}, load average {load:.2f} at the start, {args.rounds} rounds.\n")
    print(markdown(rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
