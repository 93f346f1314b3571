"""Free ports: below the ephemeral range, never twice, never one that is bound."""

from __future__ import annotations

import pathlib
import socket

from waypoint.runtime import ports


def test_ports_are_distinct_unbound_and_below_the_ephemeral_range() -> None:
    ephemeral = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low = int(ephemeral[0])
    held = []
    try:
        given = [ports.free_port() for _ in range(200)]
        assert len(set(given)) == len(given)
        assert all(port < low for port in given)
        for port in given[:20]:  # each one really is free: a listener can take it
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen()
            held.append(sock)
    finally:
        for sock in held:
            sock.close()


def test_a_run_of_ports_is_free_and_never_handed_out_again() -> None:
    first = ports.free_ports(3)
    run = {first, first + 1, first + 2}
    assert all(ports.bindable("127.0.0.1", port) for port in run)
    assert run.isdisjoint(ports.free_port() for _ in range(200))
