"""A lean gRPC server over cleartext HTTP/2, on asyncio and this package's ``http2`` codec.

Why not grpc.aio: measured behind Envoy on this project's 2-core machines, a bare allow-all
grpc.aio server spends about 0.5 ms of CPU per Check, mostly handing each call between grpc
core's threads and the event loop (under strace: about 5 futex calls and 6 writes per call),
and Envoy spends about 0.35 ms more per call talking to it. The same allow-all answer from this
server costs far less (``docs/extauthz.md``). A call is handled inside the ``buffer_updated``
turn that completes its request (up to 8 calls of one connection a turn; the rest in the
next turns): the message is parsed, the handler runs eagerly, and the response leaves at
once.

Scope, deliberately small: unary methods, server-streaming methods, and bidirectional
methods that answer each request message with exactly one response (server reflection).
Messages are identity-encoded (a compressed one is answered UNIMPLEMENTED) and capped at
``max_message_bytes`` (RESOURCE_EXHAUSTED above). It speaks h2c with prior knowledge, as
Envoy's gRPC clients and grpc's insecure channels do, over TCP or a unix socket. A call
that suspends is ended with DEADLINE_EXCEEDED when its ``grpc-timeout`` passes.

Against hostile peers (``config.Limits``): a cap on connections, a handshake and an idle
timeout, a process-wide cap on request bytes held in unfinished calls, per-call
RESOURCE_EXHAUSTED for oversized metadata, and the codec's own budgets, kept per peer
address with a penalty box for peers cut off for abuse (``extauthz.peers``). Whatever goes
wrong inside a connection, in any callback asyncio makes into it, ends in a GOAWAY or a
status, and is counted in ``events``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

from extauthz import config, http2, listen, peers

log = logging.getLogger(__name__)

# gRPC status codes used here (grpc/status.proto).
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, NOT_FOUND, RESOURCE_EXHAUSTED = 0, 1, 2, 4, 5, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 12, 13, 14

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # grpc's own default receive limit
_MIN_WINDOW = 4 * 1024 * 1024  # so a request body of any allowed size needs no round trip
_MAX_UNSENT_ON_ABORT = 64 * 1024
_TURN_BYTES = 16 * 1024  # read bytes of one connection handled per event-loop turn
# Calls of one connection started per turn: a Check costs 0.1-0.3 ms, so 16 KiB of them
# (about 40) would hold every other connection's answers for several milliseconds.
_TURN_CALLS = 8
_DEFAULT_LIMITS = config.Limits()
_PREFIX = struct.Struct(">BI")  # gRPC length-prefixed message: compressed flag, length
_CODES = {
    http2.NO_ERROR: "no_error",
    http2.PROTOCOL_ERROR: "protocol_error",
    http2.INTERNAL_ERROR: "internal_error",
    http2.FLOW_CONTROL_ERROR: "flow_control_error",
    http2.STREAM_CLOSED: "stream_closed",
    http2.FRAME_SIZE_ERROR: "frame_size_error",
    http2.REFUSED_STREAM: "refused_stream",
    http2.CANCEL: "cancel",
    http2.COMPRESSION_ERROR: "compression_error",
    http2.ENHANCE_YOUR_CALM: "enhance_your_calm",
}
# Only a refusal of a compressed message names the encodings taken (gRPC's compression
# spec); elsewhere identity, the only one, is what the header's absence means.
_ACCEPT_IDENTITY = (b"grpc-accept-encoding", b"identity")
_RESPONSE_BLOCK = http2.encode_headers(
    [(b":status", b"200"), (b"content-type", b"application/grpc")]
)
_OK_TRAILERS = http2.encode_headers([(b"grpc-status", b"0")])

_P = ParamSpec("_P")
_R = TypeVar("_R")

Unary = Callable[[Any], Awaitable[Any]]
ServerStream = Callable[[Any], AsyncIterator[Any]]
PerMessage = Callable[[Any], Any]


class RpcError(Exception):
    """Raised by a handler to end its call with a gRPC status other than OK."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class Method:
    """One RPC: its path, how to parse its request, and exactly one kind of handler.

    ``unary`` answers one request with one response; ``server_stream`` yields responses to
    one request; ``per_message`` (synchronous) answers each message of a client stream.
    Responses are protobuf messages (anything with ``SerializeToString``).
    """

    path: str  # "/package.Service/Method"
    parse: Callable[[bytes], Any]
    unary: Unary | None = None
    server_stream: ServerStream | None = None
    per_message: PerMessage | None = None
    # The answer to a request that does not parse, given the reason; None: INTERNAL, as
    # gRPC's status code table says for "error parsing request proto".
    unparsable: Callable[[str], Any] | None = None

    def __post_init__(self) -> None:
        kinds = [self.unary, self.server_stream, self.per_message]
        if sum(k is not None for k in kinds) != 1:
            raise ValueError(f"{self.path}: give exactly one of unary, server_stream, per_message")


def run_eagerly(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` until it first suspends: (True, result) if it finished, else (False, task).

    The check path rarely suspends (a cached token and an in-process policy never do), so a
    Task per call would be pure overhead: measured here, 0.045 ms of CPU per call and an
    extra write. Code run this way must not need ``asyncio.current_task()`` before its first
    suspension (``asyncio.timeout`` does; ``asyncio.wait_for`` does not). Exceptions raised
    before the first suspension propagate to the caller.
    """
    try:
        awaited = coro.send(None)
    except StopIteration as done:
        return True, done.value
    resumed = _Resumed(coro, awaited)
    task = asyncio.ensure_future(resumed.run())
    task.add_done_callback(resumed.abandon)
    return False, task


class _Resumed:
    """What asyncio.Task does for a coroutine it drives, from the coroutine's first yield on."""

    def __init__(self, coro: Coroutine[Any, Any, Any], awaited: Any) -> None:
        self._coro = coro
        self._awaited = awaited

    async def run(self) -> Any:
        # Wait for the future the coroutine yielded, then send None so that its ``await``
        # reads the future's result (or raises its exception), until it returns.
        while True:
            awaited = self._awaited
            try:
                if awaited is None:  # a bare yield (asyncio.sleep(0)): give up one turn
                    await asyncio.sleep(0)
                else:
                    awaited._asyncio_future_blocking = False
                    await asyncio.wait((awaited,))
            except asyncio.CancelledError:
                if awaited is not None:
                    awaited.cancel()
                step: Callable[[Any], Any] = self._coro.throw
                arg: Any = asyncio.CancelledError()
            else:
                step, arg = self._coro.send, None
            try:
                self._awaited = step(arg)
            except StopIteration as done:
                return done.value

    def abandon(self, _task: asyncio.Future[Any]) -> None:
        # A Task cancelled before its first step never runs ``run``: end the coroutine and
        # what it waits for here, as a cancelled asyncio.Task would.
        if self._awaited is not None and not self._awaited.done():
            self._awaited.cancel()
        self._coro.close()


def _grpc_message(text: str) -> bytes:
    """Percent-encode a status message as the gRPC HTTP/2 spec asks."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def _trailers(code: int, message: str = "", extra: http2.Headers = ()) -> bytes:
    trailers = [(b"grpc-status", str(code).encode())]
    if message:
        trailers.append((b"grpc-message", _grpc_message(message)))
    return http2.encode_headers([*trailers, *extra])


def frame(message: Any) -> bytes:
    """A protobuf message as one gRPC length-prefixed, uncompressed message."""
    payload: bytes = message.SerializeToString()
    return _PREFIX.pack(0, len(payload)) + payload


@dataclasses.dataclass
class _Stream:
    """One call's state on a connection."""

    stream_id: int
    method: Method | None
    identity: bool  # grpc-encoding is identity (or absent)
    timeout: bytes | None  # grpc-timeout as sent; parsed only if the call suspends
    buffer: bytearray = dataclasses.field(default_factory=bytearray)
    started: bool = False  # response headers sent
    task: asyncio.Future[Any] | None = None
    timer: asyncio.TimerHandle | None = None


@dataclasses.dataclass
class _Outbound:
    """Data not yet sent for a stream (peer's flow-control window), then its trailers."""

    data: bytearray = dataclasses.field(default_factory=bytearray)
    trailers: bytes | None = None


def _guarded(
    method: Callable[Concatenate[_Connection, _P], _R],
) -> Callable[Concatenate[_Connection, _P], _R | None]:
    """Run a callback into a connection so that a bug of ours ends only that connection.

    Every entry point asyncio calls (protocol methods, timers, done callbacks) goes
    through this: an exception escaping one would reach only the loop's handler, leaving
    the connection half-dead and its client waiting for answers that never come.
    """

    @functools.wraps(method)
    def guarded(self: _Connection, /, *args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._internal_error(exc)
            return None

    return guarded


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/2 connection: frames from the socket through ``http2``, calls dispatched.

    It reads at most one turn's bytes (``_TURN_BYTES``) at a time into the server's one read
    buffer (``get_buffer``), and pauses reading while a turn's work is left over, so what a
    peer has sent and we have not parsed stays in the kernel's socket buffer, not in ours: a
    fast sender costs us no read-ahead, and thirty of them no 256 KiB apiece.
    """

    def __init__(
        self,
        server: Server,
        peer: str = "",
        buckets: http2.Buckets | None = None,
        slot: peers.Slot | None = None,
    ) -> None:
        self._server = server
        self._peer = peer  # its key in server.peers
        self._slot = slot  # its place in the peer's count of open connections
        self._withheld = 0  # bytes thrown away under memory pressure, window not yet given
        self._partial = 0  # the codec's bytes of an unfinished frame, counted in server.held
        self._h2 = http2.Connection(
            self,
            max_streams=server.max_streams,
            window=server.window,
            max_header_list=server.limits.max_metadata_bytes,
            budget=server.budget,
            clock=server.clock,
            buckets=buckets,
        )
        self._h2.on_discarded = functools.partial(self._drop, 0)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._outbound: dict[int, _Outbound] = {}
        self._closing = False
        self._heard = True  # bytes arrived since the idle timer last looked
        # Requests complete but over this turn's call quota, in order: (stream, payload).
        self._deferred: collections.deque[tuple[_Stream, bytes]] = collections.deque()
        self._calls_this_turn = 0
        self._turn_pending = False  # a _next_turn is scheduled and reading is paused
        self._writing_paused = False
        self._timers: list[asyncio.TimerHandle] = []

    # -- asyncio.Protocol ----------------------------------------------------------------

    @_guarded
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        server = self._server
        if len(server.connections) >= server.limits.max_connections:
            server.count("connection_refused")
            self._h2.start()
            self._abort(http2.ENHANCE_YOUR_CALM)
            return
        server.connections.add(self)
        self._h2.start()
        self._flush()
        loop = asyncio.get_running_loop()
        self._timers = [
            loop.call_later(server.limits.handshake_timeout_seconds, self._handshake_over),
            loop.call_later(server.limits.idle_timeout_seconds, self._idle_tick),
        ]
        if server.draining:
            self.drain()

    @_guarded
    def connection_lost(self, exc: Exception | None) -> None:
        self._hold_partial(0)
        self._server.connections.discard(self)
        self._server.withholding.discard(self)
        if self._slot is not None:
            self._slot.release()
        for timer in self._timers:
            timer.cancel()
        for stream in self._streams.values():
            self._release(stream)
            _stop_clock(stream)
        self._streams.clear()
        self._server.idle_changed()

    def get_buffer(self, sizehint: int) -> memoryview:
        # asyncio reads into it and calls buffer_updated in the same callback (selector and
        # TLS transports alike), so one buffer serves every connection of the loop.
        return self._server.read_buffer

    @_guarded
    def buffer_updated(self, nbytes: int) -> None:
        # One turn serves at most one read (_TURN_BYTES) and _TURN_CALLS calls of one
        # connection, so a peer that sends requests as fast as it can does not hold up
        # everyone else's answers; the rest waits for the next turns, with reading paused
        # meanwhile (so no read ever arrives while a turn is pending).
        self._heard = True
        self._calls_this_turn = 0
        self._receive(self._server.read_buffer[:nbytes].tobytes())
        self._more_turns()

    @_guarded
    def eof_received(self) -> bool | None:
        # A client that half-closes can send nothing more, not even the WINDOW_UPDATEs a
        # long answer needs: None lets asyncio close the connection, ending its calls.
        return None

    def _more_turns(self) -> None:
        """Schedule the next turn if work is left over, pausing reading until it is done."""
        transport = self._transport
        if self._turn_pending or not self._deferred:
            return
        if transport is None or transport.is_closing():
            self._deferred.clear()
            return
        self._turn_pending = True
        transport.pause_reading()
        asyncio.get_running_loop().call_soon(self._next_turn)

    @_guarded
    def _next_turn(self) -> None:
        self._turn_pending = False
        transport = self._transport
        if transport is None or transport.is_closing():  # cut off: nothing more to spend
            self._deferred.clear()
            return
        self._calls_this_turn = 0
        while self._deferred and self._calls_this_turn < _TURN_CALLS:
            stream, payload = self._deferred.popleft()
            if stream.stream_id in self._streams and stream.method is not None:
                self._start_call(stream, stream.method, payload)  # not reset meanwhile
        self._more_turns()
        if not self._turn_pending and not self._writing_paused and not transport.is_closing():
            transport.resume_reading()

    def _receive(self, data: bytes) -> None:
        try:
            self._h2.receive(data)
        except http2.ProtocolError as exc:
            log.info("h2grpc: closing a connection on an HTTP/2 protocol error: %s", exc)
            self._server.count("goaway_" + _CODES.get(exc.code, str(exc.code)))
            self._abort(exc.code)
            if exc.abuse:
                self._server.penalize(self._peer, exc.abuse)
            return
        self._hold_partial(self._h2.partial)
        self._flush()

    def _hold_partial(self, count: int) -> None:
        """Count the codec's unfinished frame in ``server.held``: it is request memory too."""
        self._server.held += count - self._partial
        self._partial = count

    @property
    def peer(self) -> str:
        """The peer's key in ``Server.peers``."""
        return self._peer

    def cut_off(self) -> None:
        """GOAWAY ENHANCE_YOUR_CALM and close: the peer went into the penalty box."""
        if self._transport is not None and not self._transport.is_closing():
            self._server.count("peer_penalty_closed")
            self._abort(http2.ENHANCE_YOUR_CALM)

    def _internal_error(self, exc: Exception) -> None:
        """A bug of ours: this connection ends with GOAWAY INTERNAL_ERROR, no other does."""
        log.error("h2grpc: closing a connection on an internal error", exc_info=exc)
        self._server.count("goaway_internal_error")
        self._server.connections.discard(self)
        try:
            self._abort(http2.INTERNAL_ERROR)
        except Exception:  # the transport itself is broken: drop it without a word
            if self._transport is not None:
                self._transport.abort()

    @_guarded
    def _handshake_over(self) -> None:
        if not self._h2.settled and self._transport is not None:
            self._server.count("handshake_timeout")
            self._abort(http2.PROTOCOL_ERROR)

    @_guarded
    def _idle_tick(self) -> None:
        """Close a connection that sent nothing for a whole period while no call ran."""
        running = any(s.task is not None for s in self._streams.values())
        if self._heard or running or self._outbound:
            self._heard = False
            period = self._server.limits.idle_timeout_seconds
            self._timers[1] = asyncio.get_running_loop().call_later(period, self._idle_tick)
            return
        self._server.count("idle_closed")
        self._abort(http2.NO_ERROR)

    @_guarded
    def pause_writing(self) -> None:
        # A peer that does not read (its PINGs and SETTINGS still want answers) must not
        # grow our write buffer without bound: stop reading from it until it catches up.
        self._writing_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    @_guarded
    def resume_writing(self) -> None:
        self._writing_paused = False
        transport = self._transport
        if transport is not None and not transport.is_closing() and not self._turn_pending:
            transport.resume_reading()

    # -- http2.Handler -------------------------------------------------------------------

    def on_headers(self, stream_id: int, headers: http2.Headers, end_stream: bool) -> None:
        fields = dict(headers)
        if fields.get(b":method") != b"POST":
            self._http_error(stream_id, b"405")
            return
        if not fields.get(b"content-type", b"").startswith(b"application/grpc"):
            self._http_error(stream_id, b"415")
            return
        path = fields.get(b":path", b"").decode("latin-1")
        identity = fields.get(b"grpc-encoding", b"identity") == b"identity"
        timeout = fields.get(b"grpc-timeout")
        stream = _Stream(stream_id, self._server.methods.get(path), identity, timeout)
        self._streams[stream_id] = stream
        if stream.method is None:
            self._finish(stream, UNIMPLEMENTED, f"unknown method {path}")
        elif end_stream:
            self._on_half_closed(stream)

    def on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._drop(stream_id, len(data))  # a call already answered
            return
        if data:
            stream.buffer += data
            server = self._server
            server.held += len(data)
            # A call whose request ends here is taken off our hands in this same turn: only
            # one that stays unfinished can be refused for what the process holds.
            if server.held > server.max_unfinished_bytes and not end_stream:
                limit = server.max_held_bytes
                server.count("buffered_bytes_exhausted")
                dropped = len(stream.buffer)
                stream.buffer.clear()
                server.held -= dropped
                self._drop(stream_id, dropped)
                self._finish(stream, RESOURCE_EXHAUSTED, f"over {limit} bytes of requests held")
                return
            self._take_messages(stream)
        if end_stream and stream_id in self._streams:
            self._on_half_closed(stream)

    def on_reset(self, stream_id: int) -> None:
        self._forget(stream_id)

    def on_reset_sent(self, stream_id: int, code: int) -> None:
        self._server.count("rst_stream_" + _CODES.get(code, str(code)))

    def on_window(self, stream_id: int) -> None:
        if stream_id:
            self._pump(stream_id)
        else:
            for pending in list(self._outbound):
                self._pump(pending)

    def on_goaway(self) -> None:
        self._closing = True
        self._close_if_idle()

    def on_oversized(self, stream_id: int, end_stream: bool) -> None:
        # grpcio's answer too: this call fails, the connection and its other calls go on.
        self._server.count("metadata_too_large")
        stream = _Stream(stream_id, None, True, None)
        self._streams[stream_id] = stream
        limit = self._server.limits.max_metadata_bytes
        self._finish(stream, RESOURCE_EXHAUSTED, f"request metadata over {limit} bytes")

    # -- requests ------------------------------------------------------------------------

    def _release(self, stream: _Stream, count: int | None = None) -> None:
        """Drop ``count`` bytes (default: all) from the front of a stream's request buffer."""
        count = len(stream.buffer) if count is None else count
        if not count:
            return
        del stream.buffer[:count]
        self._server.held -= count
        self._h2.consumed(stream.stream_id, count)
        self._server.relieve()

    def _drop(self, stream_id: int, count: int) -> None:
        """Request bytes read and thrown away: of a call already answered, or refused.

        Under memory pressure (over half of ``max_buffered_request_bytes`` held), they do
        not reopen the connection's window: a client that keeps sending bodies we refuse
        (the memory attack) stalls on its own flow control instead of making us parse them
        at full speed. The window reopens once the pressure is over (``Server.relieve``).
        A client whose requests fit one frame (Envoy's checks) never gets here.
        """
        server = self._server
        if count <= 0:
            return
        if server.held > server.max_held_bytes // 2:
            self._withheld += count
            server.withholding.add(self)
            return
        self._h2.consumed(stream_id, count)

    @_guarded  # called from another connection's callback: a bug here ends only this one
    def give_back(self) -> None:
        """The pressure is over: the window withheld from this connection reopens."""
        count, self._withheld = self._withheld, 0
        if count and self._transport is not None and not self._transport.is_closing():
            self._h2.consumed(0, count)
            self._flush()

    def _take_messages(self, stream: _Stream) -> None:
        method = stream.method
        while method is not None and len(stream.buffer) >= 5:
            flag, length = _PREFIX.unpack_from(stream.buffer)
            if not self._acceptable(stream, flag, length):
                return
            if method.per_message is None:
                if len(stream.buffer) > 5 + length:
                    # gRPC's status code table: a request cardinality violation.
                    self._finish(stream, UNIMPLEMENTED, "more than one request message")
                return  # the one request message is taken whole when the stream ends
            if len(stream.buffer) < 5 + length:
                return
            payload = bytes(stream.buffer[5 : 5 + length])
            self._release(stream, 5 + length)
            self._answer_one(stream, method, payload)

    def _acceptable(self, stream: _Stream, flag: int, length: int) -> bool:
        if length > self._server.max_message_bytes:
            limit = self._server.max_message_bytes
            self._finish(stream, RESOURCE_EXHAUSTED, f"message of {length} bytes over {limit}")
            return False
        if flag:
            if stream.identity:  # the flag without an encoding: a protocol violation
                self._finish(stream, INTERNAL, "a compressed message without grpc-encoding")
            else:
                message = "compressed messages are not supported"
                self._finish(stream, UNIMPLEMENTED, message, (_ACCEPT_IDENTITY,))
            return False
        return True

    def _on_half_closed(self, stream: _Stream) -> None:
        method = stream.method
        if method is None or stream.stream_id not in self._streams:
            return
        if method.per_message is not None:
            if stream.buffer:
                self._finish(stream, INTERNAL, "the stream ended inside a message")
            else:
                self._finish(stream, OK)
            return
        if not stream.buffer:
            self._finish(stream, UNIMPLEMENTED, "a unary call needs one request message")
            return
        if (
            len(stream.buffer) < 5
            or len(stream.buffer) != 5 + _PREFIX.unpack_from(stream.buffer)[1]
        ):
            self._finish(stream, INTERNAL, "the stream ended inside a message")
            return
        self._start_call(stream, method, bytes(stream.buffer[5:]))

    # -- calls ---------------------------------------------------------------------------

    def _parse(self, stream: _Stream, method: Method, payload: bytes) -> tuple[bool, Any]:
        try:
            return True, method.parse(payload)
        except Exception as exc:
            reason = f"cannot parse the request: {type(exc).__name__}"
            self._server.count("unparsable_request")
            if method.unparsable is not None and method.unary is not None:
                self._send_message(stream, method.unparsable(reason))
                self._finish(stream, OK)
            else:
                self._finish(stream, INTERNAL, reason)
            return False, None

    def _start_call(self, stream: _Stream, method: Method, payload: bytes) -> None:
        if self._calls_this_turn >= _TURN_CALLS:
            # Over this turn's quota: a later turn runs it. Its bytes stay held (and its
            # window closed) until then, and a reset before then cancels it for free.
            self._deferred.append((stream, payload))
            return
        self._calls_this_turn += 1
        self._release(stream)
        parsed, request = self._parse(stream, method, payload)
        if not parsed:
            return
        if method.unary is not None:
            coro: Coroutine[Any, Any, Any] = _unary(method.unary, request)
        else:
            assert method.server_stream is not None
            coro = self._stream_out(stream, method.server_stream(request))
        try:
            done, value = run_eagerly(coro)
        except Exception as exc:
            self._failed(stream, exc)
            return
        if done:
            if method.unary is not None:
                self._send_message(stream, value)
            self._finish(stream, OK)
            return
        stream.task = value
        value.add_done_callback(lambda task: self._call_done(stream, task))
        seconds = _timeout(stream.timeout)
        if seconds is not None:
            loop = asyncio.get_running_loop()
            stream.timer = loop.call_later(seconds, self._expired, stream)

    @_guarded
    def _expired(self, stream: _Stream) -> None:
        stream.timer = None
        self._finish(stream, DEADLINE_EXCEEDED, "the call's grpc-timeout passed")

    @_guarded
    def _call_done(self, stream: _Stream, task: asyncio.Future[Any]) -> None:
        if stream.stream_id not in self._streams:
            return
        if task.cancelled():
            self._finish(stream, CANCELLED, "the call was cancelled")
        elif task.exception() is not None:
            self._failed(stream, task.exception())
        else:
            if stream.method is not None and stream.method.unary is not None:
                self._send_message(stream, task.result())
            self._finish(stream, OK)
        self._flush()

    def _failed(self, stream: _Stream, exc: BaseException | None) -> None:
        if isinstance(exc, RpcError):
            self._finish(stream, exc.code, exc.message)
            return
        log.error("h2grpc: %s failed", stream.method.path if stream.method else "?", exc_info=exc)
        self._finish(stream, UNKNOWN, f"{type(exc).__name__} in the handler")

    async def _stream_out(self, stream: _Stream, replies: AsyncIterator[Any]) -> None:
        async for reply in replies:
            if stream.stream_id not in self._streams:
                return
            self._send_message(stream, reply)
            self._flush()

    def _answer_one(self, stream: _Stream, method: Method, payload: bytes) -> None:
        assert method.per_message is not None
        parsed, request = self._parse(stream, method, payload)
        if not parsed:
            return
        try:
            reply = method.per_message(request)
        except Exception as exc:
            self._failed(stream, exc)
            return
        self._send_message(stream, reply)

    # -- output --------------------------------------------------------------------------

    def _send_message(self, stream: _Stream, message: Any) -> None:
        if stream.stream_id not in self._streams:
            return
        if not stream.started:
            stream.started = True
            self._h2.send_headers(stream.stream_id, _RESPONSE_BLOCK)
        self._outbound.setdefault(stream.stream_id, _Outbound()).data += frame(message)
        self._pump(stream.stream_id)

    def _finish(
        self, stream: _Stream, code: int, message: str = "", extra: http2.Headers = ()
    ) -> None:
        """End the call with a status: trailers, or trailers-only if nothing was sent."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        self._release(stream)
        _stop_clock(stream)
        ok = code == OK and not message
        trailers = _OK_TRAILERS if ok else _trailers(code, message, extra)
        if not stream.started:
            self._h2.send_headers(stream.stream_id, _RESPONSE_BLOCK + trailers, end_stream=True)
        else:
            self._outbound.setdefault(stream.stream_id, _Outbound()).trailers = trailers
            self._pump(stream.stream_id)
        # Each answer leaves now, not with the rest of its read: Envoy's requests come in
        # bursts, and holding the first answer for the last one's check would add the
        # whole burst's time to its latency (allow-all at 1,000 rps: p50 5.2 -> 4.3 ms).
        self._flush()
        self._server.idle_changed()
        self._close_if_idle()

    def _pump(self, stream_id: int) -> None:
        pending = self._outbound.get(stream_id)
        if pending is None:
            return
        while pending.data:
            window = self._h2.window(stream_id)
            if window <= 0:
                return
            self._h2.send_data(stream_id, bytes(pending.data[:window]))
            del pending.data[:window]
        if pending.trailers is not None:
            self._h2.send_headers(stream_id, pending.trailers, end_stream=True)
            del self._outbound[stream_id]

    def _http_error(self, stream_id: int, status: bytes) -> None:
        self._h2.send_headers(stream_id, http2.encode_headers([(b":status", status)]), True)

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        self._outbound.pop(stream_id, None)
        if stream is not None:
            self._release(stream)
            _stop_clock(stream)
        self._server.idle_changed()
        self._close_if_idle()

    def _flush(self) -> None:
        out = self._h2.out
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(bytes(out))
        out.clear()

    # -- shutdown ------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self._streams) or bool(self._outbound)

    def drain(self) -> None:
        """Tell the client to open no new streams; calls in flight go on."""
        # RFC 9113 6.8's "shutting down" notice: the highest possible last-stream-id lets
        # requests already on their way finish; the final GOAWAY comes when idle.
        self._h2.goaway(http2.NO_ERROR, last_stream_id=http2.MAX_WINDOW)
        self._flush()
        self._closing = True
        self._close_if_idle()

    def cancel_calls(self) -> None:
        for stream in list(self._streams.values()):
            self._finish(stream, UNAVAILABLE, "the server is shutting down")
        self._flush()

    def _close_if_idle(self) -> None:
        if self._closing and not self.busy and self._transport is not None:
            if not self._transport.is_closing():
                self._h2.goaway(http2.NO_ERROR)
                self._flush()
            self._transport.close()

    def _abort(self, code: int) -> None:
        self._h2.goaway(code)
        self._flush()
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > _MAX_UNSENT_ON_ABORT:
            # A peer that stopped reading must not keep us holding its unsent answers:
            # drop them (the GOAWAY with them), rather than wait for it to read.
            transport.abort()
        else:
            transport.close()


def _stop_clock(stream: _Stream) -> None:
    """Cancel what runs on a call's behalf: its task and its deadline."""
    if stream.task is not None and not stream.task.done():
        stream.task.cancel()
    if stream.timer is not None:
        stream.timer.cancel()
        stream.timer = None


_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def _timeout(value: bytes | None) -> float | None:
    """grpc-timeout: up to 8 digits and a unit (gRPC over HTTP/2); None if absent or bad."""
    if not value or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1:])
    return None if unit is None else int(value[:-1]) * unit


async def _unary(handler: Unary, request: Any) -> Any:
    return await handler(request)


class Server:
    """Serve ``methods`` on TCP ``host:port`` or ``unix:/path`` addresses."""

    def __init__(
        self,
        methods: Iterable[Method],
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_streams: int = 1024,
        limits: config.Limits = _DEFAULT_LIMITS,
        clock: http2.Clock = time.monotonic,
        on_event: Callable[[str], None] = lambda _event: None,
    ) -> None:
        self.methods = {m.path: m for m in methods}
        self.max_message_bytes = max_message_bytes
        self.max_held_bytes = limits.max_buffered_request_bytes  # for the whole process
        # Unfinished requests are refused past 7/8 of it: the last eighth is room for what
        # the cap must also hold but cannot refuse, the requests that complete as they
        # arrive (taken off our hands in the same turn) and the codec's partial frames.
        self.max_unfinished_bytes = self.max_held_bytes - self.max_held_bytes // 8
        self.held = 0  # request bytes kept: unfinished calls' and partial frames, process-wide
        self.read_buffer = memoryview(bytearray(_TURN_BYTES))  # see _Connection.get_buffer
        self.withholding: set[_Connection] = set()  # connections owed window (``_drop``)
        # A whole message and its prefix must fit one window: windows are granted back only
        # as calls take their bytes, and a unary call takes its message only once complete.
        self.window = max(_MIN_WINDOW, max_message_bytes + 5 + http2.FRAME_SIZE)
        self.max_streams = max_streams
        self.limits = limits
        self.budget = http2.Budget(
            settings_entries=limits.settings_entries_per_frame,
            control_rate=limits.control_frames_per_second,
            control_burst=limits.control_frame_burst,
            reset_rate=limits.resets_per_second,
            reset_burst=limits.reset_burst,
            max_header_block=limits.max_header_block_bytes,
        )
        self.clock = clock
        self.peers = (
            peers.Peers(
                self.budget,
                limits.peer_table_size,
                limits.peer_penalty_seconds,
                limits.peer_penalty_max_seconds,
                clock,
            )
            if limits.peer_table_size
            else None
        )
        self.events: collections.Counter[str] = collections.Counter()
        self._on_event = on_event
        self.connections: set[_Connection] = set()
        self.draining = False
        self._acceptors: list[listen.Acceptor] = []
        self._starting: set[asyncio.Task[Any]] = set()  # accepted, transport not yet made
        self._idle = asyncio.Event()

    async def add_address(self, address: str, *, reuse_port: bool = False) -> int:
        """Listen on ``address``; returns the bound TCP port (0 for a unix socket)."""
        if address.startswith("unix:"):
            sockets = [listen.unix_socket(address[len("unix:") :])]
        else:
            host, _, port = address.rpartition(":")
            sockets = await listen.tcp_sockets(host.strip("[]"), int(port), reuse_port)
        acceptors = [listen.Acceptor(sock, self._accepted) for sock in sockets]
        self._acceptors += acceptors
        return acceptors[0].port

    def _accepted(self, sock: socket.socket, address: Any) -> None:
        """A new connection: refused at once if its peer is penalised or holds its share of
        connections already, else served."""
        key, buckets, slot = "", None, None
        if self.peers is not None:
            key = peers.peer_key(address)
            peer = self.peers.get(key)
            if self.peers.penalized(peer):
                self.count("peer_penalized")
                listen.refuse(sock)
                return
            cap = self.limits.max_connections_per_peer
            if cap and peer.open >= cap:
                self.count("peer_connections_refused")
                listen.refuse(sock)
                return
            buckets, slot = peer.buckets, peers.Slot(peer)
        loop = asyncio.get_running_loop()
        made = loop.connect_accepted_socket(lambda: _Connection(self, key, buckets, slot), sock)
        task = loop.create_task(made)
        self._starting.add(task)
        task.add_done_callback(functools.partial(self._started, slot))

    def _started(self, slot: peers.Slot | None, task: asyncio.Task[Any]) -> None:
        self._starting.discard(task)
        if task.cancelled() or task.exception() is not None:
            # The client left before its transport was made: nothing to serve, and no
            # connection_lost will give its slot back.
            if slot is not None:
                slot.release()
            if not task.cancelled():
                log.info("h2grpc: a connection ended as it was accepted: %s", task.exception())

    def count(self, event: str) -> None:
        """A defence acted, or a connection ended in error: counted here and reported."""
        self.events[event] += 1
        self._on_event(event)

    def penalize(self, peer: str, abuse: str) -> None:
        """Keep ``peer``'s new connections out for a while: it was cut off for ``abuse``."""
        if self.peers is None:
            return
        seconds = self.peers.penalize(peer, abuse)
        if not seconds:
            return
        self.count("peer_penalty_started")
        log.warning(
            "h2grpc: refusing new connections from %s for %gs (%s abuse)", peer, seconds, abuse
        )
        if abuse == http2.CONTROL_ABUSE:
            # Its other connections would go on costing us whatever they send. Not so for
            # resets: Envoy's other connections keep serving while one of them waits.
            for connection in [c for c in self.connections if c.peer == peer]:
                connection.cut_off()

    def relieve(self) -> None:
        """Once at most half the held-bytes cap is held, give back every withheld window."""
        if self.withholding and self.held <= self.max_held_bytes // 2:
            waiting, self.withholding = self.withholding, set()
            for connection in waiting:
                connection.give_back()

    def idle_changed(self) -> None:
        if not any(c.busy for c in self.connections):
            self._idle.set()

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let calls in flight finish for ``grace`` seconds, then end them."""
        self.draining = True
        for acceptor in self._acceptors:
            acceptor.close()
        for connection in list(self.connections):
            connection.drain()
        self._idle.clear()
        self.idle_changed()
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for connection in list(self.connections):
            connection.cancel_calls()
