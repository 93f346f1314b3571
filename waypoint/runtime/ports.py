"""Free TCP ports for local listeners, handed out so that two users never get the same one.

Asking the kernel for port 0 and releasing it returns an *ephemeral* port, the kind every
outgoing connection also takes, and nothing stops the next ``bind(0)`` in this very process
from returning it again. Both happened in CI: an Envoy admin listener and a test listener
were given one port. Ports here come from below Linux's ephemeral range, which outgoing
connections never use, and this process never hands out one port twice.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading

_LOW, _HIGH = 20_000, 32_000  # below ip_local_port_range's default start (32768)
_SPAN = _HIGH - _LOW
# Processes start at different offsets so that two of them rarely probe the same ports.
_candidates = itertools.count(os.getpid() * 7_919 % _SPAN)
_given: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing is bound to now and this process has not handed out."""
    return free_ports(1, host)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive such ports (extauthz ``--workers`` need a run)."""
    with _lock:
        for _ in range(_SPAN):
            first = _LOW + next(_candidates) % _SPAN
            run = range(first, first + count)
            if run[-1] < _HIGH and all(p not in _given and _unbound(host, p) for p in run):
                _given.update(run)
                return first
    raise OSError(f"no {count} free consecutive ports on {host} in {_LOW}-{_HIGH}")


def _unbound(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def bindable(address: str, port: int) -> bool:
    """Whether a listener could bind ``address:port`` now (TIME_WAIT does not count)."""
    with socket.socket() as sock:
        # Envoy and asyncio listen with SO_REUSEADDR, so a port held only by TIME_WAIT is usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
