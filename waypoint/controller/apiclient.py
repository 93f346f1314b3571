"""The Kubernetes API client: a narrow, dict-based layer over the official ``kubernetes``
dynamic client.

Everything the controller and the CLI do to a cluster goes through ``Cluster``: get, list,
watch, server-side apply, status updates with optimistic concurrency, merge patches, delete.
Objects go in and come out as plain dicts; a missing API (say, no Gateway API CRDs) becomes
``MissingKind`` with instructions, a 403 ``Forbidden`` and a 409 ``Conflict``.

Every request is bounded: ``Timeouts`` sets the connect and read timeouts of each request
(discovery included), and a watch asks the server to end it after ``timeout_seconds`` and gives
up reading a little after that, so a hung server costs one request its timeout, never a thread.
A ``fence``, when set, is asked before every write (the leader elector uses it to stop writes
the moment it can no longer be sure it leads).

Why not ``kubernetes.dynamic.DynamicClient`` alone: discovery and every request do go through
it; this layer is what each caller would otherwise repeat around it.

- Bounds: its REST layer gives urllib3 ``timeout=None`` unless a call passes
  ``_request_timeout``, so a silent API server holds the calling thread for good
  (tests/test_controller_runtime.py holds requests and watches to show ours end).
- Plain dicts, where it returns ``ResourceInstance`` wrappers; errors that name the object,
  as classes callers act on.
- A discovery cache per connection: its default file, ``$TMPDIR/osrcp-<md5 of the host>.json``,
  is shared by every client of an address and read back at the next start, so it is stale
  between clusters (or fake servers) that reuse one.
- The write fence.

Discovery costs the same either way. Against tests/fakekube, on a loaded 2-core machine:
connecting makes 2 requests (``/api``, ``/apis``), 17-44 ms; the first lookup of the 19
kinds the controller uses makes 11 requests (about one per group version), 70-165 ms. A kind
the server does not serve makes it rediscover everything each time it is asked: 2 requests,
10-16 ms. After that its ``resources.get`` searches its tree, 20-30 µs a call;
``Cluster.resource`` keeps each Kind it found (under 3 µs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import urllib3.exceptions as urllib3_errors
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import dynamic
from kubernetes import watch as k8s_watch
from kubernetes.client import rest as k8s_rest
from kubernetes.dynamic import exceptions as dyn_errors

from waypoint import wellknown
from waypoint.kube import constants

Obj = dict[str, Any]


# --- typed views of the official client -----------------------------------------------------
# The client ships py.typed, but these parts of it are unannotated (mypy strict refuses an
# untyped call). The Protocols below are the methods we call, and mypy checks that the client's
# classes have them; the three loader functions get the signatures their docstrings give.


class _Watch(Protocol):
    """``kubernetes.watch.Watch``: ``stream`` yields ``{"type", "object", "raw_object"}``."""

    def stream(self, func: Callable[..., Any], **kwargs: Any) -> Iterator[dict[str, Any]]: ...

    def stop(self) -> None: ...


class _Closable(Protocol):
    """``kubernetes.client.ApiClient.close``: ends its thread pool and its connections."""

    def close(self) -> None: ...


class _Summarised(Protocol):
    """``DynamicApiError.summary``: the Status message, the body, or the status and reason."""

    def summary(self) -> str: ...


_new_watch: Callable[[], _Watch] = k8s_watch.Watch
_new_dynamic: Callable[..., dynamic.DynamicClient] = dynamic.DynamicClient
# Declared, not inferred: new_client_from_config(config_file, context, ...) -> ApiClient;
# load_incluster_config(client_configuration, ...) fills the Configuration in place;
# list_kube_config_contexts(config_file) -> (every context, the current one), contexts as dicts.
_client_from_kubeconfig: Callable[..., k8s_client.ApiClient] = k8s_config.new_client_from_config
_load_incluster: Callable[..., None] = k8s_config.load_incluster_config
_kubeconfig_contexts: Callable[..., tuple[list[Obj], Obj]] = k8s_config.list_kube_config_contexts


@dataclasses.dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def __str__(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


NAMESPACE = Kind("v1", "Namespace")
SERVICE = Kind("v1", "Service")
POD = Kind("v1", "Pod")
CONFIG_MAP = Kind("v1", "ConfigMap")
SERVICE_ACCOUNT = Kind("v1", "ServiceAccount")
DEPLOYMENT = Kind("apps/v1", "Deployment")
AUTOSCALER = Kind("autoscaling/v2", "HorizontalPodAutoscaler")
DISRUPTION_BUDGET = Kind("policy/v1", "PodDisruptionBudget")
ENDPOINT_SLICE = Kind(f"{wellknown.DISCOVERY_GROUP}/v1", "EndpointSlice")
LEASE = Kind("coordination.k8s.io/v1", "Lease")
GATEWAY = Kind(wellknown.GATEWAY_API_VERSION, "Gateway")
GATEWAY_CLASS = Kind(wellknown.GATEWAY_API_VERSION, "GatewayClass")
HTTP_ROUTE = Kind(wellknown.GATEWAY_API_VERSION, "HTTPRoute")
GRPC_ROUTE = Kind(wellknown.GATEWAY_API_VERSION, "GRPCRoute")
EXTAUTHZ_POLICY = Kind(wellknown.POLICY_API_VERSION, "ExtAuthzPolicy")
TRAFFIC_POLICY = Kind(wellknown.POLICY_API_VERSION, "TrafficPolicy")
REQUEST_AUTHENTICATION = Kind(wellknown.ISTIO_SECURITY_API_VERSION, "RequestAuthentication")
AUTHORIZATION_POLICY = Kind(wellknown.ISTIO_SECURITY_API_VERSION, "AuthorizationPolicy")

# Optional inputs: without their CRDs the controller runs, and says so once.
POLICY_KINDS = (EXTAUTHZ_POLICY, TRAFFIC_POLICY, REQUEST_AUTHENTICATION, AUTHORIZATION_POLICY)

GENERATED_KINDS = (SERVICE_ACCOUNT, CONFIG_MAP, SERVICE, DEPLOYMENT, AUTOSCALER, DISRUPTION_BUDGET)


def kind_of(obj: Mapping[str, Any]) -> Kind:
    return Kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))


class ClusterError(RuntimeError):
    """A request failed; the message names the object and the server's reason.

    ``status`` is the HTTP status code and ``reason`` the API's ``Status.reason`` (such as
    ``Invalid`` or ``Forbidden``) when the server answered; 0 and "" otherwise."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class MissingKind(ClusterError):
    """The API server does not serve a kind we need (its CRD is not installed)."""


class Conflict(ClusterError):
    """409: someone else changed the object, or it already exists, or fields conflict."""


class Gone(ClusterError):
    """410: a watch's resourceVersion is too old; relist."""


class Forbidden(ClusterError):
    """403: the controller's RBAC does not allow the request."""


class Fenced(ClusterError):
    """A write was refused locally: this process may no longer write (it lost the Lease)."""


# Called before every write with the kind written; raises ``Fenced`` to refuse it.
Fence = Callable[[Kind], None]


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Per-request limits, in seconds. ``watch_grace`` is how long past its server-side
    ``timeoutSeconds`` a silent watch is still read before it counts as hung."""

    connect: float = 5.0
    read: float = 30.0
    watch_grace: float = 15.0


class _BoundedRest(k8s_rest.RESTClientObject):
    """The client's REST layer with a default (connect, read) timeout on every request: the
    client's own default is to wait forever."""

    def __init__(self, configuration: Any, timeouts: Timeouts) -> None:
        super().__init__(configuration)
        self._default_timeout = (timeouts.connect, timeouts.read)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if len(args) < 4 and not kwargs.get("_request_timeout"):
            kwargs["_request_timeout"] = self._default_timeout
        # RESTClientObject.request is unannotated; it returns a RESTResponse.
        request: Callable[..., k8s_rest.RESTResponse] = super().request
        return request(method, url, *args, **kwargs)


class Cluster:
    """One API server connection. ``close()`` drops the discovery cache it created."""

    def __init__(self, api_client: k8s_client.ApiClient, timeouts: Timeouts | None = None) -> None:
        self._cache_dir = tempfile.mkdtemp(prefix="waypoint-discovery-")
        self.api_client = api_client
        self.timeouts = timeouts or Timeouts()
        # One connection per watching informer plus the workers' requests: urllib3's default
        # of 10 pooled connections would open and discard connections all the time.
        api_client.configuration.connection_pool_maxsize = max(
            api_client.configuration.connection_pool_maxsize or 0, 64
        )
        api_client.rest_client.close()
        api_client.rest_client = _BoundedRest(api_client.configuration, self.timeouts)
        self.fence: Fence | None = None
        # A private discovery cache: a shared one keyed by host:port goes stale between
        # clusters that reuse an address (and in tests, between fake servers).
        try:
            self.dynamic = _new_dynamic(
                api_client, cache_file=os.path.join(self._cache_dir, "discovery.json")
            )
        except Exception as exc:  # any transport or auth failure during the first discovery
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            host = api_client.configuration.host
            raise ClusterError(f"cannot reach the API server at {host}: {_reason(exc)}") from exc
        self._resources: dict[Kind, Any] = {}

    @classmethod
    def connect(
        cls,
        kubeconfig: str | None = None,
        context: str | None = None,
        timeouts: Timeouts | None = None,
    ) -> Cluster:
        """From a kubeconfig (``--kubeconfig``/``$KUBECONFIG``/~/.kube/config), else in-cluster."""
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        default = pathlib.Path.home() / ".kube" / "config"
        try:
            if path or default.exists() or context:
                api = _client_from_kubeconfig(config_file=path, context=context)
                return cls(api, timeouts)
            configuration = k8s_client.Configuration()
            _load_incluster(client_configuration=configuration)
            return cls(k8s_client.ApiClient(configuration), timeouts)
        except (k8s_config.ConfigException, OSError) as exc:
            where = path or str(default)
            raise ClusterError(f"cannot load cluster credentials from {where}: {exc}") from exc

    def close(self) -> None:
        shutil.rmtree(self._cache_dir, ignore_errors=True)
        client: _Closable = self.api_client
        client.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- discovery ---------------------------------------------------------------------

    def resource(self, kind: Kind) -> Any:
        found = self._resources.get(kind)
        if found is not None:
            return found
        try:
            found = self.dynamic.resources.get(api_version=kind.api_version, kind=kind.kind)
        except dyn_errors.ResourceNotFoundError:
            hint = (
                constants.GATEWAY_API_INSTALL_HINT
                if kind.group == wellknown.GATEWAY_API_GROUP
                else "is its CRD installed?"
            )
            raise MissingKind(
                f"the cluster does not serve {kind.kind} ({kind.api_version}): {hint}"
            ) from None
        except Exception as exc:
            raise ClusterError(
                f"cannot reach the API server for discovery: {_reason(exc)}"
            ) from exc
        self._resources[kind] = found
        return found

    def serves(self, kind: Kind) -> bool:
        try:
            self.resource(kind)
        except MissingKind:
            return False
        return True

    # --- reads -------------------------------------------------------------------------

    def get(
        self, kind: Kind, namespace: str, name: str, timeout: float | None = None
    ) -> Obj | None:
        """The object, or None; ``timeout`` overrides the read timeout of this request."""
        resource = self.resource(kind)
        try:
            found = resource.get(name=name, namespace=namespace or None, **self._timeout(timeout))
        except dyn_errors.NotFoundError:
            return None
        except dyn_errors.DynamicApiError as exc:
            raise _error(exc, f"get {kind} {_ref(namespace, name)}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise ClusterError(f"get {kind} {_ref(namespace, name)}: {_reason(exc)}") from exc
        return _plain(found)

    def _timeout(self, read: float | None) -> dict[str, Any]:
        if read is None:
            return {}
        return {"_request_timeout": (min(self.timeouts.connect, read), read)}

    def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[Obj], str]:
        """The items (with apiVersion and kind filled in) and the list's resourceVersion."""
        resource = self.resource(kind)
        try:
            found = _plain(resource.get(namespace=namespace or None, label_selector=label_selector))
        except dyn_errors.NotFoundError as exc:
            raise MissingKind(f"list {kind}: {_reason(exc)}") from exc
        except dyn_errors.DynamicApiError as exc:
            raise _error(exc, f"list {kind}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise ClusterError(f"list {kind}: {_reason(exc)}") from exc
        items = [
            {"apiVersion": kind.api_version, "kind": kind.kind, **item}
            for item in found.get("items") or []
        ]
        return items, str((found.get("metadata") or {}).get("resourceVersion") or "")

    def watch(
        self,
        kind: Kind,
        resource_version: str,
        timeout_seconds: int,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> Iterator[tuple[str, Obj]]:
        """(type, object) events, BOOKMARKs included, until the server ends the watch.

        The server ends it after ``timeout_seconds``; should it fall silent instead, the read
        times out ``watch_grace`` seconds later and the watch fails with ``ClusterError``."""
        resource = self.resource(kind)
        watcher = _new_watch()
        try:
            for event in watcher.stream(
                resource.get,
                namespace=namespace or None,
                label_selector=label_selector,
                resource_version=resource_version,
                serialize=False,
                timeout_seconds=timeout_seconds,
                allow_watch_bookmarks=True,
                _request_timeout=(
                    self.timeouts.connect,
                    timeout_seconds + self.timeouts.watch_grace,
                ),
            ):
                obj = dict(event["raw_object"])
                obj.setdefault("apiVersion", kind.api_version)
                obj.setdefault("kind", kind.kind)
                yield str(event["type"]), obj
        except k8s_client.ApiException as exc:
            if exc.status == 410:
                raise Gone(f"watch {kind}: {exc.reason}") from exc
            if exc.status == 403:
                raise Forbidden(f"watch {kind}: {exc.status} {exc.reason}") from exc
            raise ClusterError(f"watch {kind}: {exc.status} {exc.reason}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise ClusterError(f"watch {kind}: {_reason(exc)}") from exc
        finally:
            watcher.stop()

    # --- writes ------------------------------------------------------------------------

    def apply(
        self,
        obj: Mapping[str, Any],
        field_manager: str = constants.FIELD_MANAGER,
        force: bool = True,
        dry_run: bool = False,
    ) -> Obj:
        """Server-side apply ``obj`` as ``field_manager``."""
        kind = kind_of(obj)
        meta = obj.get("metadata") or {}
        extra = {"dry_run": "All"} if dry_run else {}
        if not dry_run:
            self._check_fence(kind)
        try:
            applied = self.resource(kind).server_side_apply(
                body=dict(obj),
                name=meta.get("name"),
                namespace=meta.get("namespace"),
                field_manager=field_manager,
                force_conflicts=force,
                **extra,
            )
        except dyn_errors.DynamicApiError as exc:
            raise _error(
                exc, f"apply {kind} {_ref(meta.get('namespace'), meta.get('name'))}"
            ) from exc
        return _plain(applied)

    def replace_status(
        self, obj: Mapping[str, Any], field_manager: str = constants.FIELD_MANAGER
    ) -> Obj:
        """PUT the status subresource; ``metadata.resourceVersion`` makes it optimistic (409)."""
        kind = kind_of(obj)
        meta = obj.get("metadata") or {}
        self._check_fence(kind)
        try:
            updated = self.resource(kind).status.replace(
                body=dict(obj), namespace=meta.get("namespace"), field_manager=field_manager
            )
        except dyn_errors.DynamicApiError as exc:
            raise _error(
                exc, f"update status of {kind} {_ref(meta.get('namespace'), meta.get('name'))}"
            ) from exc
        return _plain(updated)

    def merge_patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        field_manager: str = constants.FIELD_MANAGER,
    ) -> Obj:
        self._check_fence(kind)
        try:
            patched = self.resource(kind).patch(
                body=dict(patch),
                name=name,
                namespace=namespace or None,
                content_type="application/merge-patch+json",
                field_manager=field_manager,
            )
        except dyn_errors.DynamicApiError as exc:
            raise _error(exc, f"patch {kind} {_ref(namespace, name)}") from exc
        return _plain(patched)

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete; False when it was already gone."""
        self._check_fence(kind)
        try:
            self.resource(kind).delete(name=name, namespace=namespace or None)
        except dyn_errors.NotFoundError:
            return False
        except dyn_errors.DynamicApiError as exc:
            raise _error(exc, f"delete {kind} {_ref(namespace, name)}") from exc
        return True

    def replace(
        self,
        obj: Mapping[str, Any],
        field_manager: str = constants.FIELD_MANAGER,
        timeout: float | None = None,
    ) -> Obj:
        return self._write("replace", "update", obj, field_manager, timeout)

    def create(
        self,
        obj: Mapping[str, Any],
        field_manager: str = constants.FIELD_MANAGER,
        timeout: float | None = None,
    ) -> Obj:
        return self._write("create", "create", obj, field_manager, timeout)

    def _check_fence(self, kind: Kind) -> None:
        if self.fence is not None:
            self.fence(kind)

    def _write(
        self,
        verb: str,
        action: str,
        obj: Mapping[str, Any],
        field_manager: str,
        timeout: float | None,
    ) -> Obj:
        """PUT (``replace``) or POST (``create``) a whole object; errors name it."""
        kind = kind_of(obj)
        meta = obj.get("metadata") or {}
        self._check_fence(kind)
        try:
            written = getattr(self.resource(kind), verb)(
                body=dict(obj),
                namespace=meta.get("namespace"),
                field_manager=field_manager,
                **self._timeout(timeout),
            )
        except dyn_errors.DynamicApiError as exc:
            where = _ref(meta.get("namespace"), meta.get("name"))
            raise _error(exc, f"{action} {kind} {where}") from exc
        except _TRANSPORT_ERRORS as exc:
            where = _ref(meta.get("namespace"), meta.get("name"))
            raise ClusterError(f"{action} {kind} {where}: {_reason(exc)}") from exc
        return _plain(written)


# A request that timed out or lost its connection (urllib3 errors are OSErrors or HTTPErrors).
_TRANSPORT_ERRORS = (OSError, urllib3_errors.HTTPError)


def _plain(found: Any) -> Obj:
    result: Obj = found.to_dict() if hasattr(found, "to_dict") else dict(found)
    return result


def _ref(namespace: object, name: object) -> str:
    return f"{namespace}/{name}" if namespace else str(name)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, dyn_errors.DynamicApiError):
        summarised: _Summarised = exc
        return f"{exc.status} {summarised.summary()}"
    return str(exc) or type(exc).__name__


def _error(exc: dyn_errors.DynamicApiError, action: str) -> ClusterError:
    message = f"{action}: {exc.status} {_server_message(exc)}"
    status, reason = int(exc.status or 0), _server_reason(exc)
    if exc.status == 409:
        return Conflict(message, status, reason)
    if exc.status == 410:
        return Gone(message, status, reason)
    if exc.status == 403:
        return Forbidden(message, status, reason)
    return ClusterError(message, status, reason)


def _server_reason(exc: dyn_errors.DynamicApiError) -> str:
    """The ``reason`` of the API's Status body (``Invalid``, ``Forbidden``…), else ""."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return ""
    return str(body.get("reason") or "") if isinstance(body, dict) else ""


def _server_message(exc: dyn_errors.DynamicApiError) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason)
    return str(body.get("message") or exc.reason)


def context_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig context (as kubectl uses it), else ``default``."""
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    try:
        contexts, active = _kubeconfig_contexts(config_file=path)
    except (k8s_config.ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")
