"""Fault knobs the controller's runtime tests need, on top of the fake API server, and a log
of every request it served.

``FaultyKube`` is a ``FakeKube`` whose requests can be made to hang until released (a GET, a
watch after its headers, one replica's Lease update, told apart by the holder in its body), to
fail with 403 as RBAC does, or simply be counted, each by a rule on the method, path, query
and body. Rules are matched before the request reaches the server's state, outside its lock,
so a hung request holds up only itself, as a slow API server or a stuck proxy would. (The
server's own ``faults`` knobs throttle and delay by verb and resource; these add what they do
not: a release, 403s, matching on the body, and the request log.)
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.fakekube import server

# (method, path, query, body) -> whether the rule applies; method is "WATCH" for watches.
Match = Callable[[str, str, dict[str, str], bytes], bool]


@dataclasses.dataclass
class Hang:
    """Hold matching requests until ``release`` is set or ``seconds`` pass, then serve them."""

    match: Match
    seconds: float
    release: threading.Event = dataclasses.field(default_factory=threading.Event)
    started: threading.Event = dataclasses.field(default_factory=threading.Event)
    held: int = 0


@dataclasses.dataclass
class Forbid:
    """Answer matching requests with 403 Forbidden, as RBAC does, while ``active``."""

    match: Match
    active: bool = True


@dataclasses.dataclass(frozen=True)
class Request:
    at: float
    method: str
    path: str
    query: dict[str, str]


class FaultyKube(server.FakeKube):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hangs: list[Hang] = []
        self.forbids: list[Forbid] = []
        self.requests: list[Request] = []
        self._faults_lock = threading.Lock()

    def hang(self, match: Match, seconds: float) -> Hang:
        rule = Hang(match, seconds)
        self.hangs.append(rule)
        return rule

    def forbid(self, match: Match) -> Forbid:
        rule = Forbid(match)
        self.forbids.append(rule)
        return rule

    def requests_since(self, start: int) -> list[Request]:
        with self._faults_lock:
            return list(self.requests[start:])

    @property
    def request_count(self) -> int:
        with self._faults_lock:
            return len(self.requests)

    def _before(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        with self._faults_lock:
            self.requests.append(Request(time.monotonic(), method, path, dict(query)))
        for rule in list(self.forbids):
            if rule.active and rule.match(method, path, query, body):
                raise server.ApiError(
                    403,
                    "Forbidden",
                    f'{method.lower()} {path} is forbidden: User "system:serviceaccount:'
                    'waypoint-system:waypoint-controller" cannot do that',
                )
        for hang in list(self.hangs):
            if hang.match(method, path, query, body):
                hang.held += 1
                hang.started.set()
                hang.release.wait(hang.seconds)

    def serve(
        self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str
    ) -> tuple[int, server.Obj, list[str]]:
        self._before(method, path, query, body)
        return super().serve(method, path, query, body, ctype)

    def watch(self, path: str, query: dict[str, str], send: Any, sock: socket.socket) -> None:
        self._before("WATCH", path, query, b"")
        super().watch(path, query, send, sock)


def get_in_namespace(namespace: str) -> Match:
    def match(method: str, path: str, query: dict[str, str], body: bytes) -> bool:
        return method == "GET" and f"/namespaces/{namespace}/" in path

    return match


def lists_of(plural: str) -> Match:
    """List and watch requests of one resource (``requestauthentications``)."""

    def match(method: str, path: str, query: dict[str, str], body: bytes) -> bool:
        return method in ("GET", "WATCH") and path.rstrip("/").endswith("/" + plural)

    return match


def lease_update_by(identity: str) -> Match:
    """A PUT of a Lease whose body names ``identity`` as holder: that replica's renewals."""

    def match(method: str, path: str, query: dict[str, str], body: bytes) -> bool:
        if method != "PUT" or "/leases/" not in path:
            return False
        try:
            holder = (json.loads(body or b"{}").get("spec") or {}).get("holderIdentity")
        except ValueError:
            return False
        return bool(holder == identity)

    return match
