"""The waypoint IR: what one waypoint must do, free of Kubernetes and Envoy types.

``waypoint.translate`` produces it from Kubernetes objects; ``waypoint.envoy`` turns it into
Envoy resources. Everything here is a frozen dataclass made of tuples, so two translations
of the same input compare equal and hash alike, which the xDS cache relies on.
"""

from __future__ import annotations

import dataclasses
import enum


class TrafficType(enum.Enum):
    """Which traffic a waypoint handles (``istio.io/waypoint-for``)."""

    SERVICE = "service"
    WORKLOAD = "workload"
    ALL = "all"
    NONE = "none"


class Protocol(enum.Enum):
    """The application protocol a destination port speaks."""

    HTTP = "http"  # HTTP/1.1 (or h2c upgraded by the client); L7 routes apply
    HTTP2 = "http2"  # h2c prior knowledge, gRPC included; L7 routes apply
    TCP = "tcp"  # opaque bytes; TCP proxy only

    @property
    def is_http(self) -> bool:
        return self is not Protocol.TCP


# --- upstream clusters --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One reachable instance of a backend port.

    ``hbone`` says the workload is in the mesh (ambient), so the waypoint reaches it through an
    HBONE tunnel to ``address:<upstream hbone port>`` with CONNECT authority ``address:port``.
    """

    address: str
    port: int
    hbone: bool = False
    ready: bool = True
    service_account: str | None = None
    pod: str | None = None


@dataclasses.dataclass(frozen=True)
class Cluster:
    """An upstream: one Service port (or one workload port) and its endpoints."""

    name: str
    protocol: Protocol
    endpoints: tuple[Endpoint, ...]
    namespace: str
    service: str
    port: int
    policy: ClusterPolicy | None = None  # TrafficPolicy's cluster-level part


# --- L7 routes ----------------------------------------------------------------------------


class MatchType(enum.Enum):
    EXACT = "Exact"
    PREFIX = "PathPrefix"
    REGEX = "RegularExpression"


@dataclasses.dataclass(frozen=True)
class PathMatch:
    type: MatchType
    value: str


@dataclasses.dataclass(frozen=True)
class ValueMatch:
    """A header or query parameter match; ``type`` is EXACT or REGEX."""

    name: str
    value: str
    type: MatchType = MatchType.EXACT


@dataclasses.dataclass(frozen=True)
class RouteMatch:
    """One HTTPRouteMatch; gRPC service/method matches arrive here already as path matches."""

    path: PathMatch | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclasses.dataclass(frozen=True)
class Header:
    name: str
    value: str


@dataclasses.dataclass(frozen=True)
class HeaderModifier:
    """Gateway API HTTPHeaderFilter: set overwrites, add appends, remove deletes."""

    set: tuple[Header, ...] = ()
    add: tuple[Header, ...] = ()
    remove: tuple[str, ...] = ()


class PathModifierType(enum.Enum):
    FULL = "ReplaceFullPath"
    PREFIX = "ReplacePrefixMatch"


@dataclasses.dataclass(frozen=True)
class PathModifier:
    type: PathModifierType
    value: str


@dataclasses.dataclass(frozen=True)
class Redirect:
    """HTTPRequestRedirectFilter; None fields keep the request's value."""

    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """HTTPURLRewriteFilter."""

    hostname: str | None = None
    path: PathModifier | None = None


@dataclasses.dataclass(frozen=True)
class Mirror:
    """HTTPRequestMirrorFilter: a copy of each request (or a percentage) goes to ``cluster``."""

    cluster: str
    percent: float = 100.0


@dataclasses.dataclass(frozen=True)
class Retry:
    """HTTPRouteRetry: attempts are retries after the first try."""

    attempts: int
    codes: tuple[int, ...] = ()
    backoff_seconds: float | None = None
    retry_on: tuple[str, ...] = ()  # Envoy retry_on conditions (TrafficPolicy); () = defaults
    per_try_timeout: float | None = None  # seconds; TrafficPolicy's perTryTimeout


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """HTTPRouteTimeouts in seconds; ``request`` 0 means no timeout."""

    request: float | None = None
    backend_request: float | None = None


@dataclasses.dataclass(frozen=True)
class WeightedBackend:
    """A backendRef. ``cluster`` None means the ref did not resolve: requests to it get 500."""

    cluster: str | None
    weight: int = 1
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None


@dataclasses.dataclass(frozen=True)
class Route:
    """One (rule, match) pair of an HTTPRoute or GRPCRoute, already in precedence order.

    ``name`` is deterministic (see ``waypoint.names.route_name``); exactly one of
    ``backends`` (forward), ``redirect`` or ``direct_status`` decides the action. A rule with
    no backendRefs and no redirect answers ``direct_status`` 500, as the spec requires.
    """

    name: str
    match: RouteMatch
    backends: tuple[WeightedBackend, ...] = ()
    redirect: Redirect | None = None
    direct_status: int | None = None
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    rewrite: Rewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    consumer_namespace: str | None = None  # consumer route: only clients in this namespace
    policy: RoutePolicy | None = None  # ExtAuthzPolicy and TrafficPolicy parts that apply here


# --- policies (waypoint.policy) -----------------------------------------------------------


class FailureMode(enum.Enum):
    CLOSED = "Closed"
    OPEN = "Open"


@dataclasses.dataclass(frozen=True)
class ExtAuthz:
    """An ExtAuthzPolicy as it applies to one route: ask extauthz for ``decision``.

    ``policy`` is ``<namespace>/<name>`` of the policy, for logs and context extensions.
    ``max_request_bytes`` 0 sends no body.
    """

    policy: str
    decision: str
    failure_mode: FailureMode = FailureMode.CLOSED
    timeout: float = 0.2
    max_request_bytes: int = 0
    allow_partial_message: bool = False
    jwt_required: bool = False


@dataclasses.dataclass(frozen=True)
class LocalRateLimit:
    """A token bucket per route (per Envoy): ``tokens`` refilled every ``fill_interval`` s."""

    tokens: int
    fill_interval: float


@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """Delay and/or abort a percentage of requests."""

    delay: float | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_percent: float = 100.0


@dataclasses.dataclass(frozen=True)
class RoutePolicy:
    """What policies add to one route. ``sources`` names the winning policies."""

    authz: ExtAuthz | None = None
    rate_limit: LocalRateLimit | None = None
    fault: FaultInjection | None = None
    sources: tuple[str, ...] = ()


class LoadBalancerType(enum.Enum):
    ROUND_ROBIN = "RoundRobin"
    LEAST_REQUEST = "LeastRequest"
    RANDOM = "Random"
    CONSISTENT_HASH = "ConsistentHash"


@dataclasses.dataclass(frozen=True)
class LoadBalancer:
    """``hash_header`` or ``hash_cookie`` (with ``cookie_ttl`` s) for CONSISTENT_HASH."""

    type: LoadBalancerType = LoadBalancerType.ROUND_ROBIN
    hash_header: str | None = None
    hash_cookie: str | None = None
    cookie_ttl: float | None = None


@dataclasses.dataclass(frozen=True)
class CircuitBreaker:
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_parallel_requests: int | None = None
    max_parallel_retries: int | None = None


@dataclasses.dataclass(frozen=True)
class OutlierDetection:
    """Passive health checking on request failures (5xx and connection errors)."""

    consecutive_5xx: int | None = None
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None


@dataclasses.dataclass(frozen=True)
class ClusterPolicy:
    load_balancer: LoadBalancer | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    sources: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TokenHeader:
    name: str
    prefix: str = ""


@dataclasses.dataclass(frozen=True)
class ClaimHeader:
    claim: str
    header: str


@dataclasses.dataclass(frozen=True)
class JwtProvider:
    """One RequestAuthentication jwtRule; ``name`` is ``<ns>.<name>.<rule index>``.

    ``jwks`` is inline JWKS JSON text, ``jwks_uri`` a URL; at least one is set.
    """

    name: str
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks_uri: str | None = None
    jwks: str | None = None
    from_headers: tuple[TokenHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    claim_to_headers: tuple[ClaimHeader, ...] = ()
    payload_header: str | None = None
    forward_original_token: bool = False
    jwks_timeout: float | None = None  # seconds to fetch ``jwks_uri``; None: 5 s


# --- Istio AuthorizationPolicy -------------------------------------------------------------


class AuthzAction(enum.Enum):
    """What a matching AuthorizationPolicy does; evaluated CUSTOM, then DENY, then ALLOW."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


class AuthzKey(enum.Enum):
    """An attribute an AuthorizationPolicy condition reads (Istio's condition keys)."""

    SOURCE_PRINCIPAL = "source.principal"
    SOURCE_NAMESPACE = "source.namespace"
    SOURCE_IP = "source.ip"
    REQUEST_PRINCIPAL = "request.auth.principal"
    REQUEST_AUDIENCES = "request.auth.audiences"
    REQUEST_PRESENTER = "request.auth.presenter"
    REQUEST_CLAIM = "request.auth.claims"
    REQUEST_HEADER = "request.headers"
    HOST = "hosts"
    METHOD = "methods"
    PATH = "paths"
    DESTINATION_PORT = "destination.port"
    DESTINATION_IP = "destination.ip"

    @property
    def http_only(self) -> bool:
        """Attributes a TCP connection does not have (Istio drops them for TCP)."""
        return self not in _L4_KEYS


@dataclasses.dataclass(frozen=True)
class AuthzCondition:
    """One attribute with its allowed ``values`` (any matches) and ``not_values`` (none may).

    ``name`` is the header name of REQUEST_HEADER and the claim path of REQUEST_CLAIM.
    """

    key: AuthzKey
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()
    name: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class AuthzRule:
    """One rule: any ``sources`` entry and any ``operations`` entry, and every ``when``.

    An entry is a tuple of conditions that must all hold; no entries means no constraint.
    """

    sources: tuple[tuple[AuthzCondition, ...], ...] = ()
    operations: tuple[tuple[AuthzCondition, ...], ...] = ()
    when: tuple[AuthzCondition, ...] = ()


@dataclasses.dataclass(frozen=True)
class AuthorizationPolicy:
    """An Istio AuthorizationPolicy as it applies to a destination.

    ``rules`` empty is a policy that matches nothing (so an ALLOW policy with no rules
    denies everything). ``dry_run`` policies are evaluated and counted, never enforced.
    ``provider`` is the CUSTOM action's extension provider.
    """

    namespace: str
    name: str
    action: AuthzAction
    rules: tuple[AuthzRule, ...] = ()
    dry_run: bool = False
    provider: str | None = None

    @property
    def source(self) -> str:
        return f"AuthorizationPolicy/{self.namespace}/{self.name}"


_L4_KEYS = frozenset(
    {
        AuthzKey.SOURCE_PRINCIPAL,
        AuthzKey.SOURCE_NAMESPACE,
        AuthzKey.SOURCE_IP,
        AuthzKey.DESTINATION_PORT,
        AuthzKey.DESTINATION_IP,
    }
)


# --- destinations served by the waypoint -------------------------------------------------


class DestinationKind(enum.Enum):
    SERVICE = "service"
    WORKLOAD = "workload"


@dataclasses.dataclass(frozen=True)
class Destination:
    """A port the waypoint accepts tunnels for, keyed by CONNECT authority ``address:port``.

    A Service destination carries the Service's VIPs; a workload destination carries a pod IP.
    ``routes`` empty means "no route attached": everything goes to ``default_cluster``.
    """

    kind: DestinationKind
    namespace: str
    name: str
    port: int
    addresses: tuple[str, ...]
    protocol: Protocol
    default_cluster: str
    routes: tuple[Route, ...] = ()
    hostnames: tuple[str, ...] = ()
    policy: RoutePolicy | None = None  # for the default route, when ``routes`` is empty
    principal: str | None = None  # the workloads' SPIFFE ID when they all share one
    authorization: tuple[AuthorizationPolicy, ...] = ()  # Istio AuthorizationPolicies here
    jwt_providers: tuple[str, ...] = ()  # names of the JwtProviders that verify tokens here

    @property
    def needs_extauthz(self) -> bool:
        """Some request here may ask extauthz for a decision: through an AuthorizationPolicy
        with action CUSTOM, or an ExtAuthzPolicy on a route or the default route."""
        if any(p.action is AuthzAction.CUSTOM for p in self.authorization):
            return True
        if self.policy is not None and self.policy.authz is not None:
            return True
        return any(r.policy is not None and r.policy.authz is not None for r in self.routes)


@dataclasses.dataclass(frozen=True)
class WaypointIdentity:
    """Who the waypoint is: ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""

    trust_domain: str
    namespace: str
    service_account: str


@dataclasses.dataclass(frozen=True)
class Waypoint:
    """Everything one waypoint Envoy needs. Tuples are sorted by name for determinism."""

    namespace: str
    name: str
    traffic_type: TrafficType
    identity: WaypointIdentity
    scope_service_account: str | None
    destinations: tuple[Destination, ...]
    clusters: tuple[Cluster, ...]
    jwt_providers: tuple[JwtProvider, ...] = ()  # every RequestAuthentication rule reaching it
    # Istio's "sandwich" binding: ztunnel terminates HBONE and sends each connection here in
    # plain TCP behind a PROXY v2 header. None: the waypoint terminates HBONE itself.
    proxy_port: int | None = None

    @property
    def needs_extauthz(self) -> bool:
        """The waypoint needs the extauthz sidecar: some destination asks it for decisions."""
        return any(d.needs_extauthz for d in self.destinations)


# --- status ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Condition:
    """A Kubernetes-style condition (Accepted, ResolvedRefs, Programmed, ...)."""

    type: str
    status: bool
    reason: str
    message: str = ""


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{kind}/{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class ParentStatus:
    """A route's status for one parentRef (a Service, as GAMMA has it)."""

    parent: ObjectRef
    port: int | None
    conditions: tuple[Condition, ...]
    section_name: str | None = None  # the parentRef's sectionName (a Service port name)


@dataclasses.dataclass(frozen=True)
class ResourceStatus:
    """The verdict on one input object: its own conditions, and per-parent ones for routes."""

    ref: ObjectRef
    conditions: tuple[Condition, ...] = ()
    parents: tuple[ParentStatus, ...] = ()

    @property
    def failed(self) -> tuple[Condition, ...]:
        """Why the object is not (fully) accepted: its False conditions, then its parents'."""
        return tuple(c for c in self.conditions if not c.status) + tuple(
            c for p in self.parents for c in p.conditions if not c.status
        )

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclasses.dataclass(frozen=True)
class Translation:
    """The result of translating one world: waypoints and the status of every input."""

    waypoints: tuple[Waypoint, ...]
    statuses: tuple[ResourceStatus, ...]

    def waypoint(self, namespace: str, name: str) -> Waypoint | None:
        for candidate in self.waypoints:
            if (candidate.namespace, candidate.name) == (namespace, name):
                return candidate
        return None
