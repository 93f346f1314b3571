"""An asyncio HTTP/2 engine on top of the ``h2`` state machine, for both peers.

One :class:`H2Connection` multiplexes many :class:`Stream` objects over a
:class:`~waypoint.local.hbone.streams.ByteStream` (a TLS socket, or a CONNECT tunnel for h2c
inside HBONE). Flow control is honoured both ways: received bytes are acknowledged only
when the application reads them, and writes wait for the peer's window. All frames are
produced synchronously and appended to the transport in call order, so concurrent
streams can never interleave partial frames.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from waypoint.local.hbone import errors, streams

Headers = list[tuple[str, str]]
RequestHandler = Callable[["Stream"], Awaitable[None]]

DEFAULT_STREAM_WINDOW = 1 << 20
DEFAULT_CONNECTION_WINDOW = 16 << 20
_H2_DEFAULT_WINDOW = 65535
_log = logging.getLogger(__name__)


class Stream:
    """One HTTP/2 stream: headers, a readable body, a writable body, trailers.

    A CONNECT tunnel is a Stream whose response was 200; it is then a plain
    :class:`~waypoint.local.hbone.streams.ByteStream`.
    """

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.request_headers: Headers = []
        self.trailers: Headers | None = None
        self._response: asyncio.Future[Headers] = asyncio.get_running_loop().create_future()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._pending = bytearray()
        self._end_requested = False
        self.local_closed = False
        self.remote_closed = False
        self.error: BaseException | None = None

    # -- headers -------------------------------------------------------------------------

    async def response_headers(self) -> Headers:
        """The peer's (final) response headers, once they arrive."""
        return await asyncio.shield(self._response)

    @property
    def status(self) -> int | None:
        if not self._response.done() or self._response.exception() is not None:
            return None
        return int(header(self._response.result(), ":status") or 0)

    def send_headers(self, headers: Iterable[tuple[str, str]], *, end_stream: bool = False) -> None:
        """Send response headers (server side) or trailers."""
        self._conn._send_headers(self, list(headers), end_stream)

    # -- reading -------------------------------------------------------------------------

    async def read(self, max_bytes: int = streams.READ_SIZE) -> bytes:
        """Up to ``max_bytes`` of body; ``b""`` once the peer ended the stream."""
        while not self._inbox:
            if self.error is not None:
                raise self.error
            if self.remote_closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._inbox.popleft()
        if len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            self._inbox.appendleft(rest)
        self._conn._acknowledge(self.stream_id, len(chunk))
        return chunk

    async def readexactly(self, size: int) -> bytes:
        parts, missing = [], size
        while missing:
            chunk = await self.read(missing)
            if not chunk:
                raise errors.ProtocolViolation(
                    f"stream {self.stream_id} ended after {size - missing} of {size} bytes"
                )
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    async def read_all(self, limit: int | None = None) -> bytes:
        """The rest of the body, up to ``limit`` bytes."""
        parts, total = [], 0
        while chunk := await self.read():
            total += len(chunk)
            if limit is not None and total > limit:
                raise errors.ProtocolViolation(
                    f"stream {self.stream_id} body exceeds {limit} bytes"
                )
            parts.append(chunk)
        return b"".join(parts)

    # -- writing -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue body bytes; they leave as the peer's flow-control window allows."""
        if self.error is not None:
            raise self.error
        if self._end_requested:
            raise errors.HboneError(f"stream {self.stream_id}: write after write_eof")
        if data:
            self._pending += data
            self._drained.clear()
            self._conn._pump(self)

    async def drain(self) -> None:
        """Wait until queued bytes are handed to the transport, then drain that."""
        while not self._drained.is_set():
            if self.error is not None:
                raise self.error
            await self._wait_drained_or_error()
        if self.error is not None and self._pending:
            raise self.error
        await self._conn._drain_transport()

    async def _wait_drained_or_error(self) -> None:
        # Errors set _drained too (see _fail), so one event suffices.
        await self._drained.wait()

    def write_eof(self) -> None:
        """End our half of the stream once queued data is sent."""
        if self._end_requested or self.error is not None:
            return
        self._end_requested = True
        self._conn._pump(self)

    def reset(self, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Abort the stream both ways (RST_STREAM)."""
        self._conn._reset(self, error_code)

    async def aclose(self, linger: float = 2.0) -> None:
        """End our half, then wait up to ``linger`` s for the peer's end (discarding data).

        Only if the peer does not finish in time is the stream reset: Envoy counts
        streams reset early by the client and GOAWAYs clients that do it too often
        (its HTTP/2 "premature reset" flood protection).
        """
        if self.error is not None or (self.local_closed and self.remote_closed):
            return
        self.write_eof()
        try:
            async with asyncio.timeout(linger):
                await self.drain()
                while await self.read():
                    pass
        except (TimeoutError, errors.HboneError, OSError):
            self.reset()

    # -- engine callbacks ------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self._inbox.append(data)
        self._readable.set()

    def _on_end(self) -> None:
        self.remote_closed = True
        self._readable.set()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self._response.done():
            self._response.set_exception(exc)
            self._response.exception()  # mark retrieved: nobody may be waiting
        self._pending.clear()
        self._readable.set()
        self._drained.set()


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of ``name`` (case-insensitive), or None."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class H2Connection:
    """One HTTP/2 connection, client or server side."""

    def __init__(
        self,
        io: streams.ByteStream,
        *,
        client_side: bool,
        on_request: RequestHandler | None = None,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_concurrent_streams: int | None = None,
        name: str = "h2",
    ) -> None:
        self.io = io
        self.client_side = client_side
        self.name = name
        self._request_handler = on_request
        self._stream_window = stream_window
        self._connection_window = connection_window
        self._max_concurrent_streams = max_concurrent_streams
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config=config)
        self._streams: dict[int, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._remote_settings = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._closed = asyncio.Event()
        self.error: BaseException | None = None
        self.goaway: h2.events.ConnectionTerminated | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Send the preface and our SETTINGS; start reading."""
        self._h2.initiate_connection()
        settings: dict[int, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._stream_window,
        }
        if self._max_concurrent_streams is not None:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = self._max_concurrent_streams
        if self.client_side:
            settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        self._h2.update_settings(settings)
        if self._connection_window > _H2_DEFAULT_WINDOW:
            self._h2.increment_flow_control_window(self._connection_window - _H2_DEFAULT_WINDOW)
        self._flush()
        self._reader = asyncio.create_task(self._read_loop(), name=f"{self.name}-reader")

    async def wait_remote_settings(self, timeout: float) -> None:
        """Wait for the peer's SETTINGS (proof it accepted us), or raise its failure."""
        waiter = asyncio.create_task(self._remote_settings.wait())
        closer = asyncio.create_task(self._closed.wait())
        try:
            await asyncio.wait(
                {waiter, closer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            closer.cancel()
        self._raise_if_unusable()
        if not self._remote_settings.is_set():
            raise errors.HboneConnectionError(
                f"{self.name}: no SETTINGS from peer within {timeout}s"
            )

    @property
    def usable(self) -> bool:
        return self.error is None and self.goaway is None and not self._closed.is_set()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def aclose(
        self, error_code: int = h2.errors.ErrorCodes.NO_ERROR, message: str = ""
    ) -> None:
        """Send GOAWAY, close the transport, fail whatever is still open."""
        if not self._closed.is_set():
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection(error_code, message.encode() or None)
            self._flush()
            with contextlib.suppress(OSError, errors.HboneError):
                await asyncio.wait_for(self.io.drain(), 2.0)
        self._terminate(errors.HboneConnectionError(f"{self.name}: connection closed locally"))
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(OSError, errors.HboneError):
            await self.io.aclose()

    # -- streams -------------------------------------------------------------------------

    async def open_stream(
        self, headers: Iterable[tuple[str, str]], *, end_stream: bool = False
    ) -> Stream:
        """Start a new request stream (client side), waiting for a free concurrency slot."""
        while True:
            self._raise_if_unusable()
            limit = self._h2.remote_settings.max_concurrent_streams
            if self._h2.open_outbound_streams < limit:
                break
            self._slot_freed.clear()
            waiters = {
                asyncio.create_task(self._slot_freed.wait()),
                asyncio.create_task(self._closed.wait()),
            }
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        stream_id = self._h2.get_next_available_stream_id()
        stream = Stream(self, stream_id)
        self._streams[stream_id] = stream
        self._h2.send_headers(stream_id, list(headers), end_stream=end_stream)
        if end_stream:
            stream._end_requested = stream.local_closed = True
        self._flush()
        return stream

    def _send_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        if stream.error is not None:
            raise stream.error
        try:
            self._h2.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError as exc:
            raise errors.StreamResetError(
                stream.stream_id, h2.errors.ErrorCodes.STREAM_CLOSED
            ) from exc
        if end_stream:
            stream._end_requested = True
            self._mark_local_closed(stream)
        self._flush()

    def _pump(self, stream: Stream) -> None:
        """Send as much queued data (and the end marker) as the windows allow."""
        if stream.error is not None or stream.local_closed:
            return
        try:
            while stream._pending:
                window = min(
                    self._h2.local_flow_control_window(stream.stream_id),
                    self._h2.max_outbound_frame_size,
                )
                if window <= 0:
                    break
                chunk = bytes(stream._pending[:window])
                del stream._pending[:window]
                last = stream._end_requested and not stream._pending
                self._h2.send_data(stream.stream_id, chunk, end_stream=last)
                if last:
                    self._mark_local_closed(stream)
            if not stream._pending:
                if stream._end_requested and not stream.local_closed:
                    self._h2.end_stream(stream.stream_id)
                    self._mark_local_closed(stream)
                stream._drained.set()
        except (h2.exceptions.StreamClosedError, h2.exceptions.FlowControlError) as exc:
            stream._fail(
                errors.StreamResetError(
                    stream.stream_id, h2.errors.ErrorCodes.STREAM_CLOSED, str(exc)
                )
            )
            self._forget(stream)
        self._flush()

    def _pump_all(self) -> None:
        for stream in list(self._streams.values()):
            if stream._pending or (stream._end_requested and not stream.local_closed):
                self._pump(stream)

    def _reset(self, stream: Stream, error_code: int) -> None:
        if stream.error is None and not (stream.local_closed and stream.remote_closed):
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream.stream_id, error_code)
            self._flush()
        stream._fail(errors.StreamResetError(stream.stream_id, error_code, "stream reset locally"))
        self._forget(stream)

    def _mark_local_closed(self, stream: Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        if self._streams.pop(stream.stream_id, None) is not None:
            self._slot_freed.set()

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if size <= 0 or self._closed.is_set():
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.acknowledge_received_data(size, stream_id)
        self._flush()

    # -- transport -----------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._closed.is_set():
            try:
                self.io.write(data)
            except (OSError, errors.HboneError) as exc:
                # The transport (e.g. an enclosing tunnel that was reset) is gone.
                self._terminate(
                    errors.HboneConnectionError(f"{self.name}: transport failed: {exc}")
                )

    async def _drain_transport(self) -> None:
        try:
            await self.io.drain()
        except (OSError, errors.HboneError) as exc:
            raise errors.HboneConnectionError(f"{self.name}: transport failed: {exc}") from exc

    async def _read_loop(self) -> None:
        failure: BaseException
        try:
            while True:
                data = await self.io.read(streams.READ_SIZE)
                if not data:
                    failure = errors.HboneConnectionError(self._closed_message())
                    break
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._flush()
                    failure = errors.HboneConnectionError(
                        f"{self.name}: HTTP/2 protocol error: {exc}"
                    )
                    break
                for event in events:
                    self._dispatch(event)
                self._flush()
        except asyncio.CancelledError:
            failure = errors.HboneConnectionError(f"{self.name}: connection closed locally")
        except (OSError, errors.HboneError) as exc:
            failure = errors.HboneConnectionError(f"{self.name}: connection failed: {exc!r}")
        except Exception as exc:  # e.g. undecodable header bytes: fail loudly, never hang
            failure = errors.HboneConnectionError(f"{self.name}: cannot process peer data: {exc!r}")
        self._terminate(failure)

    def _closed_message(self) -> str:
        if self.goaway is not None:
            return f"{self.name}: peer closed after GOAWAY ({_goaway_text(self.goaway)})"
        if not self._remote_settings.is_set():
            # A TLS 1.3 server checks our certificate after our handshake finished, so a
            # rejection often shows up only as this close (the alert may not be flushed).
            return (
                f"{self.name}: peer closed the connection before its HTTP/2 SETTINGS "
                "(did it reject our TLS client certificate?)"
            )
        return f"{self.name}: peer closed the connection"

    def _terminate(self, failure: BaseException) -> None:
        if self.error is None:
            self.error = failure
        for stream in list(self._streams.values()):
            stream._fail(failure)
        self._streams.clear()
        self._slot_freed.set()
        self._closed.set()

    def _raise_if_unusable(self) -> None:
        if self.goaway is not None:
            raise errors.HboneConnectionError(
                f"{self.name}: peer sent GOAWAY ({_goaway_text(self.goaway)})"
            )
        if self.error is not None:
            raise errors.HboneConnectionError(str(self.error)) from self.error
        if self._closed.is_set():
            raise errors.HboneConnectionError(f"{self.name}: connection is closed")

    # -- events --------------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        assert event.stream_id is not None
        stream = Stream(self, event.stream_id)
        stream.request_headers = _text_headers(event.headers)
        self._streams[event.stream_id] = stream
        if self._request_handler is None:
            self._reset(stream, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        task = asyncio.create_task(
            self._serve(stream), name=f"{self.name}-stream-{event.stream_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: Stream) -> None:
        assert self._request_handler is not None
        try:
            await self._request_handler(stream)
        except errors.HboneError:
            stream.reset(h2.errors.ErrorCodes.CANCEL)
        except Exception:
            # A handler bug costs that stream only; the connection and its peers go on.
            _log.exception("%s: handler for stream %d failed", self.name, stream.stream_id)
            stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is not None and not stream._response.done():
            stream._response.set_result(_text_headers(event.headers))

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is not None:
            stream.trailers = _text_headers(event.headers)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        assert event.stream_id is not None
        assert event.flow_controlled_length is not None
        data = event.data or b""
        stream = self._streams.get(event.stream_id)
        if stream is not None and stream.error is not None:
            stream = None
        # Padding, and data for streams nobody will read, is credited back at once.
        unread = event.flow_controlled_length - (len(data) if stream is not None else 0)
        if unread:
            self._acknowledge(event.stream_id, unread)
        if stream is not None and data:
            stream._on_data(data)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is None:
            return
        stream._on_end()
        if stream.local_closed:
            self._forget(stream)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is None:
            return
        code = int(event.error_code or 0)
        stream._fail(
            errors.StreamResetError(
                stream.stream_id, code, f"stream {stream.stream_id} reset by peer (code {code})"
            )
        )
        self._forget(stream)

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is None:
            self._pump_all()
        else:
            self._pump(stream)

    def _on_settings(self, _event: h2.events.RemoteSettingsChanged) -> None:
        self._remote_settings.set()
        self._slot_freed.set()
        self._pump_all()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.goaway = event
        last = event.last_stream_id or 0
        failure = errors.HboneConnectionError(
            f"{self.name}: peer sent GOAWAY ({_goaway_text(event)})"
        )
        for stream in list(self._streams.values()):
            if stream.stream_id > last or event.error_code:
                stream._fail(failure)
                self._forget(stream)
        self._slot_freed.set()


def _goaway_text(event: h2.events.ConnectionTerminated) -> str:
    code = event.error_code
    name = code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)
    detail = (event.additional_data or b"").decode(errors="replace")
    return f"error {name}" + (f": {detail}" if detail else "")


def _text_headers(raw: object) -> Headers:
    out: Headers = []
    for key, value in raw or []:  # type: ignore[attr-defined]
        k = key.decode() if isinstance(key, bytes) else str(key)
        v = value.decode() if isinstance(value, bytes) else str(value)
        out.append((k, v))
    return out


_HANDLERS: dict[type[h2.events.Event], Callable[[H2Connection, h2.events.Event], None]] = {
    h2.events.RequestReceived: H2Connection._on_request,  # type: ignore[dict-item]
    h2.events.ResponseReceived: H2Connection._on_response,  # type: ignore[dict-item]
    h2.events.TrailersReceived: H2Connection._on_trailers,  # type: ignore[dict-item]
    h2.events.DataReceived: H2Connection._on_data,  # type: ignore[dict-item]
    h2.events.StreamEnded: H2Connection._on_stream_ended,  # type: ignore[dict-item]
    h2.events.StreamReset: H2Connection._on_reset,  # type: ignore[dict-item]
    h2.events.WindowUpdated: H2Connection._on_window,  # type: ignore[dict-item]
    h2.events.RemoteSettingsChanged: H2Connection._on_settings,  # type: ignore[dict-item]
    h2.events.ConnectionTerminated: H2Connection._on_goaway,  # type: ignore[dict-item]
}
