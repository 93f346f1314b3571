"""What kube-apiserver's own strategies do to built-in kinds on write: canonical quantities,
a few spec checks, immutable fields, and the associative lists server-side apply merges by.

Each rule names its source in kubernetes/kubernetes:

- Deployment (apps/v1): ``pkg/registry/apps/deployment/strategy.go`` ``ValidateUpdate`` makes
  ``spec.selector`` immutable for every group version but the old beta ones;
  ``pkg/apis/apps/validation/validation.go`` ``ValidateDeploymentSpec`` requires the selector
  and that it selects the template's labels.
- Job (batch/v1): ``pkg/apis/batch/validation/validation.go`` ``ValidateJobSpecUpdate``:
  ``spec.selector``, ``spec.completions`` and ``spec.template`` are immutable. (Later releases
  let a suspended Job change scheduling directives of its template; not modelled.)
- Service (v1): ``pkg/apis/core/validation/validation.go`` ``ValidateServiceUpdate`` /
  ``validateServiceClusterIPsRelatedFields``: a set ``clusterIP``/``clusterIPs`` "may not
  change once set"; an update that leaves them out keeps them
  (``pkg/registry/core/service/storage/storage.go`` ``patchAllocatedValues``).
- PodDisruptionBudget: mutable since Kubernetes 1.15 (``ValidatePodDisruptionBudgetUpdate``,
  which forbade any spec change, was dropped), so nothing is checked here.
- Quantities: every ``resource.Quantity`` field is decoded and re-encoded in canonical form
  (k8s.io/apimachinery ``pkg/api/resource/quantity.go``), so what the server stores and returns
  is ``quantity.canonical`` of what was sent.
- The associative lists are the ``+listType=map`` / ``+listMapKey`` markers of k8s.io/api
  (``core/v1/types.go``, ``apps/v1/types.go``, ``autoscaling/v2/types.go``,
  ``policy/v1/types.go``) and of the Gateway API CRDs (sigs.k8s.io/gateway-api ``apis/v1``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tests.fakekube import fielderrors as fe
from tests.fakekube import quantity

Obj = dict[str, Any]
Spath = tuple[str, ...]

POD_TEMPLATE = ("spec", "template", "spec")


def _pod_lists(prefix: Spath) -> dict[Spath, tuple[str, ...]]:
    lists: dict[Spath, tuple[str, ...]] = {
        (*prefix, "volumes"): ("name",),
        (*prefix, "imagePullSecrets"): ("name",),
        (*prefix, "hostAliases"): ("ip",),
        (*prefix, "topologySpreadConstraints"): ("topologyKey", "whenUnsatisfiable"),
    }
    for containers in ("containers", "initContainers", "ephemeralContainers"):
        base = (*prefix, containers)
        lists[base] = ("name",)
        lists[(*base, "ports")] = ("containerPort", "protocol")
        lists[(*base, "env")] = ("name",)
        lists[(*base, "volumeMounts")] = ("mountPath",)
        lists[(*base, "volumeDevices")] = ("devicePath",)
    return lists


CONDITIONS: dict[Spath, tuple[str, ...]] = {("status", "conditions"): ("type",)}
# metav1.LabelSelector is +structType=atomic; ServiceSpec.selector is +mapType=atomic.
SELECTOR: dict[Spath, tuple[str, ...]] = {("spec", "selector"): ()}
LIST_MAP_KEYS: dict[str, dict[Spath, tuple[str, ...]]] = {
    "Pod": {**_pod_lists(("spec",)), **CONDITIONS},
    "Deployment": {**_pod_lists(POD_TEMPLATE), **CONDITIONS, **SELECTOR},
    "Job": {**_pod_lists(POD_TEMPLATE), **CONDITIONS, **SELECTOR},
    "Service": {("spec", "ports"): ("port", "protocol"), **CONDITIONS, **SELECTOR},
    "HorizontalPodAutoscaler": dict(CONDITIONS),  # spec.metrics is atomic
    "PodDisruptionBudget": {**CONDITIONS, **SELECTOR},
    "Namespace": dict(CONDITIONS),
    "GatewayClass": dict(CONDITIONS),
    "Gateway": {
        ("spec", "listeners"): ("name",),
        **CONDITIONS,
        ("status", "listeners"): ("name",),
        ("status", "listeners", "conditions"): ("type",),
    },
    # status.parents is atomic in the Gateway API CRDs; each parent's conditions are a map.
    "HTTPRoute": {("status", "parents", "conditions"): ("type",)},
    "GRPCRoute": {("status", "parents", "conditions"): ("type",)},
}


# --- quantities --------------------------------------------------------------------------


def _container_quantities(pod_spec: Any) -> Iterator[tuple[Obj, str, str]]:
    if not isinstance(pod_spec, Mapping):
        return
    for group in ("containers", "initContainers"):
        for i, container in enumerate(pod_spec.get(group) or []):
            resources = (container or {}).get("resources") or {}
            for part in ("requests", "limits"):
                values = resources.get(part)
                if isinstance(values, dict):
                    for name in values:
                        yield values, name, f"{group}[{i}].resources.{part}[{name}]"
    overhead = pod_spec.get("overhead")
    if isinstance(overhead, dict):
        for name in overhead:
            yield overhead, name, f"overhead[{name}]"
    for i, volume in enumerate(pod_spec.get("volumes") or []):
        empty_dir = (volume or {}).get("emptyDir")
        if isinstance(empty_dir, dict) and "sizeLimit" in empty_dir:
            yield empty_dir, "sizeLimit", f"volumes[{i}].emptyDir.sizeLimit"


def _hpa_quantities(spec: Any) -> Iterator[tuple[Obj, str, str]]:
    if not isinstance(spec, Mapping):
        return
    for i, metric in enumerate(spec.get("metrics") or []):
        for source, body in (metric or {}).items():
            target = body.get("target") if isinstance(body, Mapping) else None
            if isinstance(target, dict):
                for field in ("value", "averageValue"):
                    if field in target:
                        yield target, field, f"metrics[{i}].{source}.target.{field}"


def quantities(kind: str, obj: Obj) -> Iterator[tuple[Obj, str, str]]:
    """(container, key, field path) of every quantity field of ``obj``."""
    spec = obj.get("spec")
    if kind == "Pod":
        yield from ((c, k, "spec." + p) for c, k, p in _container_quantities(spec))
    elif kind in ("Deployment", "Job") and isinstance(spec, Mapping):
        template = (spec.get("template") or {}).get("spec")
        yield from (
            (c, k, "spec.template.spec." + p) for c, k, p in _container_quantities(template)
        )
    elif kind == "HorizontalPodAutoscaler":
        yield from ((c, k, "spec." + p) for c, k, p in _hpa_quantities(spec))


def canonicalize(kind: str, obj: Obj, rewritten: list[str] | None = None) -> list[fe.FieldError]:
    """Rewrite every quantity of ``obj`` in canonical form; the ones that do not parse.
    Each rewrite is noted in ``rewritten`` as ``<path>: <sent> -> <stored>``."""
    errors = []
    for holder, key, path in list(quantities(kind, obj)):
        raw = holder[key]
        try:
            holder[key] = quantity.canonical(str(raw) if isinstance(raw, (int, float)) else raw)
        except quantity.Invalid as exc:
            errors.append(fe.invalid(path, raw, str(exc)))
            continue
        if rewritten is not None and holder[key] != raw:
            rewritten.append(f"{path}: {raw} -> {holder[key]}")
    return errors


# --- create and update checks ------------------------------------------------------------


def _selects(selector: Any, labels: Mapping[str, Any]) -> bool:
    if not isinstance(selector, Mapping):
        return False
    wanted = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = (
            expression.get("key"),
            expression.get("operator"),
            expression.get("values") or [],
        )
        if (op == "In" and labels.get(key) not in values) or (
            op == "NotIn" and labels.get(key) in values
        ):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return bool(wanted or selector.get("matchExpressions"))


def _deployment(obj: Obj) -> list[fe.FieldError]:
    spec = obj.get("spec") or {}
    if not spec.get("selector"):
        return [fe.required("spec.selector")]
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not _selects(spec["selector"], labels):
        return [
            fe.invalid(
                "spec.template.metadata.labels",
                labels,
                "`selector` does not match template `labels`",
            )
        ]
    return []


VALIDATE: dict[str, Callable[[Obj], list[fe.FieldError]]] = {"Deployment": _deployment}


def validate(kind: str, obj: Obj) -> list[fe.FieldError]:
    check = VALIDATE.get(kind)
    return check(obj) if check else []


def _immutable(old: Any, new: Any, path: str) -> list[fe.FieldError]:
    if old == new:
        return []
    return [fe.invalid(path, new, "field is immutable")]


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    current: Any = obj
    for part in path:
        current = current.get(part) if isinstance(current, Mapping) else None
    return current


def carry_allocated(kind: str, old: Obj, new: Obj) -> None:
    """An update that leaves out what the server allocated keeps it (patchAllocatedValues)."""
    if kind != "Service":
        return
    old_spec, new_spec = old.get("spec") or {}, new.get("spec")
    if isinstance(new_spec, dict) and not new_spec.get("clusterIP") and old_spec.get("clusterIP"):
        new_spec["clusterIP"] = old_spec["clusterIP"]
        new_spec.setdefault("clusterIPs", old_spec.get("clusterIPs") or [old_spec["clusterIP"]])


def validate_update(kind: str, old: Obj, new: Obj) -> list[fe.FieldError]:
    errors = validate(kind, new)
    if kind == "Deployment":
        errors += _immutable(
            _get(old, "spec", "selector"), _get(new, "spec", "selector"), "spec.selector"
        )
    elif kind == "Job":
        for field in ("selector", "completions", "template"):
            errors += _immutable(
                _get(old, "spec", field), _get(new, "spec", field), f"spec.{field}"
            )
    elif kind == "Service":
        old_ips = _get(old, "spec", "clusterIPs") or [_get(old, "spec", "clusterIP")]
        new_ips = _get(new, "spec", "clusterIPs") or [_get(new, "spec", "clusterIP")]
        if old_ips[0] and new_ips[0] != old_ips[0]:
            errors.append(fe.invalid("spec.clusterIPs[0]", new_ips, "may not change once set"))
    return errors
