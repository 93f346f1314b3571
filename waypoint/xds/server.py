"""The Aggregated Discovery Service: one gRPC stream per Envoy, both xDS protocol variants.

``StreamAggregatedResources`` is state of the world (SotW): every response carries all of a
type's resources (or all the requested ones, for named types such as routes). Delta
``DeltaAggregatedResources`` sends only what changed and the names removed.

Per stream, one response is in flight at a time and the next is chosen from the snapshot the
cache holds for the Envoy's waypoint (``naming.key_of_node``), in ``snapshot.PUSH_ORDER``:
secrets, clusters and endpoints first, then listeners and routes. While listeners or routes are
not yet at the new snapshot, the clusters (and secrets, endpoints) an Envoy already accepted are
kept alongside the new ones; they are removed only after listeners and routes have moved on and
``removal_delay`` has passed, so connections draining on an old listener still find their
cluster. Versions are content hashes, so nothing unchanged is ever sent again, even to an Envoy
that reconnects after a server restart. Responses the Envoy ACKs become its known state; a NACK
goes to the cache, which rolls the waypoint back to its last good snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, TypeAlias

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from waypoint.xds import cache, metrics, naming, snapshot

LOG = logging.getLogger(__name__)

# xds-protos ships no type stubs: these aliases document what travels, mypy sees Any.
DiscoveryRequest: TypeAlias = Any
DeltaDiscoveryRequest: TypeAlias = Any
Request: TypeAlias = Any
Response: TypeAlias = Any

USER_TYPES = (snapshot.LISTENER, snapshot.ROUTE)


@dataclasses.dataclass
class _TypeState:
    """What one Envoy asked for of one resource type, and what it has."""

    type_url: str
    requested: bool = False
    wildcard: bool = False
    names: set[str] = dataclasses.field(default_factory=set)
    # What the Envoy has as far as we know: everything we sent (ACKed or not).
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    # Bodies as of the last ACK: the only old resources worth keeping during a change.
    acked: dict[str, snapshot.Resource] = dataclasses.field(default_factory=dict)
    pending: dict[str, snapshot.Resource] = dataclasses.field(default_factory=dict)
    pending_removed: tuple[str, ...] = ()
    nonce: str = ""  # of our latest response of this type
    awaiting: bool = False  # that response is not yet ACKed or NACKed
    sent_once: bool = False
    rejected: bool = False
    client_version: str = ""
    pushed_version: str = ""
    pushed_snapshot: str = ""

    def covers(self, name: str) -> bool:
        return self.wildcard or name in self.names


class _Stream:
    """One Envoy's ADS stream: its subscriptions, known state and the next push."""

    def __init__(self, server: AdsServer, delta: bool) -> None:
        self.server = server
        self.delta = delta
        self.key: naming.WaypointKey | None = None
        self.node_id = ""
        self.types: dict[str, _TypeState] = {}
        self.wake = asyncio.Event()
        self.users_moved_at = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._nonces = itertools.count(1)

    @property
    def variant(self) -> str:
        return "delta" if self.delta else "sotw"

    # --- requests --------------------------------------------------------------------------

    def on_request(self, request: Request) -> None:
        state = self.types.setdefault(request.type_url, _TypeState(request.type_url))
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug(
                "xds %s %s: request %s nonce %r%s",
                self.node_id,
                self.variant,
                metrics.short_type(request.type_url),
                request.response_nonce,
                " (NACK)" if request.HasField("error_detail") else "",
            )
        if isinstance(request, discovery_pb2.DeltaDiscoveryRequest):
            self._subscribe_delta(state, request)
        else:
            stale = request.response_nonce and request.response_nonce != state.nonce
            if stale and state.sent_once:
                return  # answers a response we have superseded; the protocol says ignore it
            # (A nonce we never sent on this stream comes from before a reconnect: subscribe.)
            self._subscribe_sotw(state, request)
        if request.response_nonce and request.response_nonce == state.nonce and state.awaiting:
            self._settle(
                state, request.error_detail.message if request.HasField("error_detail") else None
            )

    def _subscribe_sotw(self, state: _TypeState, request: DiscoveryRequest) -> None:
        names = set(request.resource_names)
        state.wildcard = "*" in names or (not names and state.type_url in snapshot.WILDCARD_TYPES)
        state.names = names - {"*"}
        if not state.wildcard:
            # An Envoy that dropped a name (its cluster went away) has forgotten the resource:
            # if it asks again, it must be sent again.
            for name in [n for n in state.versions if n not in state.names]:
                del state.versions[name]
                state.acked.pop(name, None)
        if not state.requested and request.version_info:
            state.client_version = request.version_info
        state.requested = True

    def _subscribe_delta(self, state: _TypeState, request: DeltaDiscoveryRequest) -> None:
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if not state.requested:
            state.requested = True
            state.wildcard = "*" in subscribe or (
                not subscribe and state.type_url in snapshot.WILDCARD_TYPES
            )
            state.versions = dict(request.initial_resource_versions)
        if "*" in subscribe:
            state.wildcard = True
        if "*" in unsubscribe:
            state.wildcard = False
        state.names = (state.names | subscribe) - unsubscribe - {"*"}
        for name in unsubscribe:
            state.versions.pop(name, None)
            state.acked.pop(name, None)

    def _settle(self, state: _TypeState, error: str | None) -> None:
        """The Envoy answered our latest push of this type: ACK (error None) or NACK."""
        state.awaiting = False
        if error is None:
            state.rejected = False
            if self.delta:
                for name in state.pending_removed:
                    state.acked.pop(name, None)
                state.acked.update(state.pending)
            else:
                state.acked = dict(state.pending)
            if state.type_url in USER_TYPES:
                self.users_moved_at = time.monotonic()
            return
        state.rejected = True
        assert self.key is not None
        self.server.cache.report_nack(
            cache.Nack(
                key=self.key,
                node_id=self.node_id,
                type_url=state.type_url,
                version=state.pushed_version,
                snapshot_version=state.pushed_snapshot,
                message=error,
            )
        )

    # --- responses -------------------------------------------------------------------------

    def step(self, snap: snapshot.Snapshot) -> Response | None:
        """The next response to send, or None (waiting for ACKs, or nothing changed).

        Each type has at most one response awaiting its ACK, but types do not wait for each
        other, except listeners and routes: they wait until every cluster, endpoint and secret
        push is ACKed (Envoy ACKs clusters only once they have warmed, i.e. got endpoints).
        """
        referenced_ready = self._endpoints_ready(snap) and not any(
            s.awaiting for s in self.types.values() if s.type_url in snapshot.REFERENCED_TYPES
        )
        users_settled = all(self._at_target(t, snap) for t in USER_TYPES)
        wait = self.users_moved_at + self.server.removal_delay - time.monotonic()
        keep_old = not users_settled or wait > 0
        for state in self._ordered():
            if state.awaiting or (state.type_url in USER_TYPES and not referenced_ready):
                # A route to a cluster still warming (no endpoints yet) would fail requests.
                continue
            keep = keep_old and state.type_url in snapshot.REFERENCED_TYPES
            want = self._desired(state, snap, keep)
            response = self._delta_response(state, want, keep, snap) if self.delta else None
            if not self.delta:
                response = self._sotw_response(state, want, snap)
            if response is not None:
                metrics.PUSHES.labels(str(self.key), metrics.short_type(state.type_url)).inc()
                return response
        if users_settled and wait > 0:
            self._wake_in(wait)
        if users_settled and wait <= 0:
            self._maybe_applied(snap)
        return None

    def _ordered(self) -> Iterable[_TypeState]:
        order = {type_url: index for index, type_url in enumerate(snapshot.PUSH_ORDER)}
        requested = [s for s in self.types.values() if s.requested]
        return sorted(requested, key=lambda s: (order.get(s.type_url, len(order)), s.type_url))

    def _desired(
        self, state: _TypeState, snap: snapshot.Snapshot, keep: bool
    ) -> dict[str, snapshot.Resource]:
        target = snap.of_type(state.type_url)
        if state.wildcard:
            want = dict(target)
        else:
            want = {name: target[name] for name in sorted(state.names) if name in target}
        if state.type_url == snapshot.ROUTE and self._awaiting(snapshot.LISTENER):
            # Until the listeners are ACKed, existing route configs stay as they are (a
            # rejected listener update must not half-apply); new ones are served at once,
            # since the listeners asking for them wait for them.
            want.update({n: state.acked[n] for n in want if n in state.acked})
        if keep:
            for name, body in state.acked.items():
                if name not in want and state.covers(name):
                    want[name] = body
        return want

    def _awaiting(self, type_url: str) -> bool:
        state = self.types.get(type_url)
        return state is not None and state.awaiting

    def _endpoints_ready(self, snap: snapshot.Snapshot) -> bool:
        """Every EDS cluster the Envoy has got its endpoints (it subscribes after CDS)."""
        clusters = self.types.get(snapshot.CLUSTER)
        if clusters is None:
            return True
        assignments = snap.of_type(snapshot.ENDPOINT)
        needed = [n for n in snap.eds_clusters if n in clusters.versions and n in assignments]
        if not needed:
            return True
        eds = self.types.get(snapshot.ENDPOINT)
        if eds is None or eds.awaiting:
            return False
        return all(eds.covers(n) and eds.versions.get(n) == assignments[n].version for n in needed)

    def _at_target(self, type_url: str, snap: snapshot.Snapshot) -> bool:
        state = self.types.get(type_url)
        if state is None or not state.requested:
            # Every waypoint Envoy asks for listeners; routes only if its listeners use RDS.
            return type_url != snapshot.LISTENER
        if state.awaiting:
            return False
        want = self._desired(state, snap, keep=False)
        if any(state.versions.get(name) != res.version for name, res in want.items()):
            return False
        return not (state.wildcard and set(state.versions) - set(want))

    def _sotw_response(
        self, state: _TypeState, want: dict[str, snapshot.Resource], snap: snapshot.Snapshot
    ) -> discovery_pb2.DiscoveryResponse | None:
        current = {name: res.version for name, res in want.items()}
        version = snapshot.version_of(want)
        if not state.sent_once and state.client_version == version:
            # Reconnected to a restarted server that holds the same content: say nothing.
            state.sent_once, state.versions, state.acked = True, current, dict(want)
            return None
        if state.wildcard:
            if state.sent_once and current == state.versions:
                return None
        elif not want or all(state.versions.get(n) == v for n, v in current.items()):
            return None
        state.versions, state.pending, state.pending_removed = current, dict(want), ()
        self._mark_sent(state, version, snap)
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=state.type_url,
            nonce=state.nonce,
            resources=[res.body for res in want.values()],
        )

    def _delta_response(
        self,
        state: _TypeState,
        want: dict[str, snapshot.Resource],
        keep: bool,
        snap: snapshot.Snapshot,
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        changed = {n: r for n, r in want.items() if state.versions.get(n) != r.version}
        removed: tuple[str, ...] = ()
        if not keep:
            removed = tuple(sorted(n for n in state.versions if n not in want and state.covers(n)))
        first_wildcard = state.wildcard and not state.sent_once
        if not changed and not removed and not first_wildcard:
            return None
        for name in removed:
            del state.versions[name]
        state.versions.update({n: r.version for n, r in changed.items()})
        state.pending, state.pending_removed = changed, removed
        self._mark_sent(state, snapshot.version_of(want), snap)
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=snap.version,
            type_url=state.type_url,
            nonce=state.nonce,
            resources=[
                discovery_pb2.Resource(name=n, version=r.version, resource=r.body)
                for n, r in changed.items()
            ],
            removed_resources=removed,
        )

    def _mark_sent(self, state: _TypeState, version: str, snap: snapshot.Snapshot) -> None:
        state.nonce = str(next(self._nonces))
        state.awaiting = True
        state.sent_once = True
        state.pushed_version = version
        state.pushed_snapshot = snap.version
        LOG.debug(
            "xds %s %s: push %s version %s nonce %s",
            self.node_id,
            self.variant,
            metrics.short_type(state.type_url),
            version,
            state.nonce,
        )

    def _maybe_applied(self, snap: snapshot.Snapshot) -> None:
        states = [s for s in self.types.values() if s.requested]
        if not states or any(s.rejected or s.awaiting for s in states):
            return
        if all(self._at_target(s.type_url, snap) for s in states):
            assert self.key is not None
            self.server.cache.report_applied(self.key, snap.version)

    def _wake_in(self, seconds: float) -> None:
        if self.timer is None or self.timer.cancelled():
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(seconds, self._timer_fired)

    def _timer_fired(self) -> None:
        self.timer = None
        self.wake.set()


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, server: AdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterable[DiscoveryRequest],
        context: grpc.aio.ServicerContext[DiscoveryRequest, discovery_pb2.DiscoveryResponse],
    ) -> AsyncIterator[Response]:
        # grpc.aio streams only from methods that are async generators themselves.
        async for response in self._server.serve_stream(request_iterator, context, delta=False):
            yield response

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterable[DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[
            DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
        ],
    ) -> AsyncIterator[Response]:
        async for response in self._server.serve_stream(request_iterator, context, delta=True):
            yield response


class AdsServer:
    """An ADS gRPC server over a :class:`cache.SnapshotCache`; run it inside an event loop."""

    def __init__(self, snapshots: cache.SnapshotCache, removal_delay: float = 1.0) -> None:
        self.cache = snapshots
        self.removal_delay = removal_delay
        self._grpc: grpc.aio.Server | None = None
        self._streams: set[_Stream] = set()
        self.port = 0

    async def start(self, address: str) -> int:
        """Listen on ``host:port`` (port 0 picks one); returns the bound port."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"xds: cannot listen on {address}")
        await server.start()
        self._grpc = server
        LOG.info("xds: ADS listening on %s (port %d)", address, self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None

    async def wait(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()

    def connected(self) -> list[tuple[str, str, str]]:
        """(waypoint, node id, variant) of every open stream, sorted."""
        return sorted((str(s.key), s.node_id, s.variant) for s in self._streams)

    async def serve_stream(
        self,
        requests: AsyncIterable[Request],
        context: grpc.aio.ServicerContext[Request, Response],
        delta: bool,
    ) -> AsyncIterator[Response]:
        incoming = aiter(requests)
        try:
            first = await anext(incoming)
        except StopAsyncIteration:
            return
        stream = _Stream(self, delta)
        try:
            stream.key = naming.key_of_node(first.node.cluster, first.node.id)
        except naming.NodeError as exc:
            LOG.warning("xds: refusing stream from node %r: %s", first.node.id, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        stream.node_id = first.node.id
        key = stream.key
        loop = asyncio.get_running_loop()

        def wake() -> None:
            # Sources call this from their own threads; a loop shutting down has no one to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stream.wake.set)

        unwatch = self.cache.watch(key, wake)
        stream.on_request(first)
        reader = asyncio.create_task(self._read(incoming, stream))
        self._streams.add(stream)
        metrics.STREAMS.labels(str(key), stream.variant).inc()
        LOG.info("xds: %s stream from %s (waypoint %s)", stream.variant, stream.node_id, key)
        try:
            while not reader.done():
                snap = self.cache.get(key) if self.cache.has_snapshot(key) else None
                response = stream.step(snap) if snap is not None else None
                if response is not None:
                    yield response
                    continue
                await stream.wake.wait()
                stream.wake.clear()
        finally:
            unwatch()
            reader.cancel()
            if stream.timer is not None:
                stream.timer.cancel()
            self._streams.discard(stream)
            metrics.STREAMS.labels(str(key), stream.variant).dec()
            LOG.info("xds: %s stream from %s closed", stream.variant, stream.node_id)

    @staticmethod
    async def _read(incoming: AsyncIterator[Request], stream: _Stream) -> None:
        try:
            async for request in incoming:
                stream.on_request(request)
                stream.wake.set()
        finally:
            stream.wake.set()
