"""Fault injection for the fake API server: throttling (429 with Retry-After) and requests
that hang, per verb and resource.

A 429 is what kube-apiserver's max-in-flight and API Priority and Fairness filters answer when
a request is shed (k8s.io/apiserver ``pkg/server/filters/maxinflight.go`` ``tooManyRequests``,
``pkg/util/flowcontrol``): reason ``TooManyRequests``, a ``Retry-After`` header, and
``details.retryAfterSeconds`` (``errors.NewTooManyRequests``). A hang models a slow etcd, a
webhook or a network partition: the request is held before the server reads its state.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

ANY = "*"


@dataclasses.dataclass
class Rule:
    verb: str  # get, list, watch, create, update, patch, delete, or "*"
    plural: str  # e.g. "deployments", or "*"
    times: int  # how many matching requests it affects; -1 for every one
    throttle: int = 0  # Retry-After seconds of a 429; 0 for none
    delay: float = 0.0  # seconds to hold the request
    namespace: str = ANY
    seen: int = 0

    def matches(self, verb: str, plural: str, namespace: str) -> bool:
        return (
            self.times != 0
            and self.verb in (ANY, verb)
            and self.plural in (ANY, plural)
            and self.namespace in (ANY, namespace)
        )


@dataclasses.dataclass
class Action:
    delay: float = 0.0
    throttle: int = 0


class Faults:
    """The knobs tests turn; the server asks ``take`` once per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []

    def throttle(
        self, verb: str, plural: str, retry_after: int = 1, times: int = 1, namespace: str = ANY
    ) -> Rule:
        """Answer the next ``times`` matching requests with 429 and ``Retry-After``."""
        return self._add(Rule(verb, plural, times, throttle=retry_after, namespace=namespace))

    def hang(
        self, verb: str, plural: str, seconds: float, times: int = 1, namespace: str = ANY
    ) -> Rule:
        """Hold the next ``times`` matching requests for ``seconds`` before serving them."""
        return self._add(Rule(verb, plural, times, delay=seconds, namespace=namespace))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def take(self, verb: str, plural: str, namespace: str) -> Action:
        action = Action()
        with self._lock:
            for rule in self._rules:
                if rule.matches(verb, plural, namespace):
                    rule.seen += 1
                    if rule.times > 0:
                        rule.times -= 1
                    action.delay = max(action.delay, rule.delay)
                    action.throttle = max(action.throttle, rule.throttle)
        return action


def verb_of(method: str, name: str, query: dict[str, Any]) -> str:
    """The Kubernetes verb of a request (k8s.io/apiserver ``pkg/endpoints/request``)."""
    if method == "GET":
        if str(query.get("watch", "")).lower() in ("true", "1"):
            return "watch"
        return "get" if name else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, method.lower()
    )


def too_many_requests(retry_after: int) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Too many requests, please try again later.",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": retry_after},
        "code": 429,
    }
