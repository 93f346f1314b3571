"""The HTTP/2 codec (extauthz/http2.py) frame by frame: RFC 9113's rules, h2 as the peer.

Valid traffic comes from python-hyper's h2 client, and the codec's output is read back by
it, so both directions are checked against an independent implementation. Invalid traffic
is built by hand, one rule per case, in the spirit of h2spec (which needs Go, not here).
"""

from __future__ import annotations

import random
import struct
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from extauthz import http2

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/envoy.service.auth.v3.Authorization/Check"),
    (b":authority", b"extauthz"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


class Recorder:
    """An http2.Handler that writes down what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.sent_resets: list[tuple[int, int]] = []

    def on_headers(self, stream_id: int, headers: http2.Headers, end_stream: bool) -> None:
        self.events.append(("headers", stream_id, list(headers), end_stream))

    def on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.events.append(("data", stream_id, data, end_stream))

    def on_reset(self, stream_id: int) -> None:
        self.events.append(("reset", stream_id))

    def on_window(self, stream_id: int) -> None:
        self.events.append(("window", stream_id))

    def on_goaway(self) -> None:
        self.events.append(("goaway",))

    def on_oversized(self, stream_id: int, end_stream: bool) -> None:
        self.events.append(("oversized", stream_id, end_stream))

    def on_reset_sent(self, stream_id: int, code: int) -> None:
        self.sent_resets.append((stream_id, code))


def raw(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return http2.frame_header(len(payload), kind, flags, stream_id) + payload


def frames(data: bytes | bytearray) -> list[tuple[int, int, int, bytes]]:
    out, position = [], 0
    while position < len(data):
        high, low, kind, flags, stream_id = struct.unpack_from(">HBBBL", data, position)
        length = high << 8 | low
        out.append((kind, flags, stream_id, bytes(data[position + 9 : position + 9 + length])))
        position += 9 + length
    return out


def resets(connection: http2.Connection) -> list[tuple[int, int]]:
    found = [(s, struct.unpack(">L", p)[0]) for k, _, s, p in frames(connection.out) if k == 3]
    connection.out.clear()
    return found


def opened(**kwargs: Any) -> tuple[http2.Connection, Recorder]:
    recorder = Recorder()
    connection = http2.Connection(recorder, **kwargs)
    connection.start()
    connection.receive(http2.PREFACE + raw(http2.SETTINGS, 0, 0))
    connection.out.clear()
    recorder.events.clear()
    return connection, recorder


def headers_frame(stream_id: int, headers: list[tuple[bytes, bytes]], flags: int = 5) -> bytes:
    return raw(http2.HEADERS, flags, stream_id, hpack.Encoder().encode(headers))


def test_start_announces_settings_and_the_connection_window() -> None:
    connection = http2.Connection(Recorder(), max_streams=7, window=1 << 20)
    connection.start()
    (settings, update) = frames(connection.out)
    assert settings[:3] == (http2.SETTINGS, 0, 0)
    values = dict(struct.iter_unpack(">HL", settings[3]))
    assert values == {3: 7, 4: 1 << 20, 6: 64 * 1024}
    assert update[:3] == (http2.WINDOW_UPDATE, 0, 0)
    assert struct.unpack(">L", update[3])[0] == (1 << 20) - 65_535


def test_a_request_from_h2_and_the_answer_read_back_by_h2() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    recorder = Recorder()
    server = http2.Connection(recorder)
    server.start()
    server.receive(client.data_to_send())
    assert [e for e in recorder.events if e[0] != "window"] == [
        ("headers", 1, REQUEST, False),
        ("data", 1, b"\x00\x00\x00\x00\x02hi", True),
    ]
    assert server.window(1) == 65_535
    server.send_headers(1, http2.encode_headers([(b":status", b"200")]))
    server.send_data(1, b"answer")
    server.send_headers(1, http2.encode_headers([(b"grpc-status", b"0")]), end_stream=True)
    events = client.receive_data(bytes(server.out))
    kinds = {type(e).__name__ for e in events} - {
        "SettingsAcknowledged",
        "RemoteSettingsChanged",
        "WindowUpdated",
    }
    assert kinds == {"ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"}
    data = [e.data for e in events if isinstance(e, h2.events.DataReceived)]
    assert data == [b"answer"]
    assert server.window(1) == 0  # the stream is closed now


def test_ping_is_answered_with_its_payload_and_settings_are_acknowledged() -> None:
    connection, _ = opened()
    connection.receive(raw(http2.PING, 0, 0, b"12345678") + raw(http2.SETTINGS, 0, 0))
    assert frames(connection.out) == [
        (http2.PING, http2.ACK, 0, b"12345678"),
        (http2.SETTINGS, http2.ACK, 0, b""),
    ]
    connection.out.clear()
    connection.receive(raw(http2.PING, http2.ACK, 0, b"12345678"))
    assert not connection.out


def test_frames_split_across_reads_and_the_preface_byte_by_byte() -> None:
    recorder = Recorder()
    connection = http2.Connection(recorder)
    wire = http2.PREFACE + raw(http2.SETTINGS, 0, 0) + headers_frame(1, REQUEST)
    for index in range(len(wire)):
        connection.receive(wire[index : index + 1])
    assert recorder.events[-1] == ("headers", 1, REQUEST, True)


def test_padding_and_priority_are_stripped() -> None:
    connection, recorder = opened()
    block = hpack.Encoder().encode(REQUEST)
    padded = bytes([3]) + struct.pack(">LB", 0, 16) + block + b"\x00\x00\x00"
    connection.receive(raw(http2.HEADERS, 0x4 | 0x8 | 0x20, 1, padded))
    connection.receive(raw(http2.DATA, 0x1 | 0x8, 1, bytes([2]) + b"body" + b"\x00\x00"))
    assert recorder.events == [("headers", 1, REQUEST, False), ("data", 1, b"body", True)]


def test_continuation_frames_make_one_header_block() -> None:
    connection, recorder = opened()
    block = hpack.Encoder().encode(REQUEST)
    connection.receive(
        raw(http2.HEADERS, 0x1, 1, block[:5])
        + raw(http2.CONTINUATION, 0, 1, block[5:9])
        + raw(http2.CONTINUATION, 0x4, 1, block[9:])
    )
    assert recorder.events == [("headers", 1, REQUEST, True)]


def test_unknown_frame_types_are_ignored() -> None:
    connection, recorder = opened()
    connection.receive(raw(0xEE, 0xFF, 1, b"whatever") + headers_frame(1, REQUEST))
    assert recorder.events == [("headers", 1, REQUEST, True)]


def test_remembered_blocks_agree_with_hpack() -> None:
    # Envoy repeats one block per Check, which the codec remembers by its bytes. Random
    # header lists, some repeated and some adding table entries, must decode exactly as an
    # independent hpack decoder decodes the same sequence of blocks.
    rng = random.Random(7)
    names = [b"x-a", b"x-b", b"grpc-timeout", b"x-request-id", b"user-agent"]
    pool = [(rng.choice(names), b"v%d" % rng.randrange(6)) for _ in range(20)]
    encoder, reference = hpack.Encoder(), hpack.Decoder()
    connection, recorder = opened(max_streams=1000)
    repeats = 0
    seen: set[bytes] = set()
    lists = [REQUEST + rng.sample(pool, rng.randrange(0, 6)) for _ in range(8)]
    for number in range(400):
        headers = rng.choice(lists)
        if rng.random() < 0.1:
            headers = [*headers, (b"x-new", b"%d" % number)]
        block = encoder.encode(headers)
        repeats += block in seen
        seen.add(block)
        connection.receive(raw(http2.HEADERS, 0x5, 2 * number + 1, block))
        expected = [(bytes(n), bytes(v)) for n, v in reference.decode(block, raw=True)]
        assert recorder.events[-1] == ("headers", 2 * number + 1, expected, True)
    assert repeats > 100  # blocks really were repeated


def test_a_remembered_block_is_forgotten_when_the_table_changes() -> None:
    # 0xBE is "dynamic table entry 62", the newest: the same byte means another header
    # once a block adds an entry (literal with incremental indexing, RFC 7541 6.2.1).
    connection, recorder = opened()
    base = hpack.Encoder().encode(REQUEST)  # h2-style: adds REQUEST's fields to the table

    def add(name: bytes, value: bytes) -> bytes:
        return b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value

    newest = b"\x83\x86\x84" + b"\xbe"  # :method POST, :scheme http, :path /, entry 62
    connection.receive(raw(http2.HEADERS, 5, 1, base + add(b"x-k", b"first")))
    connection.receive(raw(http2.HEADERS, 5, 3, newest))
    assert recorder.events[-1][2][-1] == (b"x-k", b"first")
    connection.receive(raw(http2.HEADERS, 5, 5, newest[:3] + add(b"x-k", b"second") + b"\xbe"))
    assert recorder.events[-1][2][-1] == (b"x-k", b"second")
    connection.receive(raw(http2.HEADERS, 5, 7, newest))
    assert recorder.events[-1][2][-1] == (b"x-k", b"second")


def test_encode_headers_long_names_and_values_decode_with_hpack() -> None:
    headers = [(b"x-" + b"n" * 300, b"v" * 20_000), (b"grpc-status", b"0"), (b"e", b"")]
    block = http2.encode_headers(headers)
    assert [(bytes(n), bytes(v)) for n, v in hpack.Decoder(1 << 20).decode(block, raw=True)] == (
        headers
    )


def test_a_large_header_block_is_sent_as_headers_and_continuations() -> None:
    connection, _ = opened()
    connection.receive(headers_frame(1, REQUEST))
    block = http2.encode_headers([(b":status", b"200"), (b"x-big", b"b" * 40_000)])
    connection.send_headers(1, block, end_stream=True)
    kinds = [(k, f) for k, f, _, _ in frames(connection.out)]
    assert kinds == [(http2.HEADERS, 0x1), (http2.CONTINUATION, 0), (http2.CONTINUATION, 0x4)]


def test_send_data_respects_windows_and_frame_size() -> None:
    connection, recorder = opened()
    settings = struct.pack(">HL", http2.INITIAL_WINDOW_SIZE, 20_000)
    connection.receive(raw(http2.SETTINGS, 0, 0, settings) + headers_frame(1, REQUEST))
    assert ("window", 0) in recorder.events
    assert connection.window(1) == 20_000
    with pytest.raises(ValueError, match="window"):
        connection.send_data(1, b"x" * 20_001)
    connection.out.clear()
    connection.send_data(1, b"x" * 20_000)
    assert [len(p) for k, _, _, p in frames(connection.out) if k == http2.DATA] == [16_384, 3_616]
    assert connection.window(1) == 0
    connection.receive(raw(http2.WINDOW_UPDATE, 0, 1, struct.pack(">L", 100)))
    assert recorder.events[-1] == ("window", 1)
    assert connection.window(1) == 100
    # The connection window (65,535, never raised) now binds on a new stream.
    connection.receive(raw(http2.SETTINGS, 0, 0, struct.pack(">HL", 4, 1 << 20)))
    connection.receive(headers_frame(3, REQUEST))
    assert connection.window(3) == 65_535 - 20_000


def window_updates(connection: http2.Connection) -> list[tuple[int, int]]:
    found = [
        (s, struct.unpack(">L", p)[0])
        for k, _, s, p in frames(connection.out)
        if k == http2.WINDOW_UPDATE
    ]
    connection.out.clear()
    return found


def test_received_data_is_granted_back_only_once_consumed() -> None:
    connection, _ = opened(window=65_535)
    connection.receive(headers_frame(1, REQUEST, flags=0x4))
    for _ in range(3):
        connection.receive(raw(http2.DATA, 0, 1, b"d" * 16_000))
    assert window_updates(connection) == []  # held, not yet taken off our hands
    connection.consumed(1, 48_000)
    assert window_updates(connection) == [(0, 48_000), (1, 48_000)]
    connection.receive(raw(http2.DATA, 0, 1, b"d" * 16_000))  # fits only because granted


def test_unconsumed_data_fills_the_window_and_then_is_a_flow_control_error() -> None:
    connection, _ = opened(window=65_535)
    connection.receive(headers_frame(1, REQUEST, flags=0x4))
    for _ in range(4):
        connection.receive(raw(http2.DATA, 0, 1, b"d" * 16_000))
    with pytest.raises(http2.ProtocolError) as info:
        connection.receive(raw(http2.DATA, 0, 1, b"d" * 16_000))
    assert info.value.code == http2.FLOW_CONTROL_ERROR


def test_padding_and_dropped_data_are_granted_back_at_once() -> None:
    connection, _ = opened(window=65_535)
    connection.receive(headers_frame(1, REQUEST, flags=0x4))
    padded = bytes([200]) + b"d" * 100 + b"\0" * 200
    for _ in range(200):
        connection.receive(raw(http2.DATA, http2.PADDED, 1, padded))
    # 201 of each frame's 301 bytes were padding: granted without the handler's word.
    assert window_updates(connection) == [(0, 201 * 164)]
    connection.reset(1, http2.CANCEL)
    connection.out.clear()
    for _ in range(100):  # late DATA on a stream we reset is dropped, and granted back
        connection.receive(raw(http2.DATA, 0, 1, b"d" * 500))
    assert [s for s, _ in window_updates(connection)] == [0]


def test_an_early_end_resets_the_open_request_and_ignores_its_late_data() -> None:
    connection, recorder = opened()
    connection.receive(headers_frame(1, REQUEST, flags=0x4))
    connection.send_headers(1, http2.encode_headers([(b":status", b"200")]), end_stream=True)
    assert [f[0] for f in frames(connection.out)] == [http2.HEADERS, http2.RST_STREAM]
    assert resets(connection) == [(1, http2.NO_ERROR)]
    connection.receive(raw(http2.DATA, 0x1, 1, b"late"))
    assert not connection.out
    assert recorder.events == [("headers", 1, REQUEST, False)]


def test_client_reset_and_goaway_reach_the_handler() -> None:
    connection, recorder = opened()
    connection.receive(headers_frame(1, REQUEST))
    connection.receive(raw(http2.RST_STREAM, 0, 1, struct.pack(">L", http2.CANCEL)))
    connection.receive(raw(http2.GOAWAY, 0, 0, struct.pack(">LL", 0, 0)))
    assert recorder.events[1:] == [("reset", 1), ("goaway",)]
    connection.send_data(1, b"gone")  # a reset stream takes no output
    assert not connection.out


CONNECTION_ERRORS = {
    "bad preface": (b"GET / HTTP/1.1\r\n\r\n", http2.PROTOCOL_ERROR),
    "first frame not SETTINGS": (raw(http2.PING, 0, 0, b"8 bytes!"), http2.PROTOCOL_ERROR),
    "frame over 16384": (raw(http2.DATA, 0, 1, b"x" * 16_385), http2.FRAME_SIZE_ERROR),
    "DATA on stream 0": (raw(http2.DATA, 0, 0, b"x"), http2.PROTOCOL_ERROR),
    "DATA on an idle stream": (raw(http2.DATA, 0, 5, b"x"), http2.PROTOCOL_ERROR),
    "HEADERS on stream 0": (headers_frame(0, REQUEST), http2.PROTOCOL_ERROR),
    "even stream id": (headers_frame(2, REQUEST), http2.PROTOCOL_ERROR),
    "lower unused stream id": (
        headers_frame(5, REQUEST) + headers_frame(3, REQUEST),
        http2.PROTOCOL_ERROR,
    ),
    "CONTINUATION alone": (raw(http2.CONTINUATION, 4, 1, b"\x82"), http2.PROTOCOL_ERROR),
    "interrupted header block": (
        headers_frame(1, REQUEST, flags=0) + raw(http2.PING, 0, 0, b"12345678"),
        http2.PROTOCOL_ERROR,
    ),
    "CONTINUATION for another stream": (
        headers_frame(1, REQUEST, flags=0) + raw(http2.CONTINUATION, 4, 3, b""),
        http2.PROTOCOL_ERROR,
    ),
    "PUSH_PROMISE": (raw(http2.PUSH_PROMISE, 4, 1, b"\x00\x00\x00\x02"), http2.PROTOCOL_ERROR),
    "PING on a stream": (raw(http2.PING, 0, 1, b"12345678"), http2.PROTOCOL_ERROR),
    "short PING": (raw(http2.PING, 0, 0, b"1234567"), http2.FRAME_SIZE_ERROR),
    "SETTINGS on a stream": (raw(http2.SETTINGS, 0, 1), http2.PROTOCOL_ERROR),
    "SETTINGS of 5 bytes": (raw(http2.SETTINGS, 0, 0, b"12345"), http2.FRAME_SIZE_ERROR),
    "SETTINGS ACK with payload": (
        raw(http2.SETTINGS, 1, 0, b"123456"),
        http2.FRAME_SIZE_ERROR,
    ),
    "ENABLE_PUSH 2": (raw(4, 0, 0, struct.pack(">HL", 2, 2)), http2.PROTOCOL_ERROR),
    "INITIAL_WINDOW_SIZE 2^31": (
        raw(4, 0, 0, struct.pack(">HL", 4, 2**31)),
        http2.FLOW_CONTROL_ERROR,
    ),
    "MAX_FRAME_SIZE too small": (raw(4, 0, 0, struct.pack(">HL", 5, 16_383)), 1),
    "MAX_FRAME_SIZE too large": (raw(4, 0, 0, struct.pack(">HL", 5, 2**24)), 1),
    "WINDOW_UPDATE of 0 on the connection": (
        raw(http2.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"),
        http2.PROTOCOL_ERROR,
    ),
    "connection window over 2^31-1": (
        raw(http2.WINDOW_UPDATE, 0, 0, struct.pack(">L", 2**31 - 1)),
        http2.FLOW_CONTROL_ERROR,
    ),
    "WINDOW_UPDATE of 3 bytes": (raw(http2.WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), 6),
    "WINDOW_UPDATE on an idle stream": (
        raw(http2.WINDOW_UPDATE, 0, 9, struct.pack(">L", 1)),
        http2.PROTOCOL_ERROR,
    ),
    "RST_STREAM on stream 0": (raw(http2.RST_STREAM, 0, 0, b"\x00\x00\x00\x08"), 1),
    "RST_STREAM on an idle stream": (raw(http2.RST_STREAM, 0, 7, b"\x00\x00\x00\x08"), 1),
    "RST_STREAM of 3 bytes": (
        headers_frame(1, REQUEST) + raw(http2.RST_STREAM, 0, 1, b"\x00\x00\x08"),
        http2.FRAME_SIZE_ERROR,
    ),
    "GOAWAY on a stream": (raw(http2.GOAWAY, 0, 1, bytes(8)), http2.PROTOCOL_ERROR),
    "short GOAWAY": (raw(http2.GOAWAY, 0, 0, bytes(7)), http2.FRAME_SIZE_ERROR),
    "HPACK index 0": (raw(http2.HEADERS, 5, 1, b"\x80"), http2.COMPRESSION_ERROR),
    "HPACK index past the tables": (raw(http2.HEADERS, 5, 1, b"\xfe"), 9),
    "HPACK string past the block": (raw(http2.HEADERS, 5, 1, b"\x00\x7e"), 9),
    "padding longer than the frame": (
        raw(http2.DATA, http2.PADDED, 1, b"\x09abc"),
        http2.PROTOCOL_ERROR,
    ),
}


@pytest.mark.parametrize("case", CONNECTION_ERRORS)
def test_connection_errors(case: str) -> None:
    wire, code = CONNECTION_ERRORS[case]
    connection = http2.Connection(Recorder())
    if case not in ("bad preface", "first frame not SETTINGS"):
        wire = raw(http2.SETTINGS, 0, 0) + wire
    if case == "padding longer than the frame":
        wire = raw(http2.SETTINGS, 0, 0) + headers_frame(1, REQUEST, flags=4) + wire[9:]
    if case != "bad preface":
        wire = http2.PREFACE + wire
    with pytest.raises(http2.ProtocolError) as caught:
        connection.receive(wire)
    assert caught.value.code == code


def test_data_beyond_a_stream_window_is_a_flow_control_error() -> None:
    # Windows are granted back as soon as half is used, so only a window smaller than one
    # frame can be overrun by a single frame: the codec must still notice.
    connection, _ = opened(window=100)
    connection.receive(headers_frame(1, REQUEST, flags=4) + raw(http2.DATA, 0, 1, b"d" * 101))
    assert resets(connection) == [(1, http2.FLOW_CONTROL_ERROR)]


def test_an_oversized_header_list_is_refused_per_call_then_per_connection() -> None:
    budget = http2.Budget(max_header_block=16 * 1024)
    connection, recorder = opened(max_header_list=8 * 1024, budget=budget)
    encoder = hpack.Encoder()
    big = [(b"x-big", b"b" * 3000)]
    connection.receive(raw(http2.HEADERS, 5, 1, encoder.encode(REQUEST + big)))
    repeated = encoder.encode(REQUEST + big * 3)  # small block, large list
    assert len(repeated) < 20
    # Over the list size: only this call is refused (the handler answers it) ...
    connection.receive(raw(http2.HEADERS, 5, 3, repeated))
    assert recorder.events[-1] == ("oversized", 3, True)
    # ... and the connection goes on, its HPACK table in step.
    connection.receive(raw(http2.HEADERS, 5, 5, encoder.encode(REQUEST)))
    assert recorder.events[-1][:2] == ("headers", 5)
    # Over the hard cap it is a bomb: the connection ends.
    with pytest.raises(http2.ProtocolError) as caught:
        connection.receive(raw(http2.HEADERS, 5, 7, encoder.encode(REQUEST + big * 6)))
    assert caught.value.code == http2.ENHANCE_YOUR_CALM


MALFORMED = {
    "uppercase name": [*REQUEST, (b"X-Upper", b"1")],
    "no :path": [h for h in REQUEST if h[0] != b":path"],
    "no :method": [h for h in REQUEST if h[0] != b":method"],
    "no :scheme": [h for h in REQUEST if h[0] != b":scheme"],
    "empty :path": [(n, b"" if n == b":path" else v) for n, v in REQUEST],
    "unknown pseudo-header": [(b":foo", b"bar"), *REQUEST],
    "response pseudo-header": [(b":status", b"200"), *REQUEST],
    "duplicate :path": [(b":path", b"/x"), *REQUEST],
    "pseudo-header after a regular one": [*REQUEST, (b":authority", b"late")],
    "connection header": [*REQUEST, (b"connection", b"keep-alive")],
    "te other than trailers": [(n, b"gzip" if n == b"te" else v) for n, v in REQUEST],
    "bad content-length": [*REQUEST, (b"content-length", b"-1")],
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_requests_reset_only_their_stream(case: str) -> None:
    connection, recorder = opened()
    connection.receive(headers_frame(1, MALFORMED[case]))
    assert resets(connection) == [(1, http2.PROTOCOL_ERROR)]
    assert recorder.events == [("reset", 1)]
    connection.receive(headers_frame(3, REQUEST))
    assert recorder.events[-1] == ("headers", 3, REQUEST, True)


def stream_error(wire: bytes, **kwargs: Any) -> list[tuple[int, int]]:
    connection, _ = opened(**kwargs)
    connection.receive(wire)
    return resets(connection)


def test_content_length_must_match_the_body() -> None:
    request = headers_frame(1, [*REQUEST, (b"content-length", b"3")], flags=4)
    assert stream_error(request + raw(http2.DATA, 1, 1, b"four")) == [(1, http2.PROTOCOL_ERROR)]
    assert stream_error(request + raw(http2.DATA, 1, 1, b"tw")) == [(1, http2.PROTOCOL_ERROR)]
    assert stream_error(request + raw(http2.DATA, 1, 1, b"abc")) == []


def test_stream_errors() -> None:
    opening = headers_frame(1, REQUEST, flags=4)
    self_priority = struct.pack(">LB", 1, 16) + hpack.Encoder().encode(REQUEST)
    assert stream_error(raw(http2.HEADERS, 0x25, 1, self_priority)) == [(1, 1)]
    assert stream_error(raw(http2.PRIORITY, 0, 1, b"\x00\x00\x00\x03")) == [(1, 6)]
    assert stream_error(raw(http2.PRIORITY, 0, 1, b"\x00\x00\x00\x01\x10")) == [(1, 1)]
    assert stream_error(raw(http2.PRIORITY, 0, 9, b"\x00\x00\x00\x01\x10")) == []
    trailers = hpack.Encoder().encode([(b"x-t", b"1")])
    assert stream_error(opening + raw(http2.HEADERS, 4, 1, trailers)) == [(1, 1)]
    pseudo = hpack.Encoder().encode([(b":path", b"/")])
    assert stream_error(opening + raw(http2.HEADERS, 5, 1, pseudo)) == [(1, 1)]
    ended = headers_frame(1, REQUEST)
    assert stream_error(ended + raw(http2.DATA, 0, 1, b"x")) == [(1, http2.STREAM_CLOSED)]
    update0 = raw(http2.WINDOW_UPDATE, 0, 1, bytes(4))
    assert stream_error(opening + update0) == [(1, http2.PROTOCOL_ERROR)]
    overflow = raw(http2.WINDOW_UPDATE, 0, 1, struct.pack(">L", 2**31 - 1))
    assert stream_error(opening + overflow) == [(1, http2.FLOW_CONTROL_ERROR)]
    two = opening + headers_frame(3, REQUEST, flags=4)
    assert stream_error(two, max_streams=1) == [(3, http2.REFUSED_STREAM)]


def test_trailers_end_the_request() -> None:
    connection, recorder = opened()
    trailers = hpack.Encoder().encode([(b"x-t", b"1")])
    connection.receive(headers_frame(1, REQUEST, flags=4) + raw(http2.HEADERS, 5, 1, trailers))
    assert recorder.events[-1] == ("data", 1, b"", True)


def test_frames_on_a_stream_closed_normally_are_stream_closed() -> None:
    connection, _ = opened()
    connection.receive(headers_frame(1, REQUEST))
    connection.send_headers(1, http2.encode_headers([(b":status", b"200")]), end_stream=True)
    connection.out.clear()
    connection.receive(headers_frame(1, REQUEST))
    assert resets(connection) == [(1, http2.STREAM_CLOSED)]
    connection.receive(raw(http2.WINDOW_UPDATE, 0, 1, struct.pack(">L", 5)))  # allowed
    assert not connection.out


def test_a_table_size_update_also_forgets_remembered_blocks() -> None:
    connection, recorder = opened()
    base = hpack.Encoder().encode([*REQUEST, (b"x-k", b"first")])
    newest = b"\x83\x86\x84\xbe"  # entry 62 is x-k: first
    connection.receive(raw(http2.HEADERS, 5, 1, base) + raw(http2.HEADERS, 5, 3, newest))
    assert recorder.events[-1][2][-1] == (b"x-k", b"first")
    # A size update to 0 empties the table (RFC 7541 4.2), so entry 62 no longer exists.
    connection.receive(raw(http2.HEADERS, 5, 5, b"\x20\x83\x86\x84"))
    with pytest.raises(http2.ProtocolError) as caught:
        connection.receive(raw(http2.HEADERS, 5, 7, newest))
    assert caught.value.code == http2.COMPRESSION_ERROR


def _mutated(rng: random.Random, wire: bytes) -> bytes:
    data = bytearray(wire)
    for _ in range(rng.randrange(1, 4)):
        position = rng.randrange(len(http2.PREFACE), len(data))
        kind = rng.randrange(4)
        if kind == 0:
            data[position] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[position] = rng.randrange(256)
        elif kind == 2:
            del data[position : position + rng.randrange(1, 12)]
        else:
            data[position:position] = rng.randbytes(rng.randrange(1, 12))
    return bytes(data)


def test_mangled_traffic_raises_only_protocol_errors() -> None:
    # The codec faces whatever reaches its socket: any byte stream must end in frames, stream
    # resets or a ProtocolError (GOAWAY), never in another exception escaping ``receive``.
    wire = http2.PREFACE + raw(http2.SETTINGS, 0, 0, struct.pack(">HL", 4, 100))
    for number in range(6):
        stream_id = 2 * number + 1
        wire += headers_frame(stream_id, REQUEST, flags=4)
        wire += raw(http2.DATA, 0x8, stream_id, b"\x03" + b"\x00\x00\x00\x00\x02hi" + b"\x00" * 3)
        wire += raw(http2.WINDOW_UPDATE, 0, stream_id, struct.pack(">L", 10))
        wire += raw(http2.DATA, 0x1, stream_id, b"")
    wire += raw(http2.PING, 0, 0, b"12345678") + raw(http2.PRIORITY, 0, 3, b"\x00\x00\x00\x01\x05")
    rng = random.Random(2026)
    outcomes = {"clean": 0, "goaway": 0}
    for _ in range(3000):
        recorder = Recorder()
        connection = http2.Connection(recorder, max_streams=4)
        connection.start()
        data = _mutated(rng, wire)
        try:
            while data:
                cut = rng.randrange(1, 200)
                connection.receive(data[:cut])
                data = data[cut:]
                for event in recorder.events:  # answer, as the gRPC layer would
                    if event[0] == "headers":
                        connection.send_headers(event[1], b"\x88", end_stream=True)
        except http2.ProtocolError:
            outcomes["goaway"] += 1
        else:
            outcomes["clean"] += 1
    assert outcomes["goaway"] > 100
    assert outcomes["clean"] > 100


def test_a_run_of_empty_data_frames_is_refused() -> None:
    connection, recorder = opened()
    connection.receive(headers_frame(1, REQUEST, flags=4))
    empty = raw(http2.DATA, 0, 1, b"")
    padded_empty = raw(http2.DATA, http2.PADDED, 1, b"\x02\x00\x00")
    # Up to the limit, and again after a frame that carries something, is fine.
    connection.receive(empty * (http2.MAX_EMPTY_FRAMES - 1) + padded_empty)
    connection.receive(raw(http2.DATA, 0, 1, b"x") + empty * http2.MAX_EMPTY_FRAMES)
    assert recorder.events[-1] == ("data", 1, b"", False)
    with pytest.raises(http2.ProtocolError) as caught:
        connection.receive(empty)
    assert caught.value.code == http2.ENHANCE_YOUR_CALM
