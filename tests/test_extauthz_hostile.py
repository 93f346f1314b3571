"""Hostile HTTP/2 peers against extauthz's codec and its gRPC server: each cheap attack
stays cheap, ends in the right GOAWAY or RST_STREAM, and is counted.

Most cases drive the sans-IO codec (``extauthz/http2.py``) with hand-built frames and a
fake clock, so floods need no sleeping; the rest go over real sockets to the ``h2``
transport (``extauthz/h2grpc.py``) and check what a client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import pathlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import hpack
import pytest
from google.protobuf import wrappers_pb2  # type: ignore[import-untyped,unused-ignore]

from extauthz import config, h2grpc, http2, jwt, listen, metrics, peers, policy, service
from tests.extauthz import support
from tests.test_extauthz_http2 import REQUEST, Recorder, frames, headers_frame, raw, resets

Text = wrappers_pb2.StringValue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def connection(**kwargs: Any) -> tuple[http2.Connection, Recorder, FakeClock]:
    clock = FakeClock()
    recorder = Recorder()
    conn = http2.Connection(recorder, clock=clock, **kwargs)
    conn.start()
    conn.receive(http2.PREFACE + raw(http2.SETTINGS, 0, 0))
    conn.out.clear()
    recorder.events.clear()
    return conn, recorder, clock


def goaway_code(wire: bytes) -> int | None:
    for kind, _flags, _stream, payload in frames(wire):
        if kind == http2.GOAWAY:
            return int(struct.unpack(">LL", payload[:8])[1])
    return None


def settings(*entries: tuple[int, int]) -> bytes:
    return raw(http2.SETTINGS, 0, 0, b"".join(struct.pack(">HL", i, v) for i, v in entries))


# -- SETTINGS ---------------------------------------------------------------------------


def test_a_settings_frame_of_more_than_32_entries_is_enhance_your_calm() -> None:
    conn, _, _ = connection()
    conn.receive(settings(*[(http2.INITIAL_WINDOW_SIZE, 70_000)] * 32))  # the cap itself is fine
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(settings(*[(http2.INITIAL_WINDOW_SIZE, 70_000)] * 33))
    assert info.value.code == http2.ENHANCE_YOUR_CALM


def test_initial_window_changes_walk_the_streams_once_per_frame() -> None:
    conn, _, _ = connection(budget=http2.Budget(settings_entries=2730))
    for stream_id in range(1, 2001, 2):
        conn.receive(headers_frame(stream_id, REQUEST, flags=0x4))
    walked = 0
    original = conn._initial_window

    def counting(value: int) -> None:
        nonlocal walked
        walked += 1
        original(value)

    conn._initial_window = counting  # type: ignore[method-assign]
    # The attack from the field: a full frame of alternating window sizes.
    entries = [(http2.INITIAL_WINDOW_SIZE, 1 + i % 2) for i in range(2730)]
    conn.receive(settings(*entries))
    assert walked == 1
    assert conn.window(1) == 2  # the last entry (1 + 2729 % 2) is what counts
    conn.receive(settings((http2.INITIAL_WINDOW_SIZE, 100_000)))
    assert conn.window(1) == 65_535  # bounded by the connection window; the stream has 100k


def test_only_the_last_initial_window_size_counts() -> None:
    conn, _, _ = connection()
    conn.receive(headers_frame(1, REQUEST, flags=0x4))
    conn.receive(settings((http2.INITIAL_WINDOW_SIZE, 10), (http2.INITIAL_WINDOW_SIZE, 20)))
    assert conn.window(1) == 20


# -- control-frame floods ----------------------------------------------------------------


FLOODS = {
    "SETTINGS": raw(http2.SETTINGS, 0, 0),
    "SETTINGS ACK": raw(http2.SETTINGS, http2.ACK, 0),
    "PING": raw(http2.PING, 0, 0, b"12345678"),
    "PING ACK": raw(http2.PING, http2.ACK, 0, b"12345678"),
    "PRIORITY": raw(http2.PRIORITY, 0, 1, b"\0\0\0\0\x10"),
    "unknown type": raw(0x42, 0, 0, b"x"),
}


@pytest.mark.parametrize("name", sorted(FLOODS))
def test_a_control_frame_flood_ends_in_enhance_your_calm(name: str) -> None:
    budget = http2.Budget(control_rate=100, control_burst=50)
    conn, _, clock = connection(budget=budget)
    frame = FLOODS[name]
    conn.receive(frame * 50)  # the burst is allowed
    clock.now += 0.1  # and refills at the rate: 10 more
    conn.receive(frame * 10)
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(frame)
    assert info.value.code == http2.ENHANCE_YOUR_CALM
    assert "too many" in str(info.value)


def test_a_steady_trickle_of_pings_is_never_cut_off() -> None:
    conn, _, clock = connection(budget=http2.Budget(control_rate=10, control_burst=10))
    for _ in range(1000):  # ten minutes of one PING every 0.5 s, say a keepalive
        conn.receive(FLOODS["PING"])
        clock.now += 0.5


def test_empty_continuation_frames_draw_on_the_budget() -> None:
    conn, _, _ = connection(budget=http2.Budget(control_rate=1, control_burst=20))
    block = hpack.Encoder().encode(REQUEST)
    conn.receive(raw(http2.HEADERS, http2.END_STREAM, 1, block))
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(raw(http2.CONTINUATION, 0, 1) * 21)
    assert info.value.code == http2.ENHANCE_YOUR_CALM


def test_empty_data_frames_spread_out_still_draw_on_the_budget() -> None:
    conn, _, _ = connection(budget=http2.Budget(control_rate=1, control_burst=20))
    conn.receive(headers_frame(1, REQUEST, flags=0x4))
    # Never 16 in a row (the consecutive guard), but still nothing but cost.
    one_round = raw(http2.DATA, 0, 1) * 10 + raw(http2.DATA, 0, 1, b"x")
    conn.receive(one_round * 2)
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(one_round)
    assert info.value.code == http2.ENHANCE_YOUR_CALM


# -- rapid reset --------------------------------------------------------------------------


def test_rapid_reset_is_cut_off_past_its_budget() -> None:
    conn, recorder, clock = connection(budget=http2.Budget(reset_rate=10, reset_burst=100))
    wire = b""
    for stream_id in range(1, 201, 2):
        wire += headers_frame(stream_id, REQUEST, flags=0x4)
        wire += raw(http2.RST_STREAM, 0, stream_id, struct.pack(">L", http2.CANCEL))
    conn.receive(wire)  # 100 resets: the burst
    assert sum(1 for e in recorder.events if e[0] == "reset") == 100
    clock.now += 1.0  # ten more per second
    wire = b""
    for stream_id in range(201, 223, 2):
        wire += headers_frame(stream_id, REQUEST, flags=0x4)
        wire += raw(http2.RST_STREAM, 0, stream_id, struct.pack(">L", http2.CANCEL))
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(wire)  # the eleventh is one too many
    assert info.value.code == http2.ENHANCE_YOUR_CALM


def test_resets_after_the_answer_count_too() -> None:
    conn, _, _ = connection(budget=http2.Budget(reset_rate=1, reset_burst=5))
    for stream_id in range(1, 13, 2):
        conn.receive(headers_frame(stream_id, REQUEST, flags=0x5))
        conn.send_headers(stream_id, http2.encode_headers([(b":status", b"200")]), True)
        if stream_id < 11:
            conn.receive(raw(http2.RST_STREAM, 0, stream_id, struct.pack(">L", http2.CANCEL)))
    with pytest.raises(http2.ProtocolError):
        conn.receive(raw(http2.RST_STREAM, 0, 11, struct.pack(">L", http2.CANCEL)))


# -- malformed input is a stream error, never an escaping exception --------------------------


def test_a_5000_digit_content_length_is_a_stream_protocol_error() -> None:
    conn, recorder, _ = connection()
    conn.receive(headers_frame(1, [*REQUEST, (b"content-length", b"9" * 5000)], flags=0x4))
    assert resets(conn) == [(1, http2.PROTOCOL_ERROR)]
    assert recorder.events == [("reset", 1)]
    # The connection is fine: the next request goes through.
    conn.receive(headers_frame(3, [*REQUEST, (b"content-length", b"0")]))
    assert recorder.events[-1][0:2] == ("headers", 3)


def test_garbage_hpack_is_a_compression_error() -> None:
    conn, _, _ = connection()
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(raw(http2.HEADERS, 5, 1, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"))
    assert info.value.code == http2.COMPRESSION_ERROR


# -- over real sockets ----------------------------------------------------------------------


async def echo(request: Any) -> Any:
    return Text(value=request.value)


class _Unserializable:
    def SerializeToString(self) -> bytes:  # protobuf's name
        raise RuntimeError("a bug in the answer")


async def late_bug(_request: Any) -> Any:
    await asyncio.sleep(0.01)  # the answer comes from the call's done callback
    return _Unserializable()


RAN: list[str] = []  # what the Busy method was called with, in order


async def busy(request: Any) -> Any:
    RAN.append(request.value)
    time.sleep(0.002)  # a Check's worth of CPU, and more
    return request


@contextlib.asynccontextmanager
async def serving(**limits: Any) -> AsyncIterator[tuple[h2grpc.Server, int]]:
    server = h2grpc.Server(
        [
            h2grpc.Method("/t.T/Echo", Text.FromString, unary=echo),
            h2grpc.Method("/t.T/LateBug", Text.FromString, unary=late_bug),
            h2grpc.Method("/t.T/Busy", Text.FromString, unary=busy),
        ],
        limits=config.Limits(**limits),
    )
    port = await server.add_address("127.0.0.1:0")
    try:
        yield server, port
    finally:
        await server.stop(0)


def read_all(sock: socket.socket, seconds: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(seconds)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def client_wire(*frames_: bytes) -> bytes:
    return http2.PREFACE + raw(http2.SETTINGS, 0, 0) + b"".join(frames_)


@pytest.mark.asyncio
async def test_a_settings_flood_over_a_socket_gets_goaway_and_is_counted() -> None:
    async with serving(control_frame_burst=100) as (server, port):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(client_wire(raw(http2.SETTINGS, 0, 0, struct.pack(">HL", 4, 70_000)) * 500))
        got = await asyncio.to_thread(read_all, sock)
        assert goaway_code(got) == http2.ENHANCE_YOUR_CALM
        assert server.events["goaway_enhance_your_calm"] == 1
        sock.close()


@pytest.mark.asyncio
async def test_connections_over_the_cap_are_refused() -> None:
    async with serving(max_connections=3) as (server, port):
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        for sock in held:
            sock.sendall(client_wire())
        await asyncio.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port))
        got = await asyncio.to_thread(read_all, extra)
        assert goaway_code(got) == http2.ENHANCE_YOUR_CALM
        assert server.events["connection_refused"] == 1
        assert len(server.connections) == 3
        for sock in held:
            sock.close()


@pytest.mark.asyncio
async def test_a_silent_or_half_handshake_connection_times_out() -> None:
    async with serving(handshake_timeout_seconds=0.3) as (server, port):
        silent = socket.create_connection(("127.0.0.1", port))
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(http2.PREFACE[:10])
        started = time.monotonic()
        for sock in (silent, half):
            got = await asyncio.to_thread(read_all, sock)
            assert goaway_code(got) == http2.PROTOCOL_ERROR
        assert time.monotonic() - started < 5
        assert server.events["handshake_timeout"] == 2


@pytest.mark.asyncio
async def test_an_idle_connection_is_closed_and_a_busy_one_is_not() -> None:
    async with serving(idle_timeout_seconds=1) as (server, port):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary("/t.T/Echo", Text.SerializeToString, Text.FromString)
        for _ in range(6):  # 1.5 s of a call every 0.25 s: never idle
            assert (await call(Text(value="a"), timeout=5)).value == "a"
            await asyncio.sleep(0.25)
        assert server.events["idle_closed"] == 0
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(client_wire())
        got = await asyncio.to_thread(read_all, idle)
        assert goaway_code(got) == http2.NO_ERROR
        assert server.events["idle_closed"] >= 1
        await channel.close(None)


@pytest.mark.asyncio
async def test_oversized_metadata_fails_only_its_call() -> None:
    async with serving() as (server, port):
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_metadata_size", 1024 * 1024)]
        )
        call = channel.unary_unary("/t.T/Echo", Text.SerializeToString, Text.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(Text(value="big"), timeout=5, metadata=[("x-big", "b" * 100_000)])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.events["metadata_too_large"] == 1
        # The same connection carries on.
        assert (await call(Text(value="small"), timeout=5)).value == "small"
        assert server.events["goaway_enhance_your_calm"] == 0
        await channel.close(None)


@pytest.mark.asyncio
async def test_a_bug_inside_a_connection_ends_in_goaway_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: Any) -> None:
        raise KeyError("a bug")

    async with serving() as (server, port):
        monkeypatch.setattr(h2grpc._Connection, "on_headers", broken)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(client_wire(headers_frame(1, REQUEST)))
        got = await asyncio.to_thread(read_all, sock)
        assert goaway_code(got) == http2.INTERNAL_ERROR
        assert server.events["goaway_internal_error"] == 1


def _call(stream_id: int, encoder: hpack.Encoder, text: str) -> bytes:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/t.T/Echo"),
        (b":authority", b"x"),
        (b"content-type", b"application/grpc"),
    ]
    body = bytes(h2grpc.frame(Text(value=text)))
    return raw(http2.HEADERS, http2.END_HEADERS, stream_id, encoder.encode(headers)) + raw(
        http2.DATA, http2.END_STREAM, stream_id, body
    )


def _statuses(wire: bytes) -> dict[int, bytes]:
    decoder = hpack.Decoder()
    found: dict[int, bytes] = {}
    for kind, _flags, stream_id, payload in frames(wire):
        if kind == http2.HEADERS:
            for name, value in decoder.decode(payload, raw=True):
                if name == b"grpc-status":
                    found[stream_id] = value
    return found


@pytest.mark.asyncio
async def test_a_big_read_is_served_over_several_turns_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving() as (_server, port):
        encoder = hpack.Encoder()
        calls = b"".join(_call(s, encoder, "x" * 200) for s in range(1, 801, 2))
        assert len(calls) > 5 * 16 * 1024
        turns = 0
        original = h2grpc._Connection._next_turn

        def counting(self: h2grpc._Connection) -> None:
            nonlocal turns
            turns += 1
            original(self)

        monkeypatch.setattr(h2grpc._Connection, "_next_turn", counting)
        sock = socket.create_connection(("127.0.0.1", port))
        grant = raw(http2.WINDOW_UPDATE, 0, 0, struct.pack(">L", 1 << 30))  # room for answers
        sock.sendall(client_wire(grant, calls, raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 0, 0))))
        got = await asyncio.to_thread(read_all, sock)
        assert _statuses(got) == dict.fromkeys(range(1, 801, 2), b"0")
        assert turns >= 2  # 80 KiB of calls were served over several turns


@pytest.mark.asyncio
async def test_past_the_unfinished_share_a_call_that_completes_still_goes_through() -> None:
    # Unfinished calls may hold 7/8 of the 4,600-byte cap (4,025 bytes); the last eighth is
    # room for calls that complete as they arrive, and is never refused to them.
    async with serving(max_buffered_request_bytes=4600) as (server, port):
        encoder = hpack.Encoder()
        sock = socket.create_connection(("127.0.0.1", port))
        hog = raw(http2.HEADERS, http2.END_HEADERS, 1, encoder.encode(REQUEST_ECHO))
        hog += raw(http2.DATA, 0, 1, b"\0\0\0\x10\0" + b"h" * 3990)  # unfinished, 3,995 bytes
        sock.sendall(client_wire(hog, _call(3, encoder, "y" * 100)))
        sock.sendall(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 3, 0)))
        await asyncio.sleep(0.3)
        assert server.held == 3995
        sock.sendall(raw(http2.RST_STREAM, 0, 1, struct.pack(">L", http2.CANCEL)))
        got = await asyncio.to_thread(read_all, sock)
        assert _statuses(got) == {3: b"0"}


REQUEST_ECHO = [(n, b"/t.T/Echo" if n == b":path" else v) for n, v in REQUEST]


def test_bytes_that_are_not_a_check_request_get_the_400_deny(tmp_path: pathlib.Path) -> None:
    settings = support.settings(tmp_path)
    authn = jwt.Authenticator(settings.jwt)
    authn.load_static()
    stats = metrics.Metrics()
    checker = service.Checker(
        settings, authn, policy.make_engine(settings.policy), stats, service.DecisionLog("off")
    )
    answer = checker.unparsable("cannot parse the request: DecodeError")
    assert answer.denied_response.status.code == 400
    assert stats.by_outcome["malformed"]._value.get() == 1


# -- per-peer budgets and the penalty box ------------------------------------------------


def test_abuse_is_named_on_the_connection_error() -> None:
    conn, _, _ = connection(budget=http2.Budget(control_burst=5, reset_burst=1))
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(FLOODS["PING"] * 6)
    assert info.value.abuse == http2.CONTROL_ABUSE
    conn, _, _ = connection(budget=http2.Budget(reset_burst=1))
    wire = b""
    for stream_id in (1, 3):
        wire += headers_frame(stream_id, REQUEST, flags=0x4)
        wire += raw(http2.RST_STREAM, 0, stream_id, struct.pack(">L", http2.CANCEL))
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(wire)
    assert info.value.abuse == http2.RESET_ABUSE
    conn, _, _ = connection()
    with pytest.raises(http2.ProtocolError) as info:
        conn.receive(raw(http2.PUSH_PROMISE, 0, 1, b"\0\0\0\2"))
    assert info.value.abuse == ""  # a protocol error, not abuse


def test_connections_given_the_same_buckets_share_one_budget() -> None:
    clock = FakeClock()
    budget = http2.Budget(control_rate=1, control_burst=10)
    shared = http2.Buckets.fresh(budget, clock)
    first, second = (
        http2.Connection(Recorder(), budget=budget, clock=clock, buckets=shared) for _ in range(2)
    )
    for conn in (first, second):
        conn.receive(http2.PREFACE + raw(http2.SETTINGS, 0, 0))
    first.receive(FLOODS["PING"] * 6)
    second.receive(FLOODS["PING"] * 4)
    with pytest.raises(http2.ProtocolError):
        second.receive(FLOODS["PING"])  # the eleventh of the pair


@pytest.mark.parametrize(
    ("peername", "key"),
    [
        (("10.1.2.3", 5000), "10.1.2.3"),
        (("2001:db8:1:2:3:4:5:6", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::1", 5001, 0, 0), "2001:db8:1:2::/64"),
        (("::ffff:10.1.2.3", 5000, 0, 0), "10.1.2.3"),
        (("fe80::1%eth0", 5000, 0, 2), "fe80::/64"),
        ("", peers.UNIX_PEER),
        (None, peers.UNIX_PEER),
    ],
)
def test_a_peer_is_its_address_not_its_port(peername: Any, key: str) -> None:
    assert peers.peer_key(peername) == key


def table(size: int = 16, penalty: float = 1.0, penalty_max: float = 30.0) -> peers.Peers:
    return peers.Peers(http2.Budget(), size, penalty, penalty_max, FakeClock())


def test_the_peer_table_is_bounded_and_forgets_the_least_recently_seen() -> None:
    peer_table = table(size=3)
    first = peer_table.get("10.0.0.1")
    for n in range(2, 6):
        peer_table.get(f"10.0.0.{n}")
    assert len(peer_table) == 3
    assert peer_table.get("10.0.0.1") is not first  # evicted: a fresh entry
    recent = peer_table.get("10.0.0.9")
    peer_table.get("10.0.0.10")
    peer_table.get("10.0.0.9")  # seen again: the next eviction takes another
    peer_table.get("10.0.0.11")
    assert peer_table.get("10.0.0.9") is recent


def test_control_abuse_penalties_double_up_to_the_maximum_then_decay() -> None:
    peer_table = table(penalty=1.0, penalty_max=30.0)
    clock = peer_table._clock
    assert isinstance(clock, FakeClock)
    seen = []
    for _ in range(7):
        seconds = peer_table.penalize("10.0.0.2", http2.CONTROL_ABUSE)
        seen.append(seconds)
        assert peer_table.penalized(peer_table.get("10.0.0.2"))
        clock.now += seconds - 0.01
        assert peer_table.penalized(peer_table.get("10.0.0.2"))
        clock.now += 0.02  # expired: it may connect, and abuses again at once
        assert not peer_table.penalized(peer_table.get("10.0.0.2"))
    assert seen == [1, 2, 4, 8, 16, 30, 30]
    clock.now += 60  # two maximum periods of good behaviour forgive two doublings
    assert peer_table.penalize("10.0.0.2", http2.CONTROL_ABUSE) == 16
    assert not peer_table.penalized(peer_table.get("10.0.0.3"))  # another peer is not


def test_reset_abuse_gets_only_the_short_penalty() -> None:
    peer_table = table(penalty=1.0, penalty_max=30.0)
    clock = peer_table._clock
    assert isinstance(clock, FakeClock)
    for _ in range(5):
        assert peer_table.penalize("127.0.0.1", http2.RESET_ABUSE) == 1.0
        clock.now += 1.5
    # Resets never build up strikes: a later control flood starts from the first penalty.
    assert peer_table.penalize("127.0.0.1", http2.CONTROL_ABUSE) == 1.0


def test_a_penalty_of_zero_turns_the_box_off() -> None:
    peer_table = table(penalty=0)
    assert peer_table.penalize("10.0.0.2", http2.CONTROL_ABUSE) == 0
    assert not peer_table.penalized(peer_table.get("10.0.0.2"))


def test_penalty_limits_are_validated(tmp_path: pathlib.Path) -> None:
    def limits(**given: Any) -> config.Limits:
        doc = {**support.base_config(tmp_path), "limits": given}
        return config.from_mapping(doc, tmp_path).limits

    assert (limits().peer_table_size, limits().peer_penalty_seconds) == (4096, 1.0)
    assert limits(peer_penalty_seconds=0).peer_penalty_seconds == 0  # the box off
    with pytest.raises(config.ConfigError, match=r"limits\.peer_penalty_max_seconds: must be >="):
        limits(peer_penalty_seconds=5, peer_penalty_max_seconds=1)
    with pytest.raises(config.ConfigError, match=r"limits\.peer_table_size: must be an integer"):
        limits(peer_table_size=-1)
    assert limits().max_connections_per_peer == 256
    assert limits(max_connections_per_peer=0).max_connections_per_peer == 0  # no share cap
    with pytest.raises(config.ConfigError, match=r"limits\.max_connections_per_peer"):
        limits(max_connections_per_peer=-1)


ATTACKER = "127.0.0.2"  # Linux routes all of 127/8 to loopback: a second peer


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), source_address=(source, 0))


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server may already have refused to read."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def ping_acks(wire: bytes) -> int:
    return sum(1 for k, f, _s, _p in frames(wire) if k == http2.PING and f & http2.ACK)


async def echo_call(port: int, text: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/t.T/Echo", Text.SerializeToString, Text.FromString)
        return str((await call(Text(value=text), timeout=5)).value)


def one_call(port: int, source: str) -> dict[int, bytes]:
    """One Echo call on a raw connection from ``source``; the statuses it got."""
    sock = connect(port, source)
    goaway = raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 1, 0))
    send_quietly(sock, client_wire(_call(1, hpack.Encoder(), "again"), goaway))
    got = read_all(sock)
    sock.close()
    return _statuses(got)


@pytest.mark.asyncio
async def test_a_reconnecting_flooder_is_penalised_while_another_peer_is_served() -> None:
    async with serving(control_frame_burst=50, peer_penalty_seconds=1.0) as (server, port):
        bystander, legit = connect(port, ATTACKER), connect(port)
        for sock in (bystander, legit):
            sock.sendall(client_wire())
        await asyncio.sleep(0.1)
        flooder = connect(port, ATTACKER)
        send_quietly(flooder, client_wire(FLOODS["PING"] * 200))
        assert goaway_code(await asyncio.to_thread(read_all, flooder)) == http2.ENHANCE_YOUR_CALM
        cut_at = time.monotonic()
        assert server.events["peer_penalty_started"] == 1
        # The flooder's other connection is closed with it; the other peer's is not.
        assert goaway_code(await asyncio.to_thread(read_all, bystander)) == http2.ENHANCE_YOUR_CALM
        assert server.events["peer_penalty_closed"] == 1
        legit.sendall(_call(1, hpack.Encoder(), "same connection"))
        legit.sendall(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 1, 0)))
        assert _statuses(await asyncio.to_thread(read_all, legit)) == {1: b"0"}
        # Its reconnects are closed at accept: not even our SETTINGS comes back.
        for _ in range(3):
            again = connect(port, ATTACKER)
            send_quietly(again, client_wire(FLOODS["PING"]))
            assert await asyncio.to_thread(read_all, again) == b""
            again.close()
        assert server.events["peer_penalized"] == 3
        # The well-behaved peer at 127.0.0.1 is served throughout, on new connections too.
        assert await echo_call(port, "legit") == "legit"
        assert time.monotonic() - cut_at < 1.0, "the checks above ran past the penalty"
        # Once the penalty is over, the attacker's address is served again.
        await asyncio.sleep(1.0 - (time.monotonic() - cut_at) + 0.1)
        assert await asyncio.to_thread(one_call, port, ATTACKER) == {1: b"0"}
        assert server.events["peer_penalized"] == 3
        for sock in (flooder, bystander, legit):
            sock.close()


@pytest.mark.asyncio
async def test_a_peer_s_connections_share_its_control_budget() -> None:
    async with serving(control_frame_burst=50) as (server, port):
        first = connect(port, ATTACKER)
        first.sendall(client_wire(FLOODS["PING"] * 30))
        second = connect(port, ATTACKER)
        second.sendall(client_wire(FLOODS["PING"] * 30))  # 60 for the peer: over 50
        other = connect(port)
        other.sendall(client_wire(FLOODS["PING"] * 30))  # 30 for 127.0.0.1: fine
        other.sendall(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 0, 0)))
        codes = []
        for sock in (first, second):
            sock.sendall(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 0, 0)))
            codes.append(goaway_code(await asyncio.to_thread(read_all, sock)))
        assert http2.ENHANCE_YOUR_CALM in codes
        got = await asyncio.to_thread(read_all, other)
        assert ping_acks(got) == 30
        assert goaway_code(got) == http2.NO_ERROR
        assert server.events["goaway_enhance_your_calm"] == 1
        for sock in (first, second, other):
            sock.close()


@pytest.mark.asyncio
async def test_a_peer_holds_at_most_its_share_of_connections() -> None:
    async with serving(max_connections_per_peer=3) as (server, port):
        held = [connect(port, ATTACKER) for _ in range(3)]
        for sock in held:
            sock.sendall(client_wire())
        await asyncio.sleep(0.1)
        # A fourth from the same address is closed at accept: not even our SETTINGS.
        fourth = connect(port, ATTACKER)
        send_quietly(fourth, client_wire())
        assert await asyncio.to_thread(read_all, fourth) == b""
        fourth.close()
        assert server.events["peer_connections_refused"] == 1
        # Another peer is served meanwhile.
        assert await echo_call(port, "legit") == "legit"
        # A connection that closes gives its place back.
        held.pop().close()
        await asyncio.sleep(0.1)
        assert await asyncio.to_thread(one_call, port, ATTACKER) == {1: b"0"}
        assert server.events["peer_connections_refused"] == 1
        for sock in held:
            sock.close()


@pytest.mark.asyncio
async def test_rapid_reset_from_a_peer_is_penalised_briefly() -> None:
    async with serving(reset_burst=20, peer_penalty_seconds=0.5) as (server, port):
        established = connect(port, ATTACKER)  # Envoy's other connection, say
        established.sendall(client_wire())
        await asyncio.sleep(0.1)
        encoder = hpack.Encoder()
        wire = b""
        for stream_id in range(1, 61, 2):
            wire += _call(stream_id, encoder, "r")
            wire += raw(http2.RST_STREAM, 0, stream_id, struct.pack(">L", http2.CANCEL))
        attacker = connect(port, ATTACKER)
        send_quietly(attacker, client_wire(wire))
        assert goaway_code(await asyncio.to_thread(read_all, attacker)) == http2.ENHANCE_YOUR_CALM
        assert server.events["peer_penalty_started"] == 1
        assert await asyncio.to_thread(one_call, port, ATTACKER) == {}
        assert server.events["peer_penalized"] == 1
        assert await echo_call(port, "legit") == "legit"
        # A reset penalty leaves the peer's established connections serving.
        established.sendall(_call(1, hpack.Encoder(), "still here"))
        established.sendall(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 1, 0)))
        assert _statuses(await asyncio.to_thread(read_all, established)) == {1: b"0"}
        assert server.events["peer_penalty_closed"] == 0
        await asyncio.sleep(0.6)
        assert await asyncio.to_thread(one_call, port, ATTACKER) == {1: b"0"}
        attacker.close()
        established.close()


@pytest.mark.asyncio
async def test_without_the_peer_table_each_connection_has_its_own_budget() -> None:
    async with serving(control_frame_burst=50, peer_table_size=0) as (server, port):
        for _ in range(2):  # a reconnect gets a fresh budget and is not refused
            sock = connect(port, ATTACKER)
            sock.sendall(client_wire(FLOODS["PING"] * 40))
            sock.sendall(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 0, 0)))
            got = await asyncio.to_thread(read_all, sock)
            assert (ping_acks(got), goaway_code(got)) == (40, http2.NO_ERROR)
            sock.close()
        flooder = connect(port, ATTACKER)
        send_quietly(flooder, client_wire(FLOODS["PING"] * 60))
        assert goaway_code(await asyncio.to_thread(read_all, flooder)) == http2.ENHANCE_YOUR_CALM
        assert await asyncio.to_thread(one_call, port, ATTACKER) == {1: b"0"}
        assert server.events["peer_penalized"] == 0
        flooder.close()


# -- every callback is guarded; our own resets are counted ---------------------------------


@pytest.mark.asyncio
async def test_a_bug_in_a_call_s_done_callback_ends_in_goaway_internal_error() -> None:
    async with serving() as (server, port):
        headers = [(n, b"/t.T/LateBug" if n == b":path" else v) for n, v in REQUEST_ECHO]
        body = bytes(h2grpc.frame(Text(value="x")))
        request = raw(http2.HEADERS, http2.END_HEADERS, 1, hpack.Encoder().encode(headers))
        request += raw(http2.DATA, http2.END_STREAM, 1, body)
        sock = connect(port)
        sock.sendall(client_wire(request))
        got = await asyncio.to_thread(read_all, sock)
        assert goaway_code(got) == http2.INTERNAL_ERROR
        assert server.events["goaway_internal_error"] == 1
        assert not server.connections
        assert await echo_call(port, "still serving") == "still serving"
        sock.close()


@pytest.mark.asyncio
async def test_the_resets_we_send_are_counted() -> None:
    async with serving() as (server, port):
        bad = [*REQUEST_ECHO, (b"content-length", b"x")]
        sock = connect(port)
        sock.sendall(client_wire(headers_frame(1, bad, flags=0x4)))
        sock.sendall(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 1, 0)))
        got = await asyncio.to_thread(read_all, sock)
        assert resets_in(got) == [(1, http2.PROTOCOL_ERROR)]
        assert server.events["rst_stream_protocol_error"] == 1
        sock.close()


def resets_in(wire: bytes) -> list[tuple[int, int]]:
    return [(s, struct.unpack(">L", p)[0]) for k, _, s, p in frames(wire) if k == http2.RST_STREAM]


class _OutOfFiles(socket.socket):
    """A listening socket whose accept fails with EMFILE until told otherwise."""

    failing = True
    calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        type(self).calls += 1
        if type(self).failing:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


@pytest.mark.asyncio
async def test_out_of_descriptors_the_acceptor_pauses_instead_of_spinning() -> None:
    sock = _OutOfFiles(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    accepted: list[Any] = []
    acceptor = listen.Acceptor(sock, lambda conn, address: accepted.append(conn))
    client = socket.create_connection(("127.0.0.1", acceptor.port))
    try:
        await asyncio.sleep(0.3)
        assert _OutOfFiles.calls == 1  # paused, not retried every turn
        _OutOfFiles.failing = False
        await asyncio.sleep(1.2)
        assert len(accepted) == 1
    finally:
        acceptor.close()
        client.close()
        for conn in accepted:
            conn.close()


def _busy_call(stream_id: int, encoder: hpack.Encoder, text: str) -> bytes:
    headers = [(n, b"/t.T/Busy" if n == b":path" else v) for n, v in REQUEST_ECHO]
    return raw(http2.HEADERS, http2.END_HEADERS, stream_id, encoder.encode(headers)) + raw(
        http2.DATA, http2.END_STREAM, stream_id, bytes(h2grpc.frame(Text(value=text)))
    )


@pytest.mark.asyncio
async def test_a_burst_of_calls_on_one_connection_lets_another_connection_in() -> None:
    RAN.clear()
    async with serving() as (_server, port):
        encoder = hpack.Encoder()
        burst = b"".join(_busy_call(s, encoder, "burst") for s in range(1, 241, 2))
        assert len(burst) < 16 * 1024  # one read's worth: only the call quota splits it
        hog, other = connect(port, ATTACKER), connect(port)
        other.sendall(client_wire())
        await asyncio.sleep(0.1)

        def send() -> None:  # from a thread: the loop is busy with the burst meanwhile
            hog.sendall(client_wire(burst))
            time.sleep(0.005)  # the first turn of the burst is running
            other.sendall(_busy_call(1, hpack.Encoder(), "other"))

        await asyncio.to_thread(send)
        for sock, last in ((hog, 239), (other, 1)):
            sock.sendall(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", last, 0)))
        answered = [await asyncio.to_thread(read_all, sock) for sock in (hog, other)]
        assert len(_statuses(answered[0])) == 120
        assert _statuses(answered[1]) == {1: b"0"}
        # 120 calls of 2 ms in one read: without a per-turn quota the other connection's
        # call would wait for all of them; with 8 a turn it waits for a turn or two (the
        # bound leaves room for a slow machine).
        assert RAN.index("other") < 60, RAN.index("other")
        hog.close()
        other.close()


def read_for(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends within ``seconds`` (the connection stays open)."""
    sock.settimeout(seconds)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def body_frames(stream_id: int, body: bytes) -> bytes:
    """``body`` as DATA frames of at most 16 KiB, the stream left open."""
    return b"".join(
        raw(http2.DATA, 0, stream_id, body[at : at + 16_384]) for at in range(0, len(body), 16_384)
    )


def connection_window_updates(wire: bytes) -> int:
    return sum(
        struct.unpack(">L", p)[0] & 0x7FFFFFFF
        for k, _f, s, p in frames(wire)
        if k == http2.WINDOW_UPDATE and s == 0
    )


@pytest.mark.asyncio
async def test_under_memory_pressure_refused_bodies_do_not_reopen_the_window() -> None:
    async with serving(max_buffered_request_bytes=64 * 1024) as (server, port):
        encoder = hpack.Encoder()
        hog = socket.create_connection(("127.0.0.1", port))
        wire = raw(http2.HEADERS, http2.END_HEADERS, 1, encoder.encode(REQUEST_ECHO))
        wire += body_frames(1, b"\0\0\x10\0\0" + b"h" * 40_000)  # unfinished
        hog.sendall(client_wire(wire))
        await asyncio.sleep(0.2)
        assert server.held > 32 * 1024  # over half the cap: memory pressure
        sender = socket.create_connection(("127.0.0.1", port))
        encoder = hpack.Encoder()
        wire = raw(http2.HEADERS, http2.END_HEADERS, 1, encoder.encode(REQUEST_ECHO))
        wire += body_frames(1, b"\0\0\x10\0\0" + b"s" * 30_000)  # over the cap: refused
        sender.sendall(client_wire(wire))
        got = await asyncio.to_thread(read_for, sender, 0.3)  # the handshake and the answer
        assert _statuses(got) == {1: str(h2grpc.RESOURCE_EXHAUSTED).encode()}
        assert server.events["buffered_bytes_exhausted"] == 1
        # The client goes on sending the refused call's body: 3 MiB, past the half window
        # after which a WINDOW_UPDATE would come back were the bytes consumed.
        chunk = raw(http2.DATA, 0, 1, b"s" * 16_384)
        await asyncio.to_thread(sender.sendall, chunk * 192)
        got = await asyncio.to_thread(read_for, sender, 0.5)
        assert connection_window_updates(got) == 0
        # The hog gives up its call: the pressure is over and the window comes back.
        hog.sendall(raw(http2.RST_STREAM, 0, 1, struct.pack(">L", http2.CANCEL)))
        got = await asyncio.to_thread(read_for, sender, 0.5)
        assert connection_window_updates(got) >= 192 * 16_384
        for sock in (hog, sender):
            sock.close()


async def until(predicate: Callable[[], bool], what: str, patience: float = 5.0) -> None:
    deadline = time.monotonic() + patience
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_partial_frame_is_held_memory_until_its_connection_ends() -> None:
    async with serving() as (server, port):
        encoder = hpack.Encoder()
        sock = socket.create_connection(("127.0.0.1", port))
        opening = raw(http2.HEADERS, http2.END_HEADERS, 1, encoder.encode(REQUEST_ECHO))
        half = raw(http2.DATA, 0, 1, b"p" * 10_000)[:6_000]  # head and 5,991 bytes
        sock.sendall(client_wire(opening) + half)
        await until(lambda: server.held == 6_000, "the partial frame to be held")
        sock.close()
        await until(lambda: server.held == 0, "the connection's bytes to be let go")


@pytest.mark.asyncio
async def test_bytes_are_read_one_turn_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a fast sender has sent and we have not parsed waits in the kernel's socket
    # buffer, not in a read-ahead of ours: no read is over 16 KiB, and every call is served.
    reads: list[int] = []
    original = h2grpc._Connection.buffer_updated

    def recording(self: h2grpc._Connection, nbytes: int) -> None:
        reads.append(nbytes)
        original(self, nbytes)

    monkeypatch.setattr(h2grpc._Connection, "buffer_updated", recording)
    async with serving() as (_server, port):
        encoder = hpack.Encoder()
        calls = b"".join(_call(s, encoder, "x" * 2_000) for s in range(1, 201, 2))
        sock = socket.create_connection(("127.0.0.1", port))
        grant = raw(http2.WINDOW_UPDATE, 0, 0, struct.pack(">L", 1 << 30))
        sock.sendall(client_wire(grant, calls, raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 0, 0))))
        got = await asyncio.to_thread(read_all, sock)
        assert _statuses(got) == dict.fromkeys(range(1, 201, 2), b"0")
        assert sum(reads) > 6 * 16 * 1024
        assert max(reads) <= 16 * 1024
