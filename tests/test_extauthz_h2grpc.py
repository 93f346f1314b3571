"""The lean gRPC transport (extauthz/h2grpc.py) against real clients: grpc.aio and raw h2.

Semantics a gRPC client relies on: statuses for unknown methods, oversized, compressed and
unparsable messages; HTTP errors for what is not gRPC; flow control on large responses;
handlers that suspend, and clients that give up on them; server streaming; graceful stop
(calls in flight finish, no new connections); a protocol error closes only its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from google.protobuf import wrappers_pb2  # type: ignore[import-untyped,unused-ignore]

from extauthz import config, h2grpc

pytestmark = pytest.mark.asyncio

Text = wrappers_pb2.StringValue


class Calls:
    """Handlers for the test service, and what happened to them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def echo(self, request: Any) -> Any:
        return Text(value=request.value.upper())

    async def slow(self, request: Any) -> Any:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Text(value="late " + request.value)

    async def fail(self, request: Any) -> Any:
        raise h2grpc.RpcError(7, "nope: ünïcode")

    async def crash(self, request: Any) -> Any:
        raise ValueError("a bug")

    async def count(self, request: Any) -> AsyncIterator[Any]:
        for i in range(int(request.value)):
            await asyncio.sleep(0)
            yield Text(value=str(i))

    def big(self, request: Any) -> Any:
        return Text(value="x" * int(request.value))


def methods(calls: Calls) -> list[h2grpc.Method]:
    parse = Text.FromString
    return [
        h2grpc.Method("/t.T/Echo", parse, unary=calls.echo),
        h2grpc.Method("/t.T/Slow", parse, unary=calls.slow),
        h2grpc.Method("/t.T/Fail", parse, unary=calls.fail),
        h2grpc.Method("/t.T/Crash", parse, unary=calls.crash),
        h2grpc.Method("/t.T/Count", parse, server_stream=calls.count),
        h2grpc.Method("/t.T/Big", parse, per_message=calls.big),
    ]


@contextlib.asynccontextmanager
async def serving(
    calls: Calls, **kwargs: Any
) -> AsyncIterator[tuple[h2grpc.Server, grpc.aio.Channel, int]]:
    server = h2grpc.Server(methods(calls), **kwargs)
    port = await server.add_address("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, channel, port
    finally:
        await channel.close(None)
        await server.stop(0)


def unary(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(
        f"/t.T/{name}",
        request_serializer=Text.SerializeToString,
        response_deserializer=Text.FromString,
    )


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def test_unary_and_statuses() -> None:
    calls = Calls()
    async with serving(calls) as (_server, channel, _port):
        assert (await unary(channel, "Echo")(Text(value="hi"), timeout=5)).value == "HI"
        code, details = await code_of(unary(channel, "Fail")(Text(), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == "nope: ünïcode"
        code, details = await code_of(unary(channel, "Crash")(Text(), timeout=5))
        assert code == grpc.StatusCode.UNKNOWN
        assert "ValueError" in details
        code, details = await code_of(unary(channel, "Missing")(Text(), timeout=5))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert "/t.T/Missing" in details
        # The connection survives all of that.
        assert (await unary(channel, "Echo")(Text(value="ok"), timeout=5)).value == "OK"


async def test_bad_messages() -> None:
    calls = Calls()
    async with serving(calls, max_message_bytes=1000) as (_server, channel, _port):
        code, details = await code_of(unary(channel, "Echo")(Text(value="x" * 2000), timeout=5))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over 1000" in details
        raw = channel.unary_unary("/t.T/Echo", None, None)
        code, details = await code_of(raw(b"\x0a\x05ab", timeout=5))
        assert code == grpc.StatusCode.INTERNAL  # gRPC's table: "error parsing request proto"
        assert "cannot parse" in details
        gzip = unary(channel, "Echo")(
            Text(value="y" * 500), timeout=5, compression=grpc.Compression.Gzip
        )
        code, details = await code_of(gzip)
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert "compressed" in details


async def test_large_responses_respect_flow_control() -> None:
    # 3 MB through a client whose windows start at 64 KiB: only WINDOW_UPDATEs let it through.
    calls = Calls()
    async with serving(calls) as (_server, channel, _port):
        stream = channel.stream_stream(
            "/t.T/Big",
            request_serializer=Text.SerializeToString,
            response_deserializer=Text.FromString,
        )

        async def asks() -> AsyncIterator[Any]:
            for size in (10, 3_000_000, 20):
                yield Text(value=str(size))

        sizes = [len(reply.value) async for reply in stream(asks(), timeout=20)]
        assert sizes == [10, 3_000_000, 20]


async def test_server_streaming() -> None:
    calls = Calls()
    async with serving(calls) as (_server, channel, _port):
        count = channel.unary_stream(
            "/t.T/Count",
            request_serializer=Text.SerializeToString,
            response_deserializer=Text.FromString,
        )
        assert [r.value async for r in count(Text(value="4"), timeout=5)] == ["0", "1", "2", "3"]


async def test_suspended_call_completes_or_is_cancelled_with_its_client() -> None:
    calls = Calls()
    async with serving(calls) as (_server, channel, _port):
        pending = asyncio.ensure_future(unary(channel, "Slow")(Text(value="a"), timeout=10))
        await calls.started.wait()
        calls.release.set()
        assert (await pending).value == "late a"

        calls.release.clear()
        calls.started.clear()
        code, _ = await code_of(unary(channel, "Slow")(Text(value="b"), timeout=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(calls.cancelled.wait(), 5)  # the RST_STREAM reached the handler


async def test_graceful_stop_finishes_calls_in_flight() -> None:
    calls = Calls()
    server = h2grpc.Server(methods(calls))
    port = await server.add_address("127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        pending = asyncio.ensure_future(unary(channel, "Slow")(Text(value="c"), timeout=10))
        await calls.started.wait()
        stopping = asyncio.ensure_future(server.stop(10))
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waiting for the call in flight
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        calls.release.set()
        assert (await pending).value == "late c"
        await asyncio.wait_for(stopping, 5)


async def test_stop_after_grace_ends_calls_unavailable() -> None:
    calls = Calls()
    server = h2grpc.Server(methods(calls))
    port = await server.add_address("127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        pending = asyncio.ensure_future(unary(channel, "Slow")(Text(value="d"), timeout=10))
        await calls.started.wait()
        await server.stop(0.1)
        code, details = await code_of(pending)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in details
        assert calls.cancelled.is_set()


class RawClient:
    """A bare h2 client over a socket, for what grpc clients never send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())

    def request(self, headers: list[tuple[str, str]]) -> dict[str, str]:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        while True:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    return dict(event.headers)  # type: ignore[arg-type]
            self.sock.sendall(self.h2.data_to_send())

    def open(self, path: str, extra: list[tuple[str, str]] | None = None) -> int:
        """Start a gRPC call whose body is sent with ``send``."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", "x")]
        headers += [(":path", path), ("content-type", "application/grpc"), ("te", "trailers")]
        self.h2.send_headers(stream_id, headers + (extra or []))
        self.sock.sendall(self.h2.data_to_send())
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.h2.send_data(stream_id, data, end_stream=end)
        self.sock.sendall(self.h2.data_to_send())

    def outcome(self, stream_id: int) -> dict[str, str]:
        """Read until the stream ends; its response headers and trailers, merged."""
        while stream_id not in self.ended:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    self.seen.setdefault(event.stream_id, {}).update(event.headers)  # type: ignore[arg-type]
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    self.ended.setdefault(event.stream_id, self.seen.pop(event.stream_id, {}))
            self.sock.sendall(self.h2.data_to_send())
        return self.ended[stream_id]

    seen: dict[int, dict[str, str]]
    ended: dict[int, dict[str, str]]


def message(text: str) -> bytes:
    return bytes(h2grpc.frame(Text(value=text)))


async def test_grpc_timeout_ends_a_suspended_call() -> None:
    calls = Calls()
    async with serving(calls) as (_server, _channel, port):
        client = RawClient(port)
        client.seen, client.ended = {}, {}
        stream_id = client.open("/t.T/Slow", [("grpc-timeout", "100m")])
        client.send(stream_id, message("t"), end=True)
        got = await asyncio.to_thread(client.outcome, stream_id)
        assert got["grpc-status"] == "4"
        assert "grpc-timeout" in got["grpc-message"]
        await asyncio.wait_for(calls.cancelled.wait(), 5)
        # A call that completes at once is not affected by a timeout, however short.
        stream_id = client.open("/t.T/Echo", [("grpc-timeout", "1n")])
        client.send(stream_id, message("quick"), end=True)
        assert (await asyncio.to_thread(client.outcome, stream_id))["grpc-status"] == "0"
        client.sock.close()


async def test_the_process_holds_only_so_much_unfinished_request_data() -> None:
    calls = Calls()
    limits = config.Limits(max_buffered_request_bytes=4200)
    async with serving(calls, max_message_bytes=1000, limits=limits) as (
        server,
        channel,
        port,
    ):
        client = RawClient(port)
        client.seen, client.ended = {}, {}
        whole = message("x" * 990)
        streams = [client.open("/t.T/Echo") for _ in range(5)]
        for stream_id in streams:
            client.send(stream_id, whole[:900])
        # Unfinished calls may hold 7/8 of the cap, 3,675 bytes: four partial messages fit,
        # the fifth does not.
        got = await asyncio.to_thread(client.outcome, streams[4])
        assert got["grpc-status"] == "8"
        assert server.events["buffered_bytes_exhausted"] == 1
        for stream_id in streams[:4]:
            client.send(stream_id, whole[900:], end=True)
            assert (await asyncio.to_thread(client.outcome, stream_id))["grpc-status"] == "0"
        client.sock.close()
        assert (await unary(channel, "Echo")(Text(value="after"), timeout=5)).value == "AFTER"
        assert server.held == 0


async def test_message_cardinality_and_compression_get_grpc_statuses() -> None:
    calls = Calls()
    async with serving(calls) as (_server, _channel, port):
        client = RawClient(port)
        client.seen, client.ended = {}, {}
        # gRPC's status code table: a request cardinality violation is UNIMPLEMENTED.
        two = client.open("/t.T/Echo")
        client.send(two, message("a") + message("b"), end=True)
        none = client.open("/t.T/Echo")
        client.send(none, b"", end=True)
        # A stream that ends inside a message broke the framing: INTERNAL.
        cut = client.open("/t.T/Echo")
        client.send(cut, message("abc")[:-1], end=True)
        # An encoding we do not take: UNIMPLEMENTED, naming the one we do.
        gzip = client.open("/t.T/Echo", [("grpc-encoding", "gzip")])
        client.send(gzip, b"\x01" + message("z")[1:], end=True)
        # The compressed flag with no encoding at all: INTERNAL.
        flagged = client.open("/t.T/Echo")
        client.send(flagged, b"\x01" + message("z")[1:], end=True)
        got = {
            s: await asyncio.to_thread(client.outcome, s) for s in (two, none, cut, gzip, flagged)
        }
        assert got[two]["grpc-status"] == got[none]["grpc-status"] == "12"
        assert got[cut]["grpc-status"] == got[flagged]["grpc-status"] == "13"
        assert got[gzip]["grpc-status"] == "12"
        assert got[gzip]["grpc-accept-encoding"] == "identity"
        assert "grpc-accept-encoding" not in got[two]
        client.sock.close()


async def test_unparsable_requests_get_the_methods_own_answer() -> None:
    def unparsable(reason: str) -> Any:
        return Text(value="refused: " + reason)

    calls = Calls()
    method = h2grpc.Method("/t.T/Strict", Text.FromString, unary=calls.echo, unparsable=unparsable)
    server = h2grpc.Server([method])
    port = await server.add_address("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = channel.unary_unary("/t.T/Strict", None, Text.FromString)
        answer = await call(b"\x0a\x05ab", timeout=5)
        assert answer.value == "refused: cannot parse the request: DecodeError"
        assert server.events["unparsable_request"] == 1
    finally:
        await channel.close(None)
        await server.stop(0)


async def test_what_is_not_grpc_gets_http_errors() -> None:
    calls = Calls()
    async with serving(calls) as (_server, channel, port):
        client = RawClient(port)
        base = [(":scheme", "http"), (":authority", "x"), (":path", "/t.T/Echo")]
        got = await asyncio.to_thread(
            client.request, [(":method", "GET"), *base, ("content-type", "application/grpc")]
        )
        assert got[":status"] == "405"
        got = await asyncio.to_thread(
            client.request, [(":method", "POST"), *base, ("content-type", "text/plain")]
        )
        assert got[":status"] == "415"
        client.sock.close()
        assert (await unary(channel, "Echo")(Text(value="still"), timeout=5)).value == "STILL"


async def test_protocol_garbage_closes_only_that_connection() -> None:
    calls = Calls()
    async with serving(calls) as (_server, channel, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        closed = await asyncio.to_thread(_read_until_closed, sock)
        assert closed
        assert (await unary(channel, "Echo")(Text(value="fine"), timeout=5)).value == "FINE"


def _read_until_closed(sock: socket.socket) -> bool:
    with sock:
        while True:
            try:
                if not sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True


async def test_run_eagerly() -> None:
    async def now() -> int:
        return 1

    assert h2grpc.run_eagerly(now()) == (True, 1)

    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def later() -> int:
        await asyncio.sleep(0)
        return await gate + 1

    done, task = h2grpc.run_eagerly(later())
    assert not done
    gate.set_result(41)
    assert await task == 42

    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        h2grpc.run_eagerly(boom())

    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def stuck() -> int:
        return await never

    done, task = h2grpc.run_eagerly(stuck())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert never.cancelled()
