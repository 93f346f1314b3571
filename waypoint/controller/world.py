"""The controller's world: the informers' objects as one versioned snapshot, translated once.

``Snapshot`` is the list of every object translation reads, tagged with a version: the tuple
of the informers' change counters, read before their contents, so a snapshot is never older
than its version. ``Translations`` keeps the translation of the newest version it was asked
for; the Gateway reconciles, the route and policy status and the xDS publisher all ask it, so a
change is translated once however many Gateways it re-queues. Its lock also means two workers
asking for the same new version wait for one translation instead of doing two. Each waypoint's
rendered bootstrap is kept with the translation it came from, so a resync of an unchanged world
renders nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from waypoint import model, pipeline
from waypoint.envoy import options as envoy_options
from waypoint.runtime import collector

Obj = dict[str, Any]
Translate = Callable[[Sequence[Mapping[str, Any]], str], model.Translation]


class Snapshot(list[Obj]):
    """The world's objects, and the version they are at least as new as."""

    def __init__(self, objects: list[Obj], version: Hashable) -> None:
        super().__init__(objects)
        self.version = version


class Translations:
    """The translation of the newest snapshot asked for; ``translate`` is a drop-in
    ``reconcile.Translator``. Objects that are not a ``Snapshot`` are translated every time."""

    def __init__(
        self,
        translate: Translate = pipeline.translate_objects,
        learn: Callable[[model.Translation], None] | None = None,
    ) -> None:
        self._translate = translate
        self._learn = learn
        self._lock = threading.Lock()
        self._key: Hashable = None
        self._value: model.Translation | None = None
        self._rendered: dict[Hashable, pipeline.Rendered] = {}
        self.translated = 0  # how many translations ran (for tests and the benchmark)

    def translate(
        self, objects: Sequence[Mapping[str, Any]], trust_domain: str
    ) -> model.Translation:
        if not isinstance(objects, Snapshot):
            return self._translate(objects, trust_domain)
        key = (objects.version, trust_domain)
        with self._lock:
            if self._value is not None and self._key == key:
                return self._value
            with collector.paused():
                value = self._translate(objects, trust_domain)
            self._key, self._value = key, value
            self._rendered = {}
            self.translated += 1
        if self._learn is not None:
            self._learn(value)
        return value

    def renderer(
        self,
        objects: Sequence[Mapping[str, Any]],
        namespace: str,
        name: str,
        opts: envoy_options.BootstrapOptions,
    ) -> pipeline.Rendered:
        """A ``reconcile.Renderer`` on the shared translation: only this waypoint's bootstrap is
        built, once per translation. The result carries it as ``bootstrap_yaml`` only
        (``bootstrap`` is empty)."""
        translation = self.translate(objects, opts.trust_domain)
        key = (id(translation), namespace, name, opts)
        with self._lock:
            rendered = self._rendered.get(key) if translation is self._value else None
        if rendered is not None:
            return rendered
        full = pipeline.render_translation(translation, namespace, name, opts)
        # Kept as YAML only: the reconcile reads the YAML and the waypoint, and the bootstrap
        # as a dict is most of the memory (24 of 29 MiB at 200 waypoints, measured).
        rendered = dataclasses.replace(full, bootstrap={})
        with self._lock:
            if translation is self._value:
                self._rendered[key] = rendered
        return rendered
