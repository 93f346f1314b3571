"""Listening sockets whose connections the ``h2`` transport accepts itself.

asyncio's servers make a task, a transport and a protocol for every connection before the
application learns who is calling. A peer in the penalty box (``extauthz.peers``) that
reconnects as fast as it can would make us pay all of that for each connection refused:
measured on the 2-core build machine, about 60 µs of CPU per refusal. Accepting here, the
caller sees the peer's address first and refuses with one ``close`` (an RST, so no
TIME_WAIT is left on our side); connections it keeps are handed to asyncio as before.

The sockets are made as asyncio's ``create_server`` and ``create_unix_server`` make them:
every address the host resolves to, SO_REUSEADDR, IPV6_V6ONLY, optional SO_REUSEPORT, and
a stale unix socket file replaced.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

BACKLOG = 100  # asyncio's default
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST at once
_PAUSE_SECONDS = 1.0  # after running out of descriptors or memory, as asyncio's servers do
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

Accepted = Callable[[socket.socket, Any], None]
"""Called with each accepted (non-blocking) socket and its peer address."""


async def tcp_sockets(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Bound sockets for every address ``host`` resolves to ("" or "0.0.0.0": all)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind {address!r}: {exc.strerror}") from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def unix_socket(path: str) -> socket.socket:
    """A bound unix socket at ``path``, replacing a socket file left by a dead server."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    return sock


def refuse(sock: socket.socket) -> None:
    """Close an accepted connection with RST: nothing read, nothing sent, nothing kept."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


class Acceptor:
    """Accepts connections on a bound socket and hands each to ``accepted``."""

    def __init__(self, sock: socket.socket, accepted: Accepted) -> None:
        self._sock = sock
        self._accepted = accepted
        self._loop = asyncio.get_running_loop()
        self._closed = False
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    @property
    def port(self) -> int:
        """The bound TCP port (0 for a unix socket)."""
        name = self._sock.getsockname()
        return int(name[1]) if isinstance(name, tuple) else 0

    def _accept(self) -> None:
        for _ in range(BACKLOG):  # at most a backlog's worth per turn: others wait too
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # Connections wait in the backlog meanwhile; retrying at once would spin.
                log.error("extauthz: cannot accept (%s); pausing %ss", exc, _PAUSE_SECONDS)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(_PAUSE_SECONDS, self._resume)
                return
            conn.setblocking(False)
            self._accepted(conn, address)

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
