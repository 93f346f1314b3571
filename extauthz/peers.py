"""Per-peer budgets and the penalty box of the ``h2`` transport (docs/extauthz.md).

A per-connection budget does not stop a client that reconnects as soon as it is cut off:
every new connection would bring a fresh one. So the control-frame and reset buckets are
kept per peer address, shared by all of that peer's connections, in an LRU table of
bounded size (a flood of addresses evicts the oldest peers, it cannot grow the table).

A peer cut off for control-frame abuse (GOAWAY ENHANCE_YOUR_CALM) enters the penalty box:
its new connections are closed at accept, before any byte is read, for ``penalty``
seconds, doubling with each further cut-off up to ``penalty_max``; one doubling is
forgiven for each ``penalty_max`` seconds the peer then behaves. A peer cut off for
resetting too many streams gets only the first, short penalty, never doubled: Envoy
resets the checks its own timeout gave up on, and a slow policy must not lock it out.

Each peer may also hold at most so many connections open at once, so that one host cannot
take every connection slot of the process.

A peer is an IPv4 address, or an IPv6 /64 (one host usually owns a whole /64, so keying
by the full address would hand it 2**64 fresh budgets); an IPv4-mapped IPv6 address is
its IPv4 address. Every unix-socket client is one peer.
"""

from __future__ import annotations

import collections
import dataclasses
import socket
from typing import Any

from extauthz import http2

UNIX_PEER = "unix"
_V4_MAPPED = bytes(10) + b"\xff\xff"


def peer_key(peername: Any) -> str:
    """The key of a connection's peer, from asyncio's ``peername`` extra info."""
    if not isinstance(peername, tuple) or not peername:
        return UNIX_PEER
    host = str(peername[0])
    if ":" not in host:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return host
    if packed.startswith(_V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


@dataclasses.dataclass
class Peer:
    """One peer's shared buckets and penalty state."""

    buckets: http2.Buckets
    strikes: int = 0  # control-abuse cut-offs not yet forgiven
    until: float = 0.0  # new connections are refused before this time
    open: int = 0  # connections of this peer open now (see Slot)


class Slot:
    """One open connection counted against its peer's ``open``; released exactly once.

    The connection holds the Peer itself, not its key: if the table evicts the peer while
    its connections are open, they still release what they took. (A peer evicted and seen
    again starts from 0 open: only a client cycling through more addresses than the table
    holds gets around the cap, and then each address is a peer of its own anyway.)
    """

    def __init__(self, peer: Peer) -> None:
        self._peer: Peer | None = peer
        peer.open += 1

    def release(self) -> None:
        if self._peer is not None:
            self._peer.open -= 1
            self._peer = None


class Peers:
    """The bounded table of peers; ``penalty`` 0 turns the penalty box off."""

    def __init__(
        self,
        budget: http2.Budget,
        size: int,
        penalty: float,
        penalty_max: float,
        clock: http2.Clock,
    ) -> None:
        self._budget = budget
        self._size = size
        self._penalty = penalty
        self._penalty_max = max(penalty, penalty_max)
        # Strikes stop counting once the penalty is at its maximum, so that forgiving one
        # always halves the next penalty.
        self._max_strikes = 1
        while penalty and penalty * 2 ** (self._max_strikes - 1) < self._penalty_max:
            self._max_strikes += 1
        self._clock = clock
        self._table: collections.OrderedDict[str, Peer] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def get(self, key: str) -> Peer:
        """The peer's entry, created (evicting the least recently seen) if new."""
        peer = self._table.get(key)
        if peer is not None:
            self._table.move_to_end(key)
            return peer
        if len(self._table) >= self._size:
            self._table.popitem(last=False)
        peer = Peer(http2.Buckets.fresh(self._budget, self._clock))
        self._table[key] = peer
        return peer

    def penalized(self, peer: Peer) -> bool:
        """Whether ``peer``'s new connections are to be refused now."""
        return bool(peer.until) and self._clock() < peer.until

    def penalize(self, key: str, abuse: str) -> float:
        """Start ``key``'s penalty for ``abuse`` (an ``http2`` abuse kind); its seconds."""
        if not self._penalty or not abuse:
            return 0.0
        peer = self.get(key)
        now = self._clock()
        if abuse == http2.RESET_ABUSE:
            seconds = self._penalty
        else:
            behaved = max(0.0, now - peer.until) if peer.until else 0.0
            forgiven = int(behaved // self._penalty_max)
            peer.strikes = min(self._max_strikes, max(0, peer.strikes - forgiven) + 1)
            seconds = min(self._penalty_max, self._penalty * 2 ** (peer.strikes - 1))
        peer.until = max(peer.until, now + seconds)
        return seconds
