"""The fake kube-apiserver: state, HTTP handler and test controls.

It simulates just enough of the API server (and, through ``set_status`` and the garbage
collection on delete, of the kubelet and kube-controller-manager) for the real ``kubernetes``
client to run the waypoint controller and CLI against it. Tests talk to it only through a
kubeconfig (``write_kubeconfig``) and inspect it directly (``get``, ``writes``).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import datetime
import http.server
import json
import pathlib
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from tests.fakekube import builtin, catalog, crdrules, crschema, faults, ssa
from tests.fakekube import fielderrors as fe

TOKEN = "fake-token"
Obj = dict[str, Any]
ObjKey = tuple[tuple[str, str], str, str]  # ((group, plural), namespace, name)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details

    def status(self) -> Obj:
        status: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def invalid(resource: catalog.Resource, name: str, errors: list[fe.FieldError]) -> ApiError:
    """422 Invalid naming every field at fault, as apierrors.NewInvalid builds it."""
    body = fe.invalid_status(resource.kind, resource.group, name, errors)
    return ApiError(422, "Invalid", body["message"], body["details"])


@dataclasses.dataclass(frozen=True)
class Write:
    verb: str
    kind: str
    namespace: str
    name: str
    subresource: str = ""


@dataclasses.dataclass
class _Event:
    rv: int
    resource: tuple[str, str]
    type: str
    obj: Obj


class FakeKube:
    """A stateful API server on 127.0.0.1; use as a context manager or call start/stop."""

    def __init__(
        self, gateway_api: bool = True, bookmark_interval: float = 0.5, policies: bool = True
    ) -> None:
        self.resources = list(catalog.BUILTIN) + (list(catalog.GATEWAY_API) if gateway_api else [])
        if policies:
            self.resources += catalog.policies()
        self.bookmark_interval = bookmark_interval
        self._by_key = {resource.key: resource for resource in self.resources}
        self._objects: dict[ObjKey, Obj] = {}
        self._owners: dict[ObjKey, dict[str, set[ssa.Path]]] = {}
        self._events: list[_Event] = []
        self._rv = 100
        self._compacted = 0
        self._epoch = 0
        self._uids = 0
        self._ips = 10
        self._cond = threading.Condition()
        self._watch_sockets: set[socket.socket] = set()
        self.writes: list[Write] = []
        self.faults = faults.Faults()
        self._warnings: list[str] = []
        # Every Warning the server sent (unknown fields it pruned), for tests to assert on.
        self.warned: list[str] = []
        # Every quantity stored in another form than sent (``Deployment web spec...: 0.5 -> 500m``).
        self.rewritten: list[str] = []
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeKube:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.drop_watches()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: pathlib.Path, context: str = "fake") -> pathlib.Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": "default"},
                }
            ],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # --- test controls -----------------------------------------------------------------

    def seed(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Store objects as if created earlier, without counting them as writes."""
        for obj in objects:
            resource = self._resource_for(obj)
            meta = obj.get("metadata") or {}
            with self._cond:
                self._create(resource, str(meta.get("namespace") or ""), dict(obj), "seed")

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        resource = self._resource_for({"apiVersion": api_version, "kind": kind})
        with self._cond:
            found = self._objects.get((resource.key, namespace, name))
            return copy.deepcopy(found) if found else None

    def objects(self, api_version: str, kind: str) -> list[Obj]:
        resource = self._resource_for({"apiVersion": api_version, "kind": kind})
        with self._cond:
            return [
                copy.deepcopy(obj)
                for key, obj in sorted(self._objects.items())
                if key[0] == resource.key
            ]

    def count(self, api_version: str, kind: str, predicate: Callable[[Obj], bool]) -> int:
        """How many stored objects of a kind satisfy ``predicate``, read in place.

        For harnesses that poll (a benchmark waiting for every Gateway to be programmed):
        :meth:`objects` deep-copies each object, which at scale costs the harness more CPU
        than the controller it measures. ``predicate`` must not mutate what it reads.
        """
        resource = self._resource_for({"apiVersion": api_version, "kind": kind})
        with self._cond:
            return sum(
                1 for key, obj in self._objects.items() if key[0] == resource.key and predicate(obj)
            )

    def set_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Obj
    ) -> None:
        """Change an object's status as the kubelet or a built-in controller would."""
        resource = self._resource_for({"apiVersion": api_version, "kind": kind})
        with self._cond:
            key = (resource.key, namespace, name)
            obj = copy.deepcopy(self._objects[key])
            obj["status"] = status
            self._store(resource, key, obj, "MODIFIED")

    def reset_writes(self) -> None:
        with self._cond:
            self.writes.clear()

    def compact(self) -> None:
        """Forget the event history, so watches from any older resourceVersion get 410 Gone."""
        with self._cond:
            self._compacted = self._rv
            self._epoch += 1
            self._events.clear()
            self._cond.notify_all()

    def drop_watches(self) -> None:
        """Cut every open watch connection, as a restarting API server or load balancer does."""
        with self._cond:
            sockets = list(self._watch_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def watch_count(self) -> int:
        with self._cond:
            return len(self._watch_sockets)

    # --- storage -----------------------------------------------------------------------

    def _resource_for(self, obj: Mapping[str, Any]) -> catalog.Resource:
        for resource in self.resources:
            if resource.api_version == obj.get("apiVersion") and resource.kind == obj.get("kind"):
                return resource
        raise ApiError(
            404, "NotFound", f"no resource for {obj.get('apiVersion')} {obj.get('kind')}"
        )

    def _serve_crd(self, crd: Obj, serve: bool) -> None:
        """A stored CustomResourceDefinition makes its kind served; deleting it stops that."""
        found = catalog.from_crd(crd) if serve else []
        group = (crd.get("spec") or {}).get("group")
        plural = ((crd.get("spec") or {}).get("names") or {}).get("plural")
        self.resources = [
            r for r in self.resources if (r.group, r.plural) != (group, plural)
        ] + found
        self._by_key = {resource.key: resource for resource in self.resources}

    def _admit(self, resource: catalog.Resource, obj: Obj, old: Obj | None, strict: bool) -> Obj:
        """What the server does to an object before it stores it: prune, default,
        canonicalize and validate; a 400 or 422 when it must refuse it."""
        name = str((obj.get("metadata") or {}).get("name") or "")
        errors: list[fe.FieldError] = []
        if resource.kind == "CustomResourceDefinition":
            errors = crdrules.check(obj)
        elif resource.schema is not None:
            obj, unknown, errors = crschema.admit(obj, resource.schema)
            self._unknown_fields(resource, unknown, strict)
        else:
            rewritten: list[str] = []
            errors = builtin.canonicalize(resource.kind, obj, rewritten)
            self.rewritten += [f"{resource.kind} {name} {change}" for change in rewritten]
            if old is not None:
                builtin.carry_allocated(resource.kind, old, obj)
                errors += builtin.validate_update(resource.kind, old, obj)
            else:
                errors += builtin.validate(resource.kind, obj)
        if errors:
            raise invalid(resource, name, errors)
        return obj

    def _unknown_fields(self, resource: catalog.Resource, unknown: list[str], strict: bool) -> None:
        """Pruned fields: an error with fieldValidation=Strict, else Warning headers."""
        if unknown and strict:
            fields = ", ".join(f'unknown field "{field}"' for field in unknown)
            raise ApiError(
                400,
                "BadRequest",
                f'{resource.kind} in version "{resource.version}" cannot be handled as a '
                f"{resource.kind}: strict decoding error: {fields}",
            )
        self._warnings += [f'unknown field "{field}"' for field in unknown]
        self.warned += [f'unknown field "{field}"' for field in unknown]

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _store(self, resource: catalog.Resource, key: ObjKey, obj: Obj, event: str) -> Obj:
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        owners = self._owners.get(key, {})
        obj["metadata"]["managedFields"] = [
            {
                "manager": manager.split("/")[0],
                "operation": "Apply" if "#apply" in manager else "Update",
                "apiVersion": resource.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": ssa.fields_v1(paths),
                **({"subresource": "status"} if "/status" in manager else {}),
            }
            for manager, paths in sorted(owners.items())
        ]
        for entry in obj["metadata"]["managedFields"]:
            entry["manager"] = entry["manager"].removesuffix("#apply")
        self._objects[key] = obj
        self._events.append(_Event(rv, resource.key, event, copy.deepcopy(obj)))
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def _check_namespace(self, resource: catalog.Resource, namespace: str) -> None:
        if resource.namespaced and (("", "namespaces"), "", namespace) not in self._objects:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')

    def _create(
        self,
        resource: catalog.Resource,
        namespace: str,
        body: Obj,
        manager: str,
        applied: bool = False,
        strict: bool = False,
    ) -> Obj:
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{resource.kind}: metadata.name: Required value")
        if resource.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        key = (resource.key, namespace if resource.namespaced else "", name)
        if key in self._objects:
            raise ApiError(409, "AlreadyExists", f'{resource.plural} "{name}" already exists')
        self._check_namespace(resource, namespace)
        if resource.status and resource.kind != "Namespace":
            body.pop("status", None)
        body = self._admit(resource, body, None, strict)
        meta = body["metadata"]
        self._uids += 1
        meta["uid"] = str(uuid.UUID(int=self._uids))
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        # Fields the server fills in (defaults, allocations) belong to no manager.
        lists = resource.list_keys
        try:
            if applied:
                self._owners[key] = {manager: ssa.fieldset(body, lists)}
            else:
                ssa.record_update({}, body, self._owners.setdefault(key, {}), manager, lists)
        except ssa.BadKeys as exc:
            self._owners.pop(key, None)
            raise ApiError(422, "Invalid", f'{resource.kind} "{name}" is invalid: {exc}') from None
        self._default(resource, body)
        stored = self._store(resource, key, body, "ADDED")
        if resource.kind == "CustomResourceDefinition":
            self._serve_crd(body, True)
        return stored

    def _default(self, resource: catalog.Resource, body: Obj) -> None:
        """The defaulting and allocation the real API server does on create."""
        if resource.kind == "Service":
            spec = body.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if not spec.get("clusterIP"):
                self._ips += 1
                spec["clusterIP"] = f"10.96.0.{self._ips}"
                spec["clusterIPs"] = [spec["clusterIP"]]
        if resource.kind == "Deployment":
            body.setdefault("spec", {}).setdefault("replicas", 1)
        if resource.kind == "Namespace":
            body.setdefault("status", {"phase": "Active"})

    def _update(
        self,
        resource: catalog.Resource,
        key: ObjKey,
        new: Obj,
        subresource: str,
        manager: str,
        strict: bool = False,
    ) -> Obj:
        old = self._objects[key]
        merged = copy.deepcopy(old)
        if subresource == "status":
            merged["status"] = new.get("status")
        else:
            for field, value in new.items():
                if field != "status" or not resource.status:
                    merged[field] = value
            for field in ("uid", "creationTimestamp", "generation", "name", "namespace"):
                if field in old["metadata"]:
                    merged["metadata"][field] = old["metadata"][field]
        if merged.get("status") is None:
            merged.pop("status", None)
        merged = self._admit(resource, merged, old, strict)
        if _spec(merged) != _spec(old):
            merged["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        merged["metadata"].pop("resourceVersion", None)
        old_compare = {k: v for k, v in old.items() if k != "metadata"}
        new_compare = {k: v for k, v in merged.items() if k != "metadata"}
        owners = copy.deepcopy(self._owners.get(key, {}))
        try:
            ssa.record_update(
                old,
                merged,
                owners,
                manager + ("/status" if subresource else ""),
                resource.list_keys,
            )
        except ssa.BadKeys as exc:
            raise ApiError(
                422, "Invalid", f'{resource.kind} "{key[2]}" is invalid: {exc}'
            ) from None
        self._owners[key] = owners
        if old_compare == new_compare and _meta(old) == _meta(merged):
            return copy.deepcopy(old)  # a no-op write does not bump the resourceVersion
        stored = self._store(resource, key, merged, "MODIFIED")
        if resource.kind == "CustomResourceDefinition":
            self._serve_crd(merged, True)
        return stored

    def _delete(self, resource: catalog.Resource, key: ObjKey) -> Obj:
        obj = self._objects.pop(key)
        self._owners.pop(key, None)
        if resource.kind == "CustomResourceDefinition":
            self._serve_crd(obj, False)
            # Its custom resources go with it, as the CRD finalizer deletes them.
            spec = obj.get("spec") or {}
            served = (spec.get("group"), (spec.get("names") or {}).get("plural"))
            for gone in [k for k in self._objects if k[0] == served]:
                self._objects.pop(gone)
                self._owners.pop(gone, None)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._events.append(_Event(self._rv, resource.key, "DELETED", copy.deepcopy(obj)))
        self._cond.notify_all()
        self._collect_garbage(obj["metadata"]["uid"], key)
        return obj

    def _collect_garbage(self, uid: str, owner_key: ObjKey) -> None:
        """Background cascading deletion, as the garbage collector does it."""
        dependents = [
            key
            for key, obj in self._objects.items()
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
            or (owner_key[0] == ("", "namespaces") and key[1] == owner_key[2])
        ]
        for key in dependents:
            if key in self._objects:
                self._delete(self._by_key[key[0]], key)

    # --- request handling --------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str
    ) -> tuple[int, Obj]:
        code, result, _ = self.serve(method, path, query, body, ctype)
        return code, result

    def serve(
        self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str
    ) -> tuple[int, Obj, list[str]]:
        """One request: the status code, the body and the ``Warning`` headers to send."""
        with self._cond:
            self._warnings = []
            code, result = self._handle(method, path, query, body, ctype)
            return code, result, list(self._warnings)

    def _handle(
        self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str
    ) -> tuple[int, Obj]:
        route = self._route(path)
        if isinstance(route, dict):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} not allowed on {path}")
            return 200, route
        resource, namespace, name, subresource = route
        with self._cond:
            if method == "GET" and name:
                return 200, copy.deepcopy(self._lookup(resource, namespace, name))
            if method == "GET":
                return 200, self._list(resource, namespace, query)
            manager = query.get("fieldManager", "unknown")
            dry_run = query.get("dryRun") == "All"
            result = self._write(
                method, resource, namespace, name, subresource, query, body, ctype, manager, dry_run
            )
            if not dry_run:
                self.writes.append(
                    Write(
                        method,
                        resource.kind,
                        namespace,
                        name or str(result.get("metadata", {}).get("name", "")),
                        subresource,
                    )
                )
            return (201 if method == "POST" else 200), result

    def _write(
        self,
        method: str,
        resource: catalog.Resource,
        namespace: str,
        name: str,
        subresource: str,
        query: dict[str, str],
        body: bytes,
        ctype: str,
        manager: str,
        dry_run: bool,
    ) -> Obj:
        if dry_run:
            snapshot = (
                copy.deepcopy(self._objects),
                copy.deepcopy(self._owners),
                list(self._events),
                self._rv,
                list(self.resources),
            )
        try:
            return self._mutate(
                method, resource, namespace, name, subresource, query, body, ctype, manager
            )
        finally:
            if dry_run:
                self._objects, self._owners, self._events, self._rv, self.resources = snapshot
                self._by_key = {resource.key: resource for resource in self.resources}

    def _mutate(
        self,
        method: str,
        resource: catalog.Resource,
        namespace: str,
        name: str,
        subresource: str,
        query: dict[str, str],
        body: bytes,
        ctype: str,
        manager: str,
    ) -> Obj:
        key = (resource.key, namespace, name)
        strict = query.get("fieldValidation") == "Strict"
        if method == "POST":
            return self._create(resource, namespace, _decode(body), manager, strict=strict)
        if method == "DELETE":
            self._lookup(resource, namespace, name)
            deleted = self._delete(resource, key)
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Success",
                "details": {
                    "name": name,
                    "kind": resource.plural,
                    "uid": deleted["metadata"]["uid"],
                },
            }
        new = _decode(body)
        if method == "PUT":
            live = self._lookup(resource, namespace, name)
            self._check_rv(resource, live, new)
            return self._update(resource, key, new, subresource, manager, strict)
        if "apply-patch" in ctype:
            return self._apply(resource, key, new, subresource, manager, query)
        if "merge-patch" in ctype:
            live = self._lookup(resource, namespace, name)
            self._check_rv(resource, live, new)
            merged = _merge_patch(live, new)
            return self._update(resource, key, merged, subresource, manager, strict)
        raise ApiError(415, "UnsupportedMediaType", f"the fake server does not support {ctype}")

    def _apply(
        self,
        resource: catalog.Resource,
        key: ObjKey,
        patch: Obj,
        subresource: str,
        manager: str,
        query: dict[str, str],
    ) -> Obj:
        if "fieldManager" not in query:
            raise ApiError(400, "BadRequest", "PATCH: fieldManager is required for apply requests")
        if patch.get("kind") != resource.kind or patch.get("apiVersion") != resource.api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"apply: kind and apiVersion must be {resource.api_version} {resource.kind}",
            )
        if (patch.get("metadata") or {}).get("name") != key[2]:
            raise ApiError(400, "BadRequest", "apply: metadata.name must match the URL")
        force = query.get("force", "").lower() == "true"
        strict = query.get("fieldValidation") == "Strict"
        owner_key = manager + "#apply" + ("/status" if subresource else "")
        if key not in self._objects:
            if subresource:
                raise ApiError(404, "NotFound", f'{resource.plural} "{key[2]}" not found')
            self._check_namespace(resource, key[1])
            return self._create(
                resource, key[1], dict(patch), owner_key, applied=True, strict=strict
            )
        live = self._objects[key]
        self._check_rv(resource, live, patch)
        owners = self._owners.setdefault(key, {})
        if subresource:
            patch = {
                "apiVersion": patch["apiVersion"],
                "kind": patch["kind"],
                "metadata": {"name": key[2]},
                "status": patch.get("status") or {},
            }
        else:
            patch = {k: v for k, v in patch.items() if k != "status" or not resource.status}
        # The server merges what it decoded: canonical quantities, no unknown fields.
        if resource.schema is None:
            rewritten: list[str] = []
            builtin.canonicalize(resource.kind, patch, rewritten)
            self.rewritten += [f"{resource.kind} {key[2]} {change}" for change in rewritten]
        else:
            patch, unknown = crschema.prune(patch, resource.schema, root=True)
            self._unknown_fields(resource, unknown, strict)
        owners = copy.deepcopy(owners)
        try:
            applied = ssa.apply(live, patch, owners, owner_key, force, resource.list_keys)
        except ssa.ApplyConflict as exc:
            raise ApiError(409, "Conflict", str(exc)) from None
        except ssa.BadKeys as exc:
            raise ApiError(
                422, "Invalid", f'{resource.kind} "{key[2]}" is invalid: {exc}'
            ) from None
        applied = self._admit(resource, applied, live, strict)
        self._owners[key] = owners
        applied["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        if applied == live:
            return copy.deepcopy(live)
        if _spec(applied) != _spec(live):
            applied["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
        stored = self._store(resource, key, applied, "MODIFIED")
        if resource.kind == "CustomResourceDefinition":
            self._serve_crd(applied, True)
        return stored

    def _check_rv(self, resource: catalog.Resource, live: Obj, new: Obj) -> None:
        """A write that names a resourceVersion must name the stored one
        (k8s.io/apiserver pkg/registry/generic/registry/store.go, errors.NewConflict)."""
        wanted = (new.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != live["metadata"]["resourceVersion"]:
            name = live["metadata"]["name"]
            qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {qualified} "{name}": '
                "the object has been modified; please apply your changes to the latest version and try again",
                {"name": name, "group": resource.group, "kind": resource.plural},
            )

    def _lookup(self, resource: catalog.Resource, namespace: str, name: str) -> Obj:
        found = self._objects.get((resource.key, namespace, name))
        if found is None:
            raise ApiError(
                404, "NotFound", f'{resource.plural}.{resource.group or "core"} "{name}" not found'
            )
        return found

    def _list(self, resource: catalog.Resource, namespace: str, query: dict[str, str]) -> Obj:
        items = [
            copy.deepcopy(obj)
            for key, obj in sorted(self._objects.items())
            if key[0] == resource.key
            and (not namespace or key[1] == namespace)
            and _selected(obj, query)
        ]
        for item in items:
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return {
            "apiVersion": resource.api_version,
            "kind": resource.kind + "List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _route(self, path: str) -> Obj | tuple[catalog.Resource, str, str, str]:
        parts = [urllib.parse.unquote(part) for part in path.strip("/").split("/") if part]
        if parts == ["version"]:
            return {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0-fake",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            return self._group_list()
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        if not rest:
            return self._resource_list(group, version, path)
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] != "status":
            namespace, rest = rest[1], rest[2:]
        resource = self._by_key.get((group, rest[0]))
        if resource is None or resource.version != version:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        name = rest[1] if len(rest) > 1 else ""
        subresource = rest[2] if len(rest) > 2 else ""
        if subresource and (subresource != "status" or not resource.status):
            raise ApiError(404, "NotFound", f"no subresource {subresource} on {resource.plural}")
        return resource, namespace, name, subresource

    def _group_list(self) -> Obj:
        groups: dict[str, str] = {}
        for resource in self.resources:
            if resource.group:
                groups.setdefault(resource.group, resource.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                    "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
                }
                for group, version in sorted(groups.items())
            ],
        }

    def _resource_list(self, group: str, version: str, path: str) -> Obj:
        served = [r for r in self.resources if r.group == group and r.version == version]
        if not served:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        entries: list[Obj] = []
        for resource in served:
            entries.append(
                {
                    "name": resource.plural,
                    "singularName": resource.kind.lower(),
                    "namespaced": resource.namespaced,
                    "kind": resource.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }
            )
            if resource.status:
                entries.append(
                    {
                        "name": f"{resource.plural}/status",
                        "singularName": "",
                        "namespaced": resource.namespaced,
                        "kind": resource.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": served[0].api_version,
            "resources": entries,
        }

    # --- watch -------------------------------------------------------------------------

    def watch(self, path: str, query: dict[str, str], send: Any, sock: socket.socket) -> None:
        route = self._route(path)
        if isinstance(route, dict):
            raise ApiError(405, "MethodNotAllowed", "cannot watch discovery")
        resource, namespace, _, _ = route
        timeout = float(query.get("timeoutSeconds", "60"))
        bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
        rv_text = query.get("resourceVersion", "")
        with self._cond:
            self._watch_sockets.add(sock)
            try:
                self._watch_locked(resource, namespace, query, rv_text, timeout, bookmarks, send)
            finally:
                self._watch_sockets.discard(sock)

    def _watch_locked(
        self,
        resource: catalog.Resource,
        namespace: str,
        query: dict[str, str],
        rv_text: str,
        timeout: float,
        bookmarks: bool,
        send: Any,
    ) -> None:
        def matches(event: _Event) -> bool:
            meta = event.obj["metadata"]
            return (
                event.resource == resource.key
                and (not namespace or meta.get("namespace") == namespace)
                and _selected(event.obj, query)
            )

        if rv_text in ("", "0"):
            for _key, obj in sorted(self._objects.items()):
                event = _Event(self._rv, resource.key, "ADDED", obj)
                if matches(event):
                    send({"type": "ADDED", "object": obj})
            since = self._rv
        else:
            since = int(rv_text)
            if since < self._compacted:
                send(_gone(since, self._compacted))
                return
        epoch = self._epoch
        deadline = _monotonic() + timeout
        last_sent = _monotonic()
        while not self._closing:
            if epoch != self._epoch:
                # The history this watch was reading from is gone: the client must relist.
                send(_gone(since, self._compacted))
                return
            # The history is in resourceVersion order: start after ``since`` instead of
            # scanning it all on every wake-up (quadratic with 17 watches and 10k events).
            start = bisect.bisect_right(self._events, since, key=_event_rv)
            for event in self._events[start:]:
                since = event.rv
                if matches(event):
                    send({"type": event.type, "object": event.obj})
                    last_sent = _monotonic()
            now = _monotonic()
            if now >= deadline:
                return
            if bookmarks and now - last_sent >= self.bookmark_interval:
                send(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": resource.kind,
                            "apiVersion": resource.api_version,
                            "metadata": {"resourceVersion": str(self._rv)},
                        },
                    }
                )
                since = max(since, self._rv)
                last_sent = now
            self._cond.wait(timeout=min(self.bookmark_interval, max(deadline - now, 0.01)))


def _event_rv(event: _Event) -> int:
    return event.rv


class _QuietServer(http.server.ThreadingHTTPServer):
    """A client that hung up (a timed-out request the fake was holding) is not an error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def _monotonic() -> float:
    return time.monotonic()


def _gone(since: int, compacted: int) -> Obj:
    error = ApiError(410, "Expired", f"too old resource version: {since} ({compacted})")
    return {"type": "ERROR", "object": error.status()}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec(obj: Mapping[str, Any]) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _meta(obj: Mapping[str, Any]) -> Any:
    return {
        k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "managedFields")
    }


def _decode(body: bytes) -> Obj:
    """A request body: JSON as the clients send it, else YAML (the API server takes both).

    JSON first because the kubernetes client always sends JSON, and PyYAML's pure-Python
    parser cost the fake more CPU than the controller it serves at benchmark scale.
    """
    try:
        loaded = json.loads(body or b"{}")
    except ValueError:
        try:
            loaded = yaml.safe_load(body.decode() or "{}")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ApiError(400, "BadRequest", f"cannot decode body: {exc}") from None
    if not isinstance(loaded, dict):
        raise ApiError(400, "BadRequest", "body must be an object")
    return loaded


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(copy.deepcopy(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _selected(obj: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in query.get("labelSelector", "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    meta = obj.get("metadata") or {}
    for term in filter(None, query.get("fieldSelector", "").split(",")):
        field, _, value = term.partition("=")
        actual = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
        }.get(field)
        if actual != value:
            return False
    return True


def _handler(fake: FakeKube) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else every response waits out a delayed ACK

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self, method: str) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            warnings: list[str] = []
            headers: dict[str, str] = {}
            try:
                # The scheme is case-insensitive, as in the API server's authenticator
                # (staging/src/k8s.io/apiserver/pkg/authentication/request/bearertoken/
                # bearertoken.go); the Python client's in-cluster config sends "bearer".
                parts = (self.headers.get("Authorization") or "").strip().split(" ")
                if len(parts) < 2 or parts[0].lower() != "bearer" or parts[1] != TOKEN:
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                throttle = self._fault(method, parsed.path, query)
                if throttle:
                    headers["Retry-After"] = str(throttle)
                    self._reply(429, faults.too_many_requests(throttle), headers=headers)
                    return
                if method == "GET" and query.get("watch", "").lower() in ("true", "1"):
                    self._watch(parsed.path, query)
                    return
                code, result, warnings = fake.serve(
                    method, parsed.path, query, body, self.headers.get("Content-Type", "")
                )
            except ApiError as exc:
                code, result = exc.code, exc.status()
            self._reply(code, result, warnings)

        def _fault(self, method: str, path: str, query: dict[str, str]) -> int:
            """Hold the request if a hang is injected; the Retry-After of an injected 429."""
            try:
                route = fake._route(path)
            except ApiError:
                return 0
            if isinstance(route, dict):
                return 0
            resource, namespace, name, _ = route
            action = fake.faults.take(
                faults.verb_of(method, name, query), resource.plural, namespace
            )
            if action.delay:
                time.sleep(action.delay)
            return action.throttle

        def _reply(
            self,
            code: int,
            result: Obj,
            warnings: list[str] | None = None,
            headers: dict[str, str] | None = None,
        ) -> None:
            data = json.dumps(result).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            for warning in warnings or []:
                # RFC 7234 warn-code 299, as k8s.io/apiserver pkg/warning writes them.
                self.send_header("Warning", f'299 - "{warning}"')
            self.end_headers()
            self.wfile.write(data)

        def _watch(self, path: str, query: dict[str, str]) -> None:
            fake._route(path)  # a 404 before the stream starts, as the real server does
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(event: Obj) -> None:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()

            try:
                fake.watch(path, query, send, self.connection)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                self.close_connection = True

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler
