"""Evaluate the Rego decision: in-process with regorus, or on an OPA server.

Both engines share one interface. Any failure (a Rego runtime error, an unreachable,
erroring or slow OPA) raises PolicyError, which the service turns into a deny: the
system fails closed and recovers by itself on the next check. The OPA client makes no
retries and has a timeout below Envoy's ext_authz timeout (200 ms by default), so a
decision arrives before Envoy gives up on us.
"""

from __future__ import annotations

import asyncio
import pathlib
import urllib.parse
from typing import Any, Protocol

import aiohttp
import opa_client
import regorus

from extauthz import config, decisioncache


class PolicyError(Exception):
    """The policy could not produce a decision."""


class Engine(Protocol):
    """A policy engine: ``evaluate`` returns the decision value, None when undefined."""

    name: str

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def evaluate(self, input_doc: dict[str, Any], decision: str | None = None) -> object:
        """``decision`` overrides the configured decision path for this one evaluation."""
        ...

    async def close(self) -> None: ...


def rust_error(exc: BaseException) -> str:
    """regorus errors carry a Rust backtrace when RUST_BACKTRACE is set; keep the message."""
    return str(exc).split("\nStack backtrace:")[0].strip()


def load_regorus(modules: tuple[pathlib.Path, ...], rego_version: str = "v1") -> regorus.Engine:
    """A regorus engine with the given .rego policies and .json data files loaded."""
    engine = regorus.Engine()
    if rego_version == "v0":
        engine.set_rego_v0(True)
    for path in modules:
        try:
            if path.suffix == ".json":
                engine.add_data_json(path.read_text())
            else:
                engine.add_policy(str(path), path.read_text())
        except (OSError, RuntimeError, ValueError) as exc:
            raise PolicyError(f"{path}: {rust_error(exc)}") from None
    return engine


def rule_path(decision: str) -> str:
    """``envoy/authz/allow`` -> ``data.envoy.authz.allow``."""
    return "data." + ".".join(decision.strip("/").split("/"))


class EmbeddedEngine:
    """Rego in-process. Evaluation is synchronous (about 10 µs), so it runs on the loop."""

    name = "embedded"

    def __init__(self, settings: config.PolicyConfig) -> None:
        self._engine: regorus.Engine | None = load_regorus(settings.modules, settings.rego_version)
        self._path = rule_path(settings.decision)
        self._rules: dict[str, bool] = {}
        self._is_rule = self._probe_rule(self._path)

    def _probe_rule(self, path: str) -> bool:
        # eval_rule is twice as fast as eval_query but only accepts a rule's path.
        known = self._rules.get(path)
        if known is not None:
            return known
        engine = self._live()
        engine.set_input_json("{}")
        result = True
        try:
            engine.eval_rule(path)
        except RuntimeError as exc:
            if "not a valid rule path" in str(exc):
                result = False
        self._rules[path] = result
        return result

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    def analysis(self) -> decisioncache.Analysis:
        """Which input paths the loaded policies read (for the decision cache)."""
        try:
            return decisioncache.analyze(self._live().get_ast_as_json())
        except RuntimeError as exc:
            return decisioncache.Analysis((), f"no syntax tree: {rust_error(exc)}")

    async def evaluate(self, input_doc: dict[str, Any], decision: str | None = None) -> object:
        return self.evaluate_sync(input_doc, decision)

    def _live(self) -> regorus.Engine:
        if self._engine is None:
            raise PolicyError("the policy engine is closed")
        return self._engine

    def evaluate_sync(self, input_doc: dict[str, Any], decision: str | None = None) -> object:
        engine = self._live()
        path, is_rule = self._path, self._is_rule
        if decision is not None:
            path = rule_path(decision)
            is_rule = self._probe_rule(path)
        try:
            # set_input takes the dict directly, which saves a json.dumps per check.
            engine.set_input(input_doc)
            if is_rule:
                return engine.eval_rule(path)
            return query_value(engine.eval_query(path))
        except RuntimeError as exc:
            raise PolicyError(rust_error(exc)) from None

    async def close(self) -> None:
        # A regorus engine must be freed on the thread that made it; dropping our
        # reference here does that, rather than leaving it to a GC on any thread.
        self._engine = None


def query_value(result: dict[str, Any]) -> object:
    """The value of a single-expression regorus query; None when undefined."""
    rows = result.get("result") or []
    if not rows:
        return None
    return rows[0]["expressions"][0]["value"]


class OpaEngine:
    """Decisions from an OPA server's Data API through opa-python-client."""

    name = "opa"

    def __init__(self, settings: config.PolicyConfig) -> None:
        url = urllib.parse.urlsplit(settings.opa.url)
        secure = url.scheme == "https"
        self._timeout = settings.opa.timeout_ms / 1000
        self._client = opa_client.AsyncOpaClient(
            host=url.hostname or "127.0.0.1",
            port=url.port or (443 if secure else 80),
            ssl=secure,
            retries=0,
            timeout=self._timeout,
        )
        self._decision = settings.decision.strip("/")
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        """Open the connection pool and wait until OPA reports healthy."""
        await self._client.__aenter__()
        delay = 0.2
        while not await self._client.check_health():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        self._ready = True

    async def evaluate(self, input_doc: dict[str, Any], decision: str | None = None) -> object:
        query = self._client.query_rule(input_doc, (decision or self._decision).strip("/"))
        try:
            # wait_for, not asyncio.timeout: the h2 transport runs checks eagerly, outside
            # any Task until they first suspend, and asyncio.timeout needs a current Task.
            answer = await asyncio.wait_for(query, self._timeout)
        except TimeoutError:
            raise PolicyError(f"OPA did not answer within {self._timeout * 1000:.0f} ms") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise PolicyError(f"OPA request failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(answer, dict):
            raise PolicyError("OPA answered with something other than a JSON object")
        return answer.get("result")

    async def close(self) -> None:
        await self._client.close_connection()


def make_engine(settings: config.PolicyConfig) -> Engine:
    """The engine the config asks for; embedded policies are compiled here."""
    if settings.engine == "opa":
        return OpaEngine(settings)
    return EmbeddedEngine(settings)
