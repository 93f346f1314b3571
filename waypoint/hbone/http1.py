"""HTTP/1.1 for requests inside tunnels and for the echo server, spoken with h11.

h11 parses, frames (Content-Length, chunked, or end of stream for responses) and keeps each
side's state, so one connection can carry several exchanges. This module drives it over a
:class:`~waypoint.hbone.streams.ByteStream`, bounds what a peer may make us buffer, and
turns h11's errors into ours: the peer's into :class:`~waypoint.hbone.errors.ProtocolViolation`,
the caller's (a header with CR or LF, a bad method) into ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import http
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import h11

from waypoint.hbone import errors, streams

Headers = list[tuple[str, str]]
DEFAULT_BODY_LIMIT = 64 << 20
# The request or status line plus headers (h11's max_incomplete_event_size). Envoy's own
# default limit on request headers is 60 KiB.
HEAD_LIMIT = 64 << 10
_E = TypeVar("_E", bound=h11.Event)
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


@dataclasses.dataclass(frozen=True)
class Response:
    """An HTTP response: status, headers in wire order, and the whole body."""

    status: int
    headers: Headers
    body: bytes
    reason: str = ""

    def header(self, name: str) -> str | None:
        """First value of ``name`` (case-insensitive), or None."""
        return _first(self.headers, name)

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclasses.dataclass(frozen=True)
class Request:
    """An HTTP/1.x request as parsed by a server."""

    method: str
    target: str
    version: str
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


def _headers(event: h11.Request | h11.Response | h11.InformationalResponse) -> Headers:
    # raw_items keeps the peer's spelling of names; the echo reports headers as sent.
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]


def _checked(event: Callable[..., _E], **fields: Any) -> _E:
    """Build an h11 event; a field h11 refuses is the caller's mistake (ValueError)."""
    try:
        return event(**fields)
    except h11.LocalProtocolError as exc:
        raise ValueError(f"cannot send HTTP/1.1 {event.__name__}: {exc}") from None


class _Peer:
    """One h11 connection over a byte stream: sending, and reading one event at a time."""

    def __init__(self, stream: streams.ByteStream, role: type[h11.CLIENT] | type[h11.SERVER]):
        self.stream = stream
        self.conn = h11.Connection(role, max_incomplete_event_size=HEAD_LIMIT)

    def send(self, *events: h11.Event) -> None:
        try:
            for event in events:
                data = self.conn.send(event)
                if data:
                    self.stream.write(data)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send HTTP/1.1 message: {exc}") from None

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise errors.ProtocolViolation(f"bad HTTP/1.1 from peer: {exc}") from None
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # a protocol switch (Upgrade, CONNECT) we do not take
                raise errors.ProtocolViolation("HTTP/1.1 protocol switch is not supported")
            self.conn.receive_data(await self._read())

    async def _read(self) -> bytes:
        data = await self.stream.read(streams.READ_SIZE)
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            # Stray CRLF between messages is to be ignored (RFC 9112 2.2); h11 does not.
            stripped = data.lstrip(b"\r\n")
            while data and not stripped:
                data = await self.stream.read(streams.READ_SIZE)
                stripped = data.lstrip(b"\r\n")
            return stripped
        return data

    async def read_body(self, limit: int) -> bytes:
        """Data events up to the end of the message, at most ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > limit:
                    raise errors.ProtocolViolation(f"HTTP body exceeds limit {limit}")
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:
                raise errors.ProtocolViolation(f"HTTP message ended early: {event!r}")

    def next_cycle(self) -> bool:
        """Ready the connection for the next exchange; False when it must close."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


def _request_events(
    method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes, host: str
) -> tuple[h11.Event, ...]:
    """The request as h11 events; adds Host and Content-Length unless given."""
    header_list = list(headers)
    names = {k.lower() for k, _ in header_list}
    if "host" not in names:
        header_list.insert(0, ("Host", host))
    if (
        "content-length" not in names
        and "transfer-encoding" not in names
        and (body or method.upper() in {"POST", "PUT", "PATCH"})
    ):
        header_list.append(("Content-Length", str(len(body))))
    request = _checked(h11.Request, method=method, target=path, headers=header_list)
    if body:
        return request, h11.Data(data=body), h11.EndOfMessage()
    return request, h11.EndOfMessage()


class ClientConnection:
    """HTTP/1.1 requests on one stream, one exchange after another (keep-alive)."""

    def __init__(self, stream: streams.ByteStream, *, limit: int = DEFAULT_BODY_LIMIT) -> None:
        self._peer = _Peer(stream, h11.CLIENT)
        self._limit = limit

    async def exchange(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        host: str,
    ) -> Response:
        """Send one request and read its final response (1xx responses are skipped)."""
        self._peer.next_cycle()
        if self._peer.conn.our_state is not h11.IDLE:
            raise errors.ProtocolViolation("the HTTP/1.1 connection cannot carry another request")
        self._peer.send(*_request_events(method, path, headers, body, host))
        await self._peer.stream.drain()
        while True:
            event = await self._peer.next_event()
            if isinstance(event, h11.Response):
                break
            if not isinstance(event, h11.InformationalResponse):
                raise errors.ProtocolViolation("connection ended before an HTTP response")
        body_in = await self._peer.read_body(self._limit)
        return Response(
            status=event.status_code,
            headers=_headers(event),
            body=body_in,
            reason=event.reason.decode("latin-1"),
        )


async def exchange(
    stream: streams.ByteStream,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    host: str,
    *,
    limit: int = DEFAULT_BODY_LIMIT,
) -> Response:
    """Send one request on ``stream`` and read its response."""
    return await ClientConnection(stream, limit=limit).exchange(method, path, headers, body, host)


class ServerConnection:
    """The server side of one HTTP/1.x connection: read a request, answer it, repeat."""

    def __init__(self, stream: streams.ByteStream, *, limit: int = DEFAULT_BODY_LIMIT) -> None:
        self._peer = _Peer(stream, h11.SERVER)
        self._limit = limit
        self._head = False

    async def read_request(self) -> Request | None:
        """The next request; None when the client closed between requests.

        A client that sent ``Expect: 100-continue`` gets its ``100 Continue`` before the
        body is read (curl waits for it on big bodies).
        """
        self._head = False
        event = await self._peer.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise errors.ProtocolViolation(f"expected an HTTP request, got {event!r}")
        if self._peer.conn.they_are_waiting_for_100_continue:
            self._peer.send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
            await self._peer.stream.drain()
        self._head = event.method == b"HEAD"
        body = await self._peer.read_body(self._limit)
        return Request(
            method=event.method.decode("latin-1"),
            target=event.target.decode("latin-1"),
            version="HTTP/" + event.http_version.decode("latin-1"),
            headers=_headers(event),
            body=body,
        )

    async def respond(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> bool:
        """Answer with Content-Length (no body for HEAD); False when the connection must close.

        After a :class:`~waypoint.hbone.errors.ProtocolViolation` from :meth:`read_request`,
        this still sends an error response, and returns False.
        """
        if self._peer.conn.our_state is h11.ERROR:
            return False
        response = _checked(
            h11.Response,
            status_code=status,
            headers=[*headers, ("Content-Length", str(len(body)))],
            reason=_REASONS.get(status, b""),
        )
        # h11 frames a HEAD response as empty whatever its Content-Length says.
        data = [] if self._head else [h11.Data(data=body)]
        self._peer.send(response, *data, h11.EndOfMessage())
        await self._peer.stream.drain()
        return self._peer.next_cycle()
