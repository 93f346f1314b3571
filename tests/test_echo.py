"""Echo backend: Istio-style echo text/JSON over HTTP/1.1 and h2c, gRPC echo, TCP echo."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Iterator

import grpc
import pytest

from waypoint.local import echo
from waypoint.local.hbone import echo_pb2, h2io, loop, streams


@pytest.fixture(scope="module")
def runner() -> Iterator[loop.LoopThread]:
    thread = loop.LoopThread("test-echo")
    yield thread
    thread.stop()


@pytest.fixture
def server(runner: loop.LoopThread) -> Iterator[echo.EchoServer]:
    srv = echo.EchoServer(
        "echo-v2-xyz", "apps", http_ports=(0,), grpc_ports=(0,), tcp_ports=(0,), version="v2"
    )
    srv.start_background(runner)
    yield srv
    srv.stop_background()


def _get(
    port: int, path: str, headers: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read().decode()
    finally:
        conn.close()


def test_http_echo_text(server: echo.EchoServer) -> None:
    port = server.http_ports[0]
    status, ctype, body = _get(port, "/a/b?x=1&y=2", {"X-Multi": "one", "Host": "reviews:9080"})
    assert (status, ctype) == (200, "text/plain")
    lines = body.splitlines()
    assert lines[:7] == [
        "ServiceVersion=v2",
        f"ServicePort={port}",
        "Host=reviews:9080",
        "URL=/a/b?x=1&y=2",
        "Method=GET",
        "Proto=HTTP/1.1",
        "IP=127.0.0.1",
    ]
    assert "RequestHeader=X-Multi:one" in lines
    assert lines[-2:] == ["Hostname=echo-v2-xyz", "Namespace=apps"]
    report = echo.parse_echo(body)
    assert (report.hostname, report.namespace, report.method, report.url, report.host) == (
        "echo-v2-xyz",
        "apps",
        "GET",
        "/a/b?x=1&y=2",
        "reviews:9080",
    )
    assert report.headers["x-multi"] == ["one"]
    assert report.service_version == "v2"


def test_http_echo_json_by_query_and_accept(server: echo.EchoServer) -> None:
    port = server.http_ports[0]
    _, ctype, body = _get(port, "/j?format=json")
    assert ctype == "application/json"
    doc = json.loads(body)
    assert doc["Hostname"] == "echo-v2-xyz"
    assert doc["URL"] == "/j?format=json"
    _, ctype, body = _get(port, "/k", {"Accept": "application/json", "X-A": "1"})
    assert ctype == "application/json"
    report = echo.parse_echo(body)
    assert (report.hostname, report.url, report.headers["x-a"]) == ("echo-v2-xyz", "/k", ["1"])


def test_keep_alive_serves_several_requests_per_connection(server: echo.EchoServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_ports[0], timeout=10)
    try:
        for i in range(3):
            conn.request("POST", f"/n{i}", body=b"x" * i)
            resp = conn.getresponse()
            assert echo.parse_echo(resp.read()).url == f"/n{i}"
    finally:
        conn.close()


def test_h2c_prior_knowledge_on_the_http_port(
    server: echo.EchoServer, runner: loop.LoopThread
) -> None:
    async def call() -> tuple[list[tuple[str, str]], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_ports[0])
        conn = h2io.H2Connection(streams.SocketStream(reader, writer), client_side=True)
        await conn.start()
        try:
            stream = await conn.open_stream(
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/h2"),
                    (":authority", "svc:80"),
                    ("x-h", "v"),
                ],
                end_stream=True,
            )
            return await stream.response_headers(), await stream.read_all()
        finally:
            await conn.aclose()

    headers, body = runner.run(call(), 10)
    assert h2io.header(headers, ":status") == "200"
    report = echo.parse_echo(body)
    assert (report.proto, report.host, report.url, report.headers["x-h"]) == (
        "HTTP/2.0",
        "svc:80",
        "/h2",
        ["v"],
    )


def test_grpc_echo_with_grpcio_client(server: echo.EchoServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_ports[0]}") as channel:
        call = channel.unary_unary("/proto.EchoTestService/Echo", None, None)
        raw = call(
            echo_pb2.EchoRequest(message="hello").SerializeToString(),
            metadata=(("x-md", "m1"),),
            timeout=10,
        )
        other = channel.unary_unary("/any.Service/Whatever", None, None)(b"", timeout=10)
    report = echo.parse_echo(echo_pb2.EchoResponse.FromString(raw).message)
    assert (report.hostname, report.message, report.url, report.proto) == (
        "echo-v2-xyz",
        "hello",
        "/proto.EchoTestService/Echo",
        "GRPC",
    )
    assert report.headers["x-md"] == ["m1"]
    assert (
        echo.parse_echo(echo_pb2.EchoResponse.FromString(other).message).url
        == "/any.Service/Whatever"
    )


def test_tcp_echo_prefixes_the_hostname(server: echo.EchoServer) -> None:
    with socket.create_connection(("127.0.0.1", server.tcp_ports[0]), timeout=10) as sock:
        sock.sendall(b"abc" * 1000)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got == b"Hostname=echo-v2-xyz\n" + b"abc" * 1000


def test_many_backends_on_distinct_loopback_addresses(runner: loop.LoopThread) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.1.1", 0))
        port = probe.getsockname()[1]
    servers = echo.start_many(
        (
            echo.EchoServer(
                f"backend-{i}", "lb", bind=f"127.0.1.{i}", http_ports=(port,), tcp_ports=(0,)
            )
            for i in range(1, 7)
        ),
        runner,
    )
    try:
        seen = {
            echo.parse_echo(_get(port, "/", host=f"127.0.1.{i}")[2]).hostname for i in range(1, 7)
        }
        assert seen == {f"backend-{i}" for i in range(1, 7)}
    finally:
        for srv in servers:
            srv.stop_background()
    # Stopped cleanly: the port is free again on every address.
    for i in range(1, 7):
        with socket.socket() as again:
            again.bind((f"127.0.1.{i}", port))


def test_port_conflict_names_the_server(server: echo.EchoServer, runner: loop.LoopThread) -> None:
    clash = echo.EchoServer("clash", "apps", http_ports=(server.tcp_ports[0],))
    with pytest.raises(OSError, match=r"echo clash: cannot listen on 127\.0\.0\.1"):
        clash.start_background(runner)


def test_parse_echo_inverts_format_and_rejects_other_text() -> None:
    fields = [
        ("Host", "h"),
        ("URL", "/u"),
        ("Method", "PUT"),
        ("RequestHeader", "X-A:1"),
        ("RequestHeader", "x-a:2:colon"),
        ("Hostname", "pod"),
        ("Namespace", "ns"),
    ]
    for text in (echo.format_text(fields), echo.format_json(fields)):
        report = echo.parse_echo(text)
        assert (report.hostname, report.namespace, report.method, report.url, report.host) == (
            "pod",
            "ns",
            "PUT",
            "/u",
            "h",
        )
        assert report.headers == {"x-a": ["1", "2:colon"]}
    with pytest.raises(ValueError, match="not an echo response"):
        echo.parse_echo("<html>nope</html>")


def test_expect_continue_and_head(server: echo.EchoServer) -> None:
    port = server.http_ports[0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PUT /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        reader = sock.makefile("rb")
        assert reader.readline() == b"HTTP/1.1 200 OK\r\n"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("HEAD", "/h")
        resp = conn.getresponse()
        assert resp.status == 200
        assert int(resp.getheader("content-length") or 0) > 0
        assert resp.read() == b""
        conn.request("GET", "/after-head")  # the connection is still in sync
        assert echo.parse_echo(conn.getresponse().read()).url == "/after-head"
    finally:
        conn.close()


def test_each_grpc_port_reports_itself(runner: loop.LoopThread) -> None:
    srv = echo.EchoServer("two-ports", "apps", http_ports=(), grpc_ports=(0, 0)).start_background(
        runner
    )
    try:
        for port in srv.grpc_ports:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                raw = channel.unary_unary("/proto.EchoTestService/Echo", None, None)(
                    b"", timeout=10
                )
            assert echo.parse_echo(
                echo_pb2.EchoResponse.FromString(raw).message
            ).service_port == str(port)
        assert srv.requests_served == 2
    finally:
        srv.stop_background()
