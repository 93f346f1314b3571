"""The server side of HTTP/2 (RFC 9113) for extauthz's gRPC transport: frames, streams, flow.

Why not h2: behind Envoy at 1,000 checks per second, py-spy showed about half of the gRPC
server's time inside h2 (its event objects, state-machine transitions, HPACK, and a
``repr`` of every received frame), more than the check itself. This module does only what
a gRPC server needs, with no per-frame objects: one ``receive`` call parses the frames in
a read and calls the handler's ``on_*`` methods; output accumulates in ``out``.

Scope: cleartext with prior knowledge (Envoy's gRPC clients and grpc's insecure channels
speak it), server side, no push, priorities ignored (RFC 9113 5.3.2 allows that). HPACK
decoding is hpack's (h2's own decoder), remembered per block while the block cannot have
changed meaning; the encoder never indexes, so the peer's table size never matters.

Errors follow RFC 9113 5.4: a ``ProtocolError`` leaves ``receive`` (the caller sends
``goaway`` and closes); a stream error resets only its stream and tells the handler.

Hostile peers: frames that cost work but move no request forward (SETTINGS, PING,
PRIORITY, empty DATA and CONTINUATION, unknown types) draw on a token bucket, and so do
the peer's RST_STREAMs (the "rapid reset" attack); an empty bucket is ENHANCE_YOUR_CALM.
The buckets may be shared by several connections (``Buckets``: the gRPC server gives all
connections of one peer address the same pair), and a ``ProtocolError`` says which kind
of abuse ended the connection, so the server can keep that peer out for a while.
A SETTINGS frame carries a bounded number of entries (CVE-2020-11080, as nghttp2). DATA
counts against the receive windows until the handler says it is ``consumed``, so a peer
can make the server hold at most one connection window of unread request bytes.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import hpack
import hpack.exceptions
import hpack.table

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes (RFC 9113 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 5, 6, 7, 8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 9, 11

# Settings (RFC 9113 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 5, 6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
FRAME_SIZE = 16_384  # ours: the default, so a peer never needs to learn it
_MAX_FRAME_SIZE_LIMIT = 2**24 - 1
_SELF_DEPENDENT = 0x100  # not a wire flag: marks a HEADERS whose priority names itself
MAX_EMPTY_FRAMES = 16  # consecutive; Envoy's default allows 1, gRPC clients send none
_CLOSED_MEMORY = 1024  # closed stream ids remembered, to answer late frames precisely

_HEAD = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")

Headers = Sequence[tuple[bytes, bytes]]

_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(hpack.table.HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_BLOCK_MEMORY = 64  # decoded header blocks remembered per connection
_CONTENT_LENGTH_DIGITS = 18  # more digits cannot be a real body (and int() refuses 4,300+)
_FIELD_OVERHEAD = 32  # RFC 9113 6.5.2: a field's size is name + value + 32

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one peer may cost: see ``Connection`` and docs/extauthz.md "Hostile peers"."""

    settings_entries: int = 32  # per SETTINGS frame (nghttp2's cap, CVE-2020-11080)
    control_rate: float = 100.0  # control frames per second, refilled continuously
    control_burst: int = 1000
    reset_rate: float = 33.0  # streams reset by the peer per second (nghttp2's defaults)
    reset_burst: int = 1000
    max_header_block: int = 256 * 1024  # compressed or decoded; above it: connection error


class Bucket:
    """A token bucket: ``take`` is False once ``burst`` tokens are spent faster than ``rate``."""

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The control-frame and reset buckets a connection draws on, its own or its peer's."""

    control: Bucket
    resets: Bucket

    @classmethod
    def fresh(cls, budget: Budget, clock: Clock) -> Buckets:
        return cls(
            Bucket(budget.control_rate, budget.control_burst, clock),
            Bucket(budget.reset_rate, budget.reset_burst, clock),
        )


# What kind of abuse a connection error answers (``ProtocolError.abuse``).
# frames that cost work and move nothing forward; oversized blocks; DATA beyond the window
CONTROL_ABUSE = "control"
RESET_ABUSE = "reset"  # streams reset faster than the reset budget


class ProtocolError(Exception):
    """A connection error (RFC 9113 5.4.1): send GOAWAY with ``code`` and close.

    ``abuse`` is set when the peer ran over a budget: every ENHANCE_YOUR_CALM is
    ``CONTROL_ABUSE`` unless raised as ``RESET_ABUSE``; so is DATA beyond the connection
    window (FLOW_CONTROL_ERROR); other codes are no abuse ("").
    """

    def __init__(self, code: int, message: str, abuse: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        if abuse is None:
            abuse = CONTROL_ABUSE if code == ENHANCE_YOUR_CALM else ""
        self.abuse = abuse


class Handler(Protocol):
    """What a connection tells its application, from inside ``Connection.receive``."""

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None: ...

    def on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...

    def on_reset(self, stream_id: int) -> None: ...  # the stream is gone: by peer or error

    def on_window(self, stream_id: int) -> None: ...  # 0: the connection's window grew

    def on_goaway(self) -> None: ...

    # A new stream whose header list is over ``max_header_list``: the handler answers it
    # (gRPC: RESOURCE_EXHAUSTED) instead of the whole connection paying for one call.
    def on_oversized(self, stream_id: int, end_stream: bool) -> None: ...

    def on_reset_sent(self, stream_id: int, code: int) -> None: ...  # our RST_STREAM


@dataclasses.dataclass
class _Stream:
    send_window: int
    recv_window: int
    remote_open: bool  # the peer has not yet ended its side
    content_length: int | None = None
    received: int = 0
    consumed: int = 0  # bytes the handler is done with, not yet granted back


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with ``first``'s high bits set in the first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers: Headers) -> bytes:
    """A header block of static-table references and literals without indexing.

    Never touching the peer's dynamic table (RFC 7541 6.2.2) keeps encoding stateless, so
    a block can be built once and reused on any connection; the static table still makes
    ``:status: 200`` one byte and ``content-type`` a one-byte name.
    """
    out = bytearray()
    for name, value in headers:
        index = _STATIC_FIELDS.get((name, value))
        if index is not None:
            out += _integer(index, 7, 0x80)
            continue
        index = _STATIC_NAMES.get(name)
        if index is None:
            out += b"\x00" + _integer(len(name), 7) + name
        else:
            out += _integer(index, 4)
        out += _integer(len(value), 7) + value
    return bytes(out)


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


class _StreamError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Connection:
    """One server connection's HTTP/2 state; bytes in through ``receive``, out via ``out``."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_streams: int = 1024,
        window: int = 4 * 1024 * 1024,
        max_header_list: int = 64 * 1024,
        budget: Budget = Budget(),
        clock: Clock = time.monotonic,
        buckets: Buckets | None = None,
    ) -> None:
        self.out = bytearray()
        self._handler = handler
        self._max_streams = max_streams
        self._window = window
        self._max_header_list = max_header_list
        self._budget = budget
        self._max_block = max(budget.max_header_block, max_header_list)
        # Shared with the peer's other connections when given, else this connection's own.
        buckets = buckets or Buckets.fresh(budget, clock)
        self._control = buckets.control
        self._resets = buckets.resets
        # Decoding stops (a connection error) only at the hard cap: a block between the two
        # limits must still be decoded, or the HPACK table would fall out of step.
        self._decoder = hpack.Decoder(max_header_list_size=self._max_block)
        self._blocks: dict[bytes, tuple[Headers, bool]] = {}  # see _decode; bool: oversized
        self._buffer = b""
        self._preface = False
        self._settled = False  # the peer's first SETTINGS arrived
        self._streams: dict[int, _Stream] = {}
        self._closed: dict[int, bool] = {}  # stream id -> we reset it (late frames ignored)
        self._highest = 0
        self._block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments
        self._send_window = DEFAULT_WINDOW
        # The connection's window starts at 65,535 whatever SETTINGS say (RFC 9113 6.9.2).
        self._connection_window = max(window, DEFAULT_WINDOW)
        self._recv_window = self._connection_window
        self._unacknowledged = 0  # connection-level bytes consumed but not yet re-granted
        # DATA of a stream already gone is thrown away here, never reaching the handler; by
        # default its window is granted back at once. A server under memory pressure may
        # replace this to hold that window back (extauthz.h2grpc does).
        self.on_discarded: Callable[[int], None] = self._release
        self._empty_frames = 0  # consecutive DATA frames without data or END_STREAM
        self._peer_window = DEFAULT_WINDOW
        self._peer_frame = FRAME_SIZE
        self._dispatch = {
            DATA: self._on_data,
            HEADERS: self._on_headers,
            PRIORITY: self._on_priority,
            RST_STREAM: self._on_rst_stream,
            SETTINGS: self._on_settings,
            PUSH_PROMISE: self._on_push_promise,
            PING: self._on_ping,
            GOAWAY: self._on_goaway,
            WINDOW_UPDATE: self._on_window_update,
            CONTINUATION: self._on_continuation,
        }

    @property
    def partial(self) -> int:
        """Bytes read and kept for a frame not yet whole (at most one frame and its head)."""
        return len(self._buffer)

    @property
    def settled(self) -> bool:
        """Whether the peer has sent its preface and first SETTINGS (the handshake)."""
        return self._settled

    # -- output --------------------------------------------------------------------------

    def start(self) -> None:
        """Our SETTINGS and connection window, the first thing a server sends."""
        settings = _SETTING.pack(MAX_CONCURRENT_STREAMS, self._max_streams)
        settings += _SETTING.pack(INITIAL_WINDOW_SIZE, self._window)
        settings += _SETTING.pack(MAX_HEADER_LIST_SIZE, self._max_header_list)
        self.out += frame_header(len(settings), SETTINGS, 0, 0) + settings
        if self._connection_window > DEFAULT_WINDOW:
            self._window_update(0, self._connection_window - DEFAULT_WINDOW)

    def window(self, stream_id: int) -> int:
        """How many DATA bytes may be sent on the stream now (0 if it is gone)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else max(0, min(self._send_window, stream.send_window))

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        """Send an encoded header block; ignored if the stream is already gone."""
        if stream_id not in self._streams:
            return
        flags = END_STREAM if end_stream else 0
        size = self._peer_frame
        if len(block) <= size:
            self.out += frame_header(len(block), HEADERS, flags | END_HEADERS, stream_id) + block
        else:
            self._send_fragmented(stream_id, block, flags)
        if end_stream:
            self._ended_locally(stream_id)

    def _send_fragmented(self, stream_id: int, block: bytes, flags: int) -> None:
        size = self._peer_frame
        chunks = [block[i : i + size] for i in range(0, len(block), size)]
        for index, chunk in enumerate(chunks):
            kind = HEADERS if index == 0 else CONTINUATION
            chunk_flags = (flags if index == 0 else 0) | (
                END_HEADERS if index == len(chunks) - 1 else 0
            )
            self.out += frame_header(len(chunk), kind, chunk_flags, stream_id) + chunk

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send DATA within the window (callers check ``window`` first)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if len(data) > min(self._send_window, stream.send_window):
            raise ValueError(f"{len(data)} bytes exceed stream {stream_id}'s send window")
        self._send_window -= len(data)
        stream.send_window -= len(data)
        size = self._peer_frame
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            last = end_stream and start + size >= len(data)
            self.out += frame_header(len(chunk), DATA, END_STREAM if last else 0, stream_id)
            self.out += chunk
        if not data and end_stream:
            self.out += frame_header(0, DATA, END_STREAM, stream_id)
        if end_stream:
            self._ended_locally(stream_id)

    def reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM: the stream ends now; frames the peer already sent are ignored."""
        self.out += frame_header(4, RST_STREAM, 0, stream_id) + _U32.pack(code)
        self._streams.pop(stream_id, None)
        self._remember_closed(stream_id, reset=True)
        self._handler.on_reset_sent(stream_id, code)

    def goaway(self, code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        last = self._highest if last_stream_id is None else last_stream_id
        self.out += frame_header(8, GOAWAY, 0, 0) + _GOAWAY.pack(last, code)

    def _ended_locally(self, stream_id: int) -> None:
        stream = self._streams[stream_id]
        if stream.remote_open:
            # The answer is complete while the request is not (an early error): RFC 9113
            # 8.1 asks for RST_STREAM NO_ERROR so the client stops sending its body.
            self.reset(stream_id, NO_ERROR)
        else:
            del self._streams[stream_id]
            self._remember_closed(stream_id, reset=False)

    def _remember_closed(self, stream_id: int, reset: bool) -> None:
        self._closed[stream_id] = reset
        if len(self._closed) > _CLOSED_MEMORY:
            del self._closed[next(iter(self._closed))]

    def _window_update(self, stream_id: int, increment: int) -> None:
        self.out += frame_header(4, WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment)

    def consumed(self, stream_id: int, count: int) -> None:
        """The handler is done with ``count`` DATA bytes of a stream: the peer may send more.

        Windows are granted back in halves, so a steady stream of requests costs one
        WINDOW_UPDATE per half window, and only for bytes actually taken off our hands.
        """
        if count <= 0:
            return
        self._release(count)
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open:
            return
        stream.consumed += count
        if stream.consumed >= self._window // 2:
            self._window_update(stream_id, stream.consumed)
            stream.recv_window += stream.consumed
            stream.consumed = 0

    def _release(self, count: int) -> None:
        self._unacknowledged += count
        if self._unacknowledged >= self._connection_window // 2:
            self._window_update(0, self._unacknowledged)
            self._recv_window += self._unacknowledged
            self._unacknowledged = 0

    # -- input ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Parse every complete frame in ``self``'s buffer plus ``data``."""
        buffer = self._buffer + data if self._buffer else data
        if not self._preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(buffer):
                    raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._buffer = buffer
                return
            if not buffer.startswith(PREFACE):
                raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface = True
            buffer = buffer[len(PREFACE) :]
        self._buffer = buffer[self._frames(buffer) :]

    def _frames(self, buffer: bytes) -> int:
        position, size = 0, len(buffer)
        while size - position >= 9:
            high, low, kind, flags, stream_id = _HEAD.unpack_from(buffer, position)
            length = high << 8 | low
            if length > FRAME_SIZE:
                raise ProtocolError(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            end = position + 9 + length
            if end > size:
                break
            self._frame(kind, flags, stream_id & MAX_WINDOW, buffer[position + 9 : end])
            position = end
        return position

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._settled and kind != SETTINGS:
            raise ProtocolError(PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if self._block is not None and kind != CONTINUATION:
            raise ProtocolError(PROTOCOL_ERROR, "a header block was interrupted")
        handle = self._dispatch.get(kind)
        if handle is None:
            self._calm("frames of unknown types")
            return  # unknown frame types are ignored (RFC 9113 4.1)
        try:
            handle(flags, stream_id, payload)
        except _StreamError as error:
            self.reset(stream_id, error.code)
            self._handler.on_reset(stream_id)

    def _calm(self, what: str) -> None:
        """Spend one control-frame token, or end the connection: a flood of ``what``."""
        if not self._control.take():
            raise ProtocolError(ENHANCE_YOUR_CALM, f"too many {what}")

    # -- frames --------------------------------------------------------------------------

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        self._take(len(payload))
        data = _unpad(flags, payload)
        self._count_empty(not data and not flags & END_STREAM)
        stream = self._streams.get(stream_id)
        # Padding, and whatever never reaches the handler, is consumed at once.
        try:
            if stream is None:
                self._late_frame(stream_id, "DATA")
                self.on_discarded(len(payload))
                return
            if not stream.remote_open:
                raise _StreamError(STREAM_CLOSED)
            stream.recv_window -= len(payload)
            if stream.recv_window < 0:
                raise _StreamError(FLOW_CONTROL_ERROR)
            end = bool(flags & END_STREAM)
            self._count_body(stream, len(data), end)
        except _StreamError:
            self._release(len(payload))
            raise
        if len(payload) != len(data):
            self._release(len(payload) - len(data))
        if end:
            stream.remote_open = False
        self._handler.on_data(stream_id, data, end)

    def _count_empty(self, empty: bool) -> None:
        """Refuse a run of DATA frames that carry nothing (CVE-2019-9518, "empty frames").

        Each costs a parse and a handler call but moves no request forward; Envoy's
        ``max_consecutive_inbound_frames_with_empty_payload`` guards the same way. Empty
        frames also draw on the control-frame budget, so interleaving them with real
        ones does not make a flood free.
        """
        if not empty:
            self._empty_frames = 0
            return
        self._calm("empty frames")
        self._empty_frames += 1
        if self._empty_frames > MAX_EMPTY_FRAMES:
            raise ProtocolError(ENHANCE_YOUR_CALM, f"over {MAX_EMPTY_FRAMES} empty DATA frames")

    def _take(self, length: int) -> None:
        """Account a DATA frame against the connection window (granted back on ``consumed``)."""
        self._recv_window -= length
        if self._recv_window < 0:
            # No conforming client gets here (Envoy never does): one that keeps sending
            # after we stopped granting window is flooding us, and is treated as such.
            raise ProtocolError(
                FLOW_CONTROL_ERROR, "DATA beyond the connection window", CONTROL_ABUSE
            )

    def _count_body(self, stream: _Stream, length: int, end: bool) -> None:
        if stream.content_length is None:
            return
        stream.received += length
        if stream.received > stream.content_length or (
            end and stream.received != stream.content_length
        ):
            raise _StreamError(PROTOCOL_ERROR)  # RFC 9113 8.1.1: malformed

    def _late_frame(self, stream_id: int, kind: str) -> None:
        """A frame for a stream that is not open: closed, reset by us, or never opened."""
        if stream_id > self._highest:
            raise ProtocolError(PROTOCOL_ERROR, f"{kind} on idle stream {stream_id}")
        if self._closed.get(stream_id):
            return  # we reset it; the peer may have sent this before it knew
        raise _StreamError(STREAM_CLOSED)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0")
        fragment = _unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(fragment) < 5:
                raise ProtocolError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            depends_on = _U32.unpack_from(fragment)[0] & MAX_WINDOW
            fragment = fragment[5:]
            if depends_on == stream_id:  # RFC 9113 5.3.1, judged once the block is decoded
                flags |= _SELF_DEPENDENT
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, fragment)
        else:
            self._block = (stream_id, flags, bytearray(fragment))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block is None or self._block[0] != stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        _, first_flags, fragments = self._block
        if not payload and not flags & END_HEADERS:
            self._calm("empty CONTINUATION frames")
        fragments += payload
        if len(fragments) > self._max_block:
            raise ProtocolError(ENHANCE_YOUR_CALM, "a header block over the size limit")
        if flags & END_HEADERS:
            self._block = None
            self._header_block(stream_id, first_flags, bytes(fragments))

    def _decode(self, block: bytes) -> tuple[Headers, bool]:
        """Decode a header block, and whether it is over the list size; shared, do not change.

        Envoy sends the same block for every Check on a connection (``:path`` as a literal,
        the rest as table indexes). A block that only reads the dynamic table means the same
        headers until some block writes to it, so those are remembered by their bytes, and
        forgotten at every write. Every block is decoded or recalled, even for a stream
        about to be refused: HPACK state is shared by the whole connection (RFC 9113 4.3).
        """
        known = self._blocks.get(block)
        if known is not None:
            return known
        try:
            headers: Headers = tuple(self._decoder.decode(block, raw=True))
        except hpack.exceptions.OversizedHeaderListError as exc:
            raise ProtocolError(ENHANCE_YOUR_CALM, str(exc)) from None
        except (hpack.exceptions.HPACKError, IndexError, ValueError) as exc:
            raise ProtocolError(COMPRESSION_ERROR, f"{type(exc).__name__}: {exc}") from None
        size = sum(len(name) + len(value) for name, value in headers)
        decoded = headers, size + _FIELD_OVERHEAD * len(headers) > self._max_header_list
        if not _reads_only(block):
            self._blocks.clear()
        elif len(self._blocks) < _BLOCK_MEMORY:
            self._blocks[block] = decoded
        return decoded

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        self._empty_frames = 0
        headers, oversized = self._decode(block)
        end = bool(flags & END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is not None:
            if oversized:
                raise _StreamError(ENHANCE_YOUR_CALM)
            self._trailers(stream_id, stream, headers, end)
            return
        if stream_id <= self._highest:
            if stream_id in self._closed:
                self._late_frame(stream_id, "HEADERS")
                return
            raise ProtocolError(PROTOCOL_ERROR, f"stream {stream_id} reuses a lower id")
        if stream_id % 2 == 0:
            raise ProtocolError(PROTOCOL_ERROR, f"client stream {stream_id} is even")
        self._highest = stream_id
        if flags & _SELF_DEPENDENT:
            raise _StreamError(PROTOCOL_ERROR)
        self._open(stream_id, headers, end, oversized)

    def _open(self, stream_id: int, headers: Headers, end: bool, oversized: bool) -> None:
        # A stream error raised here is answered by _frame's reset, which also remembers
        # the id as closed, so a refused or malformed stream's late frames are ignored.
        content_length = None if oversized else _content_length(headers)
        if len(self._streams) >= self._max_streams:
            raise _StreamError(REFUSED_STREAM)
        stream = _Stream(self._peer_window, self._window, not end, content_length)
        self._streams[stream_id] = stream
        if oversized:
            self._handler.on_oversized(stream_id, end)
            return
        if end:
            self._count_body(stream, 0, True)
        self._handler.on_headers(stream_id, headers, end)

    def _trailers(self, stream_id: int, stream: _Stream, headers: Headers, end: bool) -> None:
        if not stream.remote_open:
            raise _StreamError(STREAM_CLOSED)
        if not end or any(name.startswith(b":") for name, _ in headers):
            raise _StreamError(PROTOCOL_ERROR)  # RFC 9113 8.1: malformed trailers
        self._count_body(stream, 0, True)
        stream.remote_open = False
        self._handler.on_data(stream_id, b"", True)

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._calm("PRIORITY frames")
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise _StreamError(FRAME_SIZE_ERROR)
        if _U32.unpack_from(payload)[0] & MAX_WINDOW == stream_id:
            raise _StreamError(PROTOCOL_ERROR)

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
        if stream_id == 0 or stream_id > self._highest:
            raise ProtocolError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        # Every reset counts, answered or not: a call answered in the turn that read it is
        # already done when its RST_STREAM is read, and costs the same as one that is not.
        if not self._resets.take():
            raise ProtocolError(ENHANCE_YOUR_CALM, "too many streams reset", RESET_ABUSE)
        if self._streams.pop(stream_id, None) is not None:
            self._remember_closed(stream_id, reset=True)
            self._handler.on_reset(stream_id)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if self._settled or flags & ACK:  # the first SETTINGS is the handshake
            self._calm("SETTINGS frames")
        if flags & ACK:
            if payload:
                raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        if len(payload) > 6 * self._budget.settings_entries:
            raise ProtocolError(ENHANCE_YOUR_CALM, f"SETTINGS of {len(payload) // 6} entries")
        self._settled = True
        window = None
        for offset in range(0, len(payload), 6):
            identifier, value = _SETTING.unpack_from(payload, offset)
            if identifier == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
                window = value
            else:
                self._setting(identifier, value)
        if window is not None:
            self._initial_window(window)  # only the last value counts: one pass per frame
        self.out += frame_header(0, SETTINGS, ACK, 0)
        self._handler.on_window(0)

    def _initial_window(self, value: int) -> None:
        delta, self._peer_window = value - self._peer_window, value
        if not delta:
            return
        for stream in self._streams.values():
            stream.send_window += delta
            if stream.send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")

    def _setting(self, identifier: int, value: int) -> None:
        if identifier == ENABLE_PUSH and value > 1:
            raise ProtocolError(PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        if identifier == MAX_FRAME_SIZE:
            if not FRAME_SIZE <= value <= _MAX_FRAME_SIZE_LIMIT:
                raise ProtocolError(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
            self._peer_frame = value
        # HEADER_TABLE_SIZE does not matter to an encoder that never indexes; the peer's
        # MAX_CONCURRENT_STREAMS limits pushes, which a server here never makes.

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ProtocolError(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._calm("PING frames")
        if stream_id != 0:
            raise ProtocolError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ProtocolError(FRAME_SIZE_ERROR, "PING is not 8 bytes")
        if not flags & ACK:
            self.out += frame_header(8, PING, ACK, 0) + payload

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ProtocolError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ProtocolError(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        self._handler.on_goaway()

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        increment = _U32.unpack(payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise ProtocolError(PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self._handler.on_window(0)
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._highest:
                raise ProtocolError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle {stream_id}")
            return  # a closed stream's window no longer matters
        if increment == 0:
            raise _StreamError(PROTOCOL_ERROR)
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise _StreamError(FLOW_CONTROL_ERROR)
        self._handler.on_window(stream_id)


def _reads_only(block: bytes) -> bool:
    """Whether a well-formed HPACK block leaves the dynamic table as it was (RFC 7541 6).

    Indexed fields and literals without (or never) indexing only read it; a literal with
    incremental indexing or a table size update writes it.
    """
    position = 0
    while position < len(block):
        first = block[position]
        if first & 0x80:
            position = _hpack_integer(block, position, 7)[1]
        elif first & 0x40 or first & 0x20:
            return False
        else:
            name_index, position = _hpack_integer(block, position, 4)
            if name_index == 0:
                position = _skip_string(block, position)
            position = _skip_string(block, position)
    return True


def _hpack_integer(block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 5.1: the integer at ``position`` and the position after it."""
    limit = (1 << prefix_bits) - 1
    value = block[position] & limit
    position += 1
    if value < limit:
        return value, position
    shift = 0
    while True:
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _skip_string(block: bytes, position: int) -> int:
    length, position = _hpack_integer(block, position, 7)
    return position + length


def _content_length(headers: Headers) -> int | None:
    """A request's content-length, if any, once its headers are checked (RFC 9113 8.2, 8.3.1).

    Malformed headers are a stream error of type PROTOCOL_ERROR.
    """
    seen: set[bytes] = set()
    regular = False
    content_length: int | None = None
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _REQUEST_PSEUDO or name in seen:
                raise _StreamError(PROTOCOL_ERROR)
            if name == b":path" and not value:
                raise _StreamError(PROTOCOL_ERROR)
            seen.add(name)
            continue
        regular = True
        if name != name.lower() or name in _CONNECTION_SPECIFIC:
            raise _StreamError(PROTOCOL_ERROR)
        if name == b"te" and value != b"trailers":
            raise _StreamError(PROTOCOL_ERROR)
        if name == b"content-length":
            if (
                not value.isdigit()
                or len(value) > _CONTENT_LENGTH_DIGITS
                or content_length is not None
            ):
                raise _StreamError(PROTOCOL_ERROR)
            content_length = int(value)
    if b":method" not in seen or b":scheme" not in seen or b":path" not in seen:
        raise _StreamError(PROTOCOL_ERROR)
    return content_length
