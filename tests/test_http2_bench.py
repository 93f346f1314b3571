"""Benchmarks: HTTP/2 cost of 100 Check exchanges, extauthz's codec against python-hyper's h2.

Both are sans-IO, so both get the same bytes: a connection preface and 100 requests whose
header blocks are the ones Envoy 1.40 sent on one ext_authz connection (captured from
``tests/test_extauthz_envoy.py``: the first adds to the HPACK table, the rest repeat), and
both answer each call with response headers, one message and OK trailers.

Disabled by default (``--benchmark-disable`` in addopts runs each once as a test)::

    .venv/bin/pytest -q tests/test_http2_bench.py --benchmark-enable
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from extauthz import http2

CALLS = 100
_FIRST = bytes.fromhex(
    "83049f60b5773fa5d05b3b98855c76a675fbb2bc36a673d86f63498f5317a7293aff41862f948ed4cfef86"
    "40027465864d833505b11f40899acac8b24d494f6a7f8410000a7f5f8b1d75d0620d263d4c4d6564408cf2"
    "b16aee7f4b1aa496ca8747834d9697408bf2b4a7b3c0ec90b22d29ec870be25c0b89717f4096f2b16aee7f"
    "4b17cd65224b22d6765926a4a7b52b528f8310000f"
)
_REPEAT = bytes.fromhex(
    "83049f60b5773fa5d05b3b98855c76a675fbb2bc36a673d86f63498f5317a7293affc486c3c2c1c0bfbe"
)
_MESSAGE = b"\x00\x00\x00\x01\x2c" + b"m" * 300  # about the size of Envoy's CheckRequest
_ANSWER = b"\x00\x00\x00\x00\x40" + b"a" * 64
_RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_TRAILERS = [(b"grpc-status", b"0")]


def _wire() -> bytes:
    out = bytearray(http2.PREFACE + http2.frame_header(0, http2.SETTINGS, 0, 0))
    for number in range(CALLS):
        stream_id = 2 * number + 1
        block = _FIRST if number == 0 else _REPEAT
        out += http2.frame_header(len(block), http2.HEADERS, http2.END_HEADERS, stream_id) + block
        out += http2.frame_header(len(_MESSAGE), http2.DATA, http2.END_STREAM, stream_id)
        out += _MESSAGE
    return bytes(out)


WIRE = _wire()
_RESPONSE_BLOCK = http2.encode_headers(_RESPONSE)
_TRAILERS_BLOCK = http2.encode_headers(_TRAILERS)


class _Answering:
    """An http2.Handler that answers every finished request, as the gRPC layer does."""

    def __init__(self) -> None:
        self.connection = http2.Connection(self)
        self.answered = 0

    def on_headers(self, stream_id: int, headers: http2.Headers, end_stream: bool) -> None:
        assert dict(headers)[b":path"] == b"/envoy.service.auth.v3.Authorization/Check"

    def on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self.connection.send_headers(stream_id, _RESPONSE_BLOCK)
            self.connection.send_data(stream_id, _ANSWER)
            self.connection.send_headers(stream_id, _TRAILERS_BLOCK, end_stream=True)
            self.answered += 1

    def on_reset(self, stream_id: int) -> None:
        raise AssertionError(f"stream {stream_id} was reset")

    def on_window(self, stream_id: int) -> None:
        pass

    def on_goaway(self) -> None:
        raise AssertionError("GOAWAY")


def ours() -> tuple[int, int]:
    handler = _Answering()
    handler.connection.start()
    handler.connection.receive(WIRE)
    return handler.answered, len(handler.connection.out)


def theirs() -> tuple[int, int]:
    config = h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
    connection = h2.connection.H2Connection(config=config)
    connection.initiate_connection()
    answered = 0
    for event in connection.receive_data(WIRE):
        if isinstance(event, h2.events.DataReceived):
            connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            connection.send_headers(event.stream_id, _RESPONSE)
            connection.send_data(event.stream_id, _ANSWER)
            connection.send_headers(event.stream_id, _TRAILERS, end_stream=True)
            answered += 1
    return answered, len(connection.data_to_send())


def test_bench_http2_ours(benchmark: Any) -> None:
    answered, written = benchmark(ours)
    assert answered == CALLS
    assert written > CALLS * len(_ANSWER)


def test_bench_http2_h2(benchmark: Any) -> None:
    answered, written = benchmark(theirs)
    assert answered == CALLS
    assert written > CALLS * len(_ANSWER)
