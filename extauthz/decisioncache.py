"""Remember policy decisions, keyed by exactly the parts of the input the policy can read.

On Envoy's real CheckRequest, about half of a check's CPU is the policy: converting the
request to its protojson form, handing that document to the engine, and evaluating it
(about 100 of 200 µs, measured). Yet a policy reads only a few input paths:
``input.attributes.request.http.method``, ``input.parsed_path[0]``, ``input.jwt.claims.role``.
Two requests that agree on those paths get the same decision, whatever else differs
(request ids, timestamps, ports, other headers).

So the Rego modules are analysed once, from regorus's AST. Every reference to ``input`` is
reduced to its static prefix (``input.parsed_query[k]`` reads all of ``parsed_query``). The
cache turns on only when that proves the decision is a function of those paths:

- no bare ``input`` (which would read everything);
- no builtin that can answer differently for the same arguments: time, randomness,
  network, runtime, printing.

Otherwise it stays off, and the reason is logged at startup. The key is read from the
request lazily (see :class:`InputView`), without building the whole input document. The
key is always at least as fine as what the policy sees: two requests that differ anywhere
the policy can look never share a key.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Hashable, Mapping
from typing import Any

from google.protobuf import descriptor as descriptor_mod  # type: ignore[import-untyped,unused-ignore]

from extauthz import protojson

Path = tuple[str | int, ...]
MISSING = ("undefined",)  # the key of a path the input does not have

# Builtins whose answer is not a function of their arguments (regorus's names).
NONDETERMINISTIC = frozenset(
    {
        "time.now_ns",
        "rand.intn",
        "uuid.rfc4122",
        "http.send",
        "net.lookup_ip_addr",
        "opa.runtime",
        "io.jwt.decode_verify",
        "crypto.x509.parse_and_verify_certificates",
        "trace",
        "print",
    }
)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The input paths the policy reads, or why its decisions cannot be cached."""

    paths: tuple[Path, ...]
    reason: str | None = None  # None: cacheable

    @property
    def cacheable(self) -> bool:
        return self.reason is None


def analyze(ast_json: str) -> Analysis:
    """Analyse regorus's ``get_ast_as_json()`` of every loaded module."""
    try:
        modules = json.loads(ast_json)
        trees = [module["ast"] for module in modules]
    except (ValueError, TypeError, KeyError):
        return Analysis((), "the engine's syntax tree has an unknown shape")
    walker = _Walker()
    for tree in trees:
        walker.walk(tree)
    if walker.reason is not None:
        return Analysis((), walker.reason)
    return Analysis(_minimal(walker.paths))


def _minimal(paths: set[Path]) -> tuple[Path, ...]:
    """Drop every path that another, shorter path already covers."""
    ordered = sorted(paths, key=lambda p: (len(p), [str(e) for e in p]))
    kept: list[Path] = []
    for path in ordered:
        if not any(path[: len(k)] == k for k in kept):
            kept.append(path)
    return tuple(sorted(kept, key=lambda p: [str(e) for e in p]))


class _Walker:
    """Collect static ``input`` prefixes and anything that rules caching out."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.reason: str | None = None

    def walk(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item)
            return
        if not isinstance(node, dict):
            return
        if len(node) == 1:
            kind, body = next(iter(node.items()))
            if kind in ("RefDot", "RefBrack"):
                self._ref(node)
                return
            if kind == "Var" and isinstance(body, dict) and body.get("value") == "input":
                self._refuse("the policy reads the whole input document")
                return
            if kind == "Call" and isinstance(body, dict):
                self._call(body)
                return
        for value in node.values():
            self.walk(value)

    def _refuse(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def _call(self, body: dict[str, Any]) -> None:
        name = _dotted(body.get("fcn"))
        if name in NONDETERMINISTIC:
            self._refuse(f"the policy calls {name}, which may answer differently each time")
        elif name is None:
            self.walk(body.get("fcn"))
        self.walk(body.get("params"))

    def _ref(self, node: dict[str, Any]) -> None:
        steps: list[tuple[str, Any]] = []
        current = node
        while len(current) == 1 and next(iter(current)) in ("RefDot", "RefBrack"):
            kind, body = next(iter(current.items()))
            if kind == "RefDot":
                steps.append(("field", body["field"][-1]))
            else:
                steps.append(("index", body["index"]))
            current = body["refr"]
        steps.reverse()
        root = current.get("Var", {}) if isinstance(current, dict) else {}
        if root.get("value") == "input":
            self.paths.add(_static_prefix(steps))
        else:
            self.walk(current)
        for kind, value in steps:
            if kind == "index":
                self.walk(value)


def _static_prefix(steps: list[tuple[str, Any]]) -> Path:
    path: list[str | int] = []
    for kind, value in steps:
        if kind == "field":
            path.append(str(value))
            continue
        literal = _literal(value)
        if literal is None:
            break
        path.append(literal)
    return tuple(path)


def _literal(node: Any) -> str | int | None:
    if not isinstance(node, dict) or len(node) != 1:
        return None
    kind, body = next(iter(node.items()))
    value = body.get("value") if isinstance(body, dict) else None
    if kind == "String" and isinstance(value, str):
        return value
    if kind == "Number" and isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _dotted(node: Any) -> str | None:
    """``time.now_ns`` from a call's function reference; None when it is not a plain name."""
    parts: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        kind, body = next(iter(node.items()))
        if kind == "Var":
            parts.append(str(body.get("value")))
            return ".".join(reversed(parts))
        if kind != "RefDot":
            return None
        parts.append(str(body["field"][-1]))
        node = body["refr"]
    return None


# -- reading a key from the request -----------------------------------------------------


def freeze(value: Any) -> Hashable:
    """A hashable image of an input value that never merges values Rego tells apart."""
    # Python has True == 1 == 1.0; Rego does not, so every scalar carries its type.
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, Mapping):
        return ("obj", tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("arr", tuple(freeze(v) for v in value))
    return ("other", repr(value))


def walk_python(value: Any, path: Path) -> Hashable:
    """The frozen value at ``path`` in a plain document, or MISSING."""
    for step in path:
        if isinstance(value, Mapping) and isinstance(step, str):
            if step not in value:
                return MISSING
            value = value[step]
        elif isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            value = value[step]
        else:
            return MISSING
    return freeze(value)


_WELL_KNOWN = "google.protobuf."
_STRING = descriptor_mod.FieldDescriptor.TYPE_STRING
_MESSAGE = descriptor_mod.FieldDescriptor.TYPE_MESSAGE
_by_json_name: dict[str, dict[str, Any]] = {}


def _fields(message: Any) -> dict[str, Any]:
    descriptor = message.DESCRIPTOR
    known = _by_json_name.get(descriptor.full_name)
    if known is None:
        known = _by_json_name[descriptor.full_name] = {f.json_name: f for f in descriptor.fields}
    return known


class InputView:
    """The policy input of one check, read lazily: only what a key needs is computed.

    ``documents`` holds the input's plain top-level parts (everything but ``attributes``).
    ``attributes`` is walked on the protobuf message itself, field by field, wherever that
    is exact (singular messages, string-keyed maps, scalars); anywhere else the protojson
    form, which is what the policy sees, is built once and walked instead.
    """

    def __init__(self, attributes: Any, documents: Mapping[str, Any]) -> None:
        self._attributes = attributes
        self._documents = documents
        self._attributes_json: dict[str, Any] | None = None

    def value(self, path: Path) -> Hashable:
        if not path:
            raise ValueError("the whole input is never a key")
        head, rest = path[0], path[1:]
        if head != "attributes":
            if not isinstance(head, str) or head not in self._documents:
                return MISSING
            return walk_python(self._documents[head], rest)
        exact = _walk_message(self._attributes, rest)
        if exact is not None:
            return exact
        if self._attributes_json is None:
            self._attributes_json = protojson.message_to_dict(self._attributes)
        return walk_python(self._attributes_json, rest)


def _walk_message(message: Any, path: Path) -> Hashable | None:
    """The value at ``path`` read from the message, or None to fall back to protojson."""
    for i, step in enumerate(path):
        if message.DESCRIPTOR.full_name.startswith(_WELL_KNOWN) or not isinstance(step, str):
            return None
        field = _fields(message).get(step)
        if field is None:
            return MISSING  # not a field of a plain message: protojson has no such key
        rest = path[i + 1 :]
        value = getattr(message, field.name)
        if _is_map(field):
            return _walk_map(field, value, rest)
        if field.is_repeated:
            return None
        if field.type != _MESSAGE:
            if rest:
                return MISSING
            # With explicit presence, unset and set-to-default render differently.
            present = message.HasField(field.name) if field.has_presence else None
            return ("scalar", present, value)
        if not message.HasField(field.name):
            return MISSING
        message = value
    # The path ends on a message: its presence and exact bytes determine its protojson.
    return ("message", message.SerializeToString(deterministic=True))


def _is_map(field: Any) -> bool:
    return bool(field.type == _MESSAGE and field.message_type.GetOptions().map_entry)


def _walk_map(field: Any, value: Any, rest: Path) -> Hashable | None:
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    if not rest or key_field.type != _STRING or value_field.type == _MESSAGE:
        return None
    step = rest[0]
    if not isinstance(step, str):
        return MISSING
    if step not in value:
        return MISSING
    return ("scalar", value[step]) if len(rest) == 1 else MISSING


# -- the cache -----------------------------------------------------------------------------


ENTRY_OVERHEAD = 400  # bytes an entry costs beyond its key's leaves: dict slot, tuples, decision


def approximate_size(key: Hashable) -> int:
    """Bytes a key holds, roughly: its strings and bytes by length, other leaves at 32.

    A key is made of request values (a header the policy reads may be 64 KiB), so the
    cache is bounded by this, not by its entry count alone. Iterative: keys nest.
    """
    total, pending = 0, [key]
    while pending:
        value = pending.pop()
        if isinstance(value, str | bytes):
            total += 49 + len(value)
        elif isinstance(value, tuple | frozenset):
            total += 56 + 8 * len(value)
            pending.extend(value)
        else:
            total += 32
    return total


class DecisionCache:
    """A bounded LRU of decisions by (decision path, values at the policy's input paths).

    Bounded twice: by entries and by the approximate bytes of its keys (plus a fixed
    overhead per entry). If almost nothing hits after a while (a policy that reads a
    per-request value, such as every header), caching only costs, so it switches itself off.
    """

    SAMPLE = 2048  # lookups before judging the hit ratio
    MIN_HIT_RATIO = 0.05

    def __init__(
        self, paths: tuple[Path, ...], max_entries: int = 10_000, max_bytes: int = 16 << 20
    ) -> None:
        self.paths = paths
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict[Hashable, tuple[Any, int]] = (
            collections.OrderedDict()
        )

    def key(self, view: InputView, decision_path: str | None) -> Hashable:
        return (decision_path, tuple(view.value(path) for path in self.paths))

    def get(self, key: Hashable) -> Any | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            self._judge()
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: Hashable, value: Any) -> None:
        if not self.enabled:
            return
        size = approximate_size(key) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return  # one key larger than the whole cache is simply not kept
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.bytes -= previous[1]
        self._entries[key] = (value, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][1]

    def _judge(self) -> None:
        lookups = self.hits + self.misses
        if lookups == self.SAMPLE and self.hits < self.MIN_HIT_RATIO * lookups:
            self.enabled = False
            self._entries.clear()
            self.bytes = 0
