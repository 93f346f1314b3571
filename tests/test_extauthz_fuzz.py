"""Property-based fuzzing of extauthz's HTTP/2 frame parser, its gRPC server and Check.

Properties: whatever bytes arrive, the codec raises nothing but ``http2.ProtocolError``;
the gRPC server never lets an exception out of a connection and never counts a bug of
its own (``goaway_internal_error``), and the bytes it held come back to zero; ``Check``
answers every request, well-formed or not, with a CheckResponse, and never ``allowed``
where the policy says otherwise.

CI runs a small budget (a few seconds in all). For a longer run set the number of
examples per property, e.g. ``EXTAUTHZ_FUZZ_EXAMPLES=20000 pytest --timeout 0 tests/test_extauthz_fuzz.py``.
Inputs that once found a bug are pinned below with ``@example``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import struct
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import wrappers_pb2  # type: ignore[import-untyped,unused-ignore]

from extauthz import config, h2grpc, http2, jwt, metrics, policy, service
from tests.extauthz import support
from tests.test_extauthz_http2 import REQUEST, Recorder, headers_frame, raw

EXAMPLES = int(os.environ.get("EXTAUTHZ_FUZZ_EXAMPLES", "150"))
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 150,  # CI: the same inputs on every run; longer runs explore
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)

_HANDSHAKE = http2.PREFACE + raw(http2.SETTINGS, 0, 0)
_BLOCK = headers_frame(1, REQUEST, flags=0x4)[9:]


@st.composite
def frame(draw: st.DrawFn) -> bytes:
    """A frame: often well-typed with a plausible payload, sometimes anything at all."""
    kind = draw(st.one_of(st.integers(0, 9), st.integers(0, 255)))
    flags = draw(st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0x2D, 0xFF]))
    stream_id = draw(st.sampled_from([0, 1, 2, 3, 5, 7, 0x7FFFFFFF, 0x80000001]))
    payload = draw(
        st.one_of(
            st.binary(max_size=64),
            st.just(_BLOCK),
            st.builds(lambda n: struct.pack(">L", n), st.integers(0, 2**32 - 1)),
            st.builds(
                lambda entries: b"".join(struct.pack(">HL", i, v) for i, v in entries),
                st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**32 - 1)), max_size=40),
            ),
            st.builds(lambda data: b"\x00" + struct.pack(">L", len(data)) + data, st.binary()),
        )
    )
    return raw(kind, flags, stream_id, payload)


def _split(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    return [wire[a:b] for a, b in itertools.pairwise(points)]


@SETTINGS
@hypothesis.given(st.lists(frame(), max_size=12), st.lists(st.integers(0, 10_000), max_size=4))
@hypothesis.example(  # a 5,000-digit content-length once raised ValueError out of the codec
    [headers_frame(1, [*REQUEST, (b"content-length", b"9" * 5000)])], []
)
def test_the_codec_raises_only_protocol_errors(frames_: list[bytes], cuts: list[int]) -> None:
    connection = http2.Connection(Recorder(), budget=http2.Budget(control_burst=100))
    connection.start()
    try:
        for chunk in _split(_HANDSHAKE + b"".join(frames_), cuts):
            connection.receive(chunk)
    except http2.ProtocolError:
        pass


class _Transport(asyncio.Transport):
    """Enough of an asyncio transport for a connection fed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def _echo(request: Any) -> Any:
    return request


def _grpc_message(data: bytes) -> bytes:
    return b"\x00" + struct.pack(">L", len(data)) + data


_GRPC_DATA = st.builds(
    lambda data, flags: raw(http2.DATA, flags, 1, _grpc_message(data)),
    st.binary(max_size=40),
    st.sampled_from([0, 1]),
)


async def _feed(chunks: list[bytes]) -> h2grpc.Server:
    text = wrappers_pb2.StringValue
    server = h2grpc.Server(
        [h2grpc.Method("/envoy.service.auth.v3.Authorization/Check", text.FromString, unary=_echo)],
        max_message_bytes=64,
        limits=config.Limits(control_frame_burst=100),
    )
    connection = h2grpc._Connection(server)
    transport = _Transport()
    connection.connection_made(transport)
    for chunk in chunks:
        await _read(connection, transport, server, chunk)
    connection.connection_lost(None)
    return server


async def _read(
    connection: h2grpc._Connection, transport: _Transport, server: h2grpc.Server, data: bytes
) -> None:
    """Deliver ``data`` as asyncio would: reads of at most the server's read buffer, none
    while reading is paused (the turns left over run meanwhile)."""
    size = len(server.read_buffer)
    for start in range(0, len(data), size):
        while transport.paused and not transport.closed:
            await asyncio.sleep(0)
        if transport.closed:
            return
        piece = data[start : start + size]
        server.read_buffer[: len(piece)] = piece
        connection.buffer_updated(len(piece))


_LOOP = asyncio.new_event_loop()


@SETTINGS
@hypothesis.given(
    st.lists(st.one_of(frame(), _GRPC_DATA), max_size=12),
    st.lists(st.integers(0, 10_000), max_size=4),
)
def test_the_grpc_server_contains_every_input(frames_: list[bytes], cuts: list[int]) -> None:
    wire = _HANDSHAKE + headers_frame(1, REQUEST, flags=0x4) + b"".join(frames_)
    server = _LOOP.run_until_complete(_feed(_split(wire, cuts)))
    assert server.events["goaway_internal_error"] == 0
    assert server.held == 0


# -- Check ---------------------------------------------------------------------------------


def _checker(tmp_path: pathlib.Path) -> service.Checker:
    settings = support.settings(tmp_path)
    authn = jwt.Authenticator(settings.jwt, support.FakeClock())
    authn.load_static()
    engine = policy.make_engine(settings.policy)
    return service.Checker(settings, authn, engine, metrics.Metrics(), service.DecisionLog("off"))


_TEXT = st.text(max_size=30)
_ADMIN = support.token(support.claims(support.FakeClock().now, role="admin"))
_TOKENS = st.one_of(
    _TEXT,
    st.just(_ADMIN),
    st.builds(
        lambda h, p, s: f"{h}.{p}.{s}",
        st.text("ABCabc012-_=", max_size=40),
        st.text("ABCabc012-_=", max_size=40),
        st.text("ABCabc012-_=", max_size=10),
    ),
)


@st.composite
def check_request(draw: st.DrawFn) -> external_auth_pb2.CheckRequest:
    headers = draw(st.dictionaries(st.sampled_from(["x-a", "cookie", "content-type"]), _TEXT))
    token = draw(st.one_of(st.none(), _TOKENS))
    if token is not None:
        headers["authorization"] = "Bearer " + token
    path = draw(st.one_of(_TEXT, st.sampled_from(["/public", "/admin", "/a%zz", "/?q=%", "/%"])))
    request = support.check_request(
        path=path,
        method=draw(st.sampled_from(["GET", "POST", "", "\x00"])),
        headers=headers,
        body=draw(_TEXT),
    )
    if draw(st.booleans()):
        request.attributes.request.ClearField("http")
    return request


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> service.Checker:
    return _checker(tmp_path_factory.mktemp("fuzz"))


@SETTINGS
@hypothesis.given(check_request())
def test_check_answers_every_request(
    checker: service.Checker, request: external_auth_pb2.CheckRequest
) -> None:
    response = _LOOP.run_until_complete(checker.check(request))
    assert isinstance(response, external_auth_pb2.CheckResponse)
    assert checker.metrics.by_outcome["internal_error"]._value.get() == 0
    http = request.attributes.request.http
    if response.status.code == 0:  # allowed: only what the test policy can allow here
        public = http.method == "GET" and http.path.startswith("/public")
        assert public or http.headers.get("authorization") == "Bearer " + _ADMIN
