"""Load and validate the extauthz YAML config into frozen dataclasses.

The keys a document may hold, and which it must, are ``extauthz.contract``'s: the typed
shape the waypoint writes. Each dataclass here has one field per key of its document.
Every check names the key path it is about (``jwt.providers[0].audiences: ...``) so a
bad config is fixed in one read. Relative file paths are resolved against the config
file's directory, so a config and its keys and policies can move together.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from extauthz import contract

DEFAULT_LISTEN = "127.0.0.1:9191"
DEFAULT_DECISION = "envoy/authz/allow"
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
DECISION_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


class ConfigError(ValueError):
    """The config is invalid; the message starts with the offending key path."""


@dataclasses.dataclass(frozen=True)
class HeaderSource:
    """Take a token from a request header, after stripping ``prefix``."""

    name: str
    prefix: str = ""


@dataclasses.dataclass(frozen=True)
class ClaimToHeader:
    """Copy a (top-level) claim of a valid token into a request header upstream."""

    claim: str
    header: str


@dataclasses.dataclass(frozen=True)
class Provider:
    """One trusted token issuer and where its tokens and keys come from."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_file: pathlib.Path | None = None
    jwks_uri: str | None = None
    jwks: Mapping[str, Any] | None = None
    hs_secret_file: pathlib.Path | None = None
    from_headers: tuple[HeaderSource, ...] = (HeaderSource("authorization", "Bearer "),)
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    claim_to_headers: tuple[ClaimToHeader, ...] = ()
    forward_payload_header: str | None = None
    forward_original_token: bool = False
    jwks_cache_seconds: float = 300.0
    jwks_fetch_timeout_ms: int = 2000
    unknown_kid_refetch_seconds: float = 10.0


@dataclasses.dataclass(frozen=True)
class JwtConfig:
    """End-user authentication: clock leeway, token size cap and the providers."""

    leeway_seconds: int = 60
    max_token_bytes: int = 16 * 1024
    providers: tuple[Provider, ...] = ()
    # Behind Envoy's jwt_authn (a waypoint with a RequestAuthentication): take the payload
    # it verified from the CheckRequest's metadata_context instead of verifying again.
    trust_envoy_metadata: bool = False


@dataclasses.dataclass(frozen=True)
class OpaConfig:
    """Where the OPA server is and how long one decision may take."""

    url: str = "http://127.0.0.1:8181"
    timeout_ms: int = 100


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Which engine evaluates which decision."""

    engine: Literal["embedded", "opa"] = "embedded"
    modules: tuple[pathlib.Path, ...] = ()
    decision: str = DEFAULT_DECISION
    rego_version: Literal["v0", "v1"] = "v1"
    opa: OpaConfig = OpaConfig()
    # Decisions remembered by the input paths the policy reads (extauthz/decisioncache.py);
    # 0 turns the cache off. Only the embedded engine can be analysed, so only it caches.
    cache_entries: int = 10_000
    cache_bytes: int = 16 * 1024 * 1024  # the cache's approximate size cap, keys and entries


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one peer may cost the ``h2`` transport before it is refused or cut off.

    Each limit answers a cheap attack that would otherwise be expensive to serve; the
    defaults and the attacks are in docs/extauthz.md ("Hostile peers").
    """

    max_connections: int = 1024
    handshake_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 300.0
    settings_entries_per_frame: int = 32
    control_frames_per_second: float = 100.0
    control_frame_burst: int = 1000
    resets_per_second: float = 33.0
    reset_burst: int = 1000
    max_buffered_request_bytes: int = 32 * 1024 * 1024
    max_metadata_bytes: int = 64 * 1024
    max_header_block_bytes: int = 256 * 1024
    # The control-frame and reset budgets above are kept per peer address, shared by its
    # connections, in a table of this many peers; 0 keeps them per connection instead.
    peer_table_size: int = 4096
    # A peer cut off for abuse has its new connections closed at accept for this long,
    # doubling per repeat up to the maximum (resets: never doubled); 0 turns it off.
    peer_penalty_seconds: float = 1.0
    peer_penalty_max_seconds: float = 30.0
    # Connections one peer may hold open at once (needs the peer table); 0: no cap beyond
    # max_connections. Envoy holds a handful (one per worker thread and cluster).
    max_connections_per_peer: int = 256


@dataclasses.dataclass(frozen=True)
class Settings:
    """The whole validated config."""

    listen: str = DEFAULT_LISTEN
    metrics_listen: str | None = None
    jwt: JwtConfig = JwtConfig()
    policy: PolicyConfig = PolicyConfig()
    dry_run: bool = False
    decision_log: str = "stdout"
    shutdown_grace_seconds: float = 10.0
    reuse_port: bool = False
    transport: Literal["h2", "grpcio"] = "h2"
    limits: Limits = Limits()
    # What a deny without a body of the policy's own carries: a short JSON reason, or nothing.
    deny_body: Literal["json", "empty"] = "json"


def load(path: str | pathlib.Path) -> Settings:
    """Read and validate a config file."""
    file = pathlib.Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror}") from None
    return loads(text, base_dir=file.resolve().parent)


def loads(text: str, base_dir: pathlib.Path | None = None) -> Settings:
    """Validate config text; relative paths resolve against ``base_dir`` (default: cwd)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"<config>: not valid YAML: {exc}") from None
    return from_mapping({} if raw is None else raw, base_dir or pathlib.Path.cwd())


def from_mapping(raw: object, base_dir: pathlib.Path) -> Settings:
    """Validate an already parsed config document."""
    doc = _mapping(raw, "<config>")
    _known(doc, "", contract.keys(contract.ConfigDoc))
    listen = _str(doc.get("listen", DEFAULT_LISTEN), "listen")
    parse_listen(listen, "listen")
    metrics_listen = _opt_str(doc.get("metrics_listen"), "metrics_listen")
    if metrics_listen is not None:
        host_port(metrics_listen, "metrics_listen")
    return Settings(
        listen=listen,
        metrics_listen=metrics_listen,
        jwt=_jwt(doc.get("jwt", {}), base_dir),
        policy=_policy(doc.get("policy", {}), base_dir),
        dry_run=_bool(doc.get("dry_run", False), "dry_run"),
        decision_log=_str(doc.get("decision_log", "stdout"), "decision_log"),
        shutdown_grace_seconds=_number(
            doc.get("shutdown_grace_seconds", 10.0), "shutdown_grace_seconds", minimum=0
        ),
        reuse_port=_bool(doc.get("reuse_port", False), "reuse_port"),
        # h2 is this project's lean gRPC server (extauthz/h2grpc.py); grpcio is grpc.aio.
        transport=_choice(doc.get("transport", "h2"), "transport", ("h2", "grpcio")),  # type: ignore[arg-type]
        deny_body=_choice(doc.get("deny_body", "json"), "deny_body", ("json", "empty")),  # type: ignore[arg-type]
        limits=_limits(doc.get("limits", {})),
    )


def _limits(raw: object) -> Limits:
    doc = _mapping(raw, "limits")
    default = Limits()
    _known(doc, "limits", frozenset(f.name for f in dataclasses.fields(Limits)))
    values: dict[str, Any] = {}
    for name, (low, high) in _LIMIT_RANGES.items():
        given = doc.get(name, getattr(default, name))
        key = f"limits.{name}"
        if isinstance(getattr(default, name), float):
            values[name] = _number(given, key, minimum=low)
        else:
            values[name] = _int(given, key, int(low), int(high))
    limits = Limits(**values)
    if limits.max_header_block_bytes < limits.max_metadata_bytes:
        raise ConfigError("limits.max_header_block_bytes: must be >= limits.max_metadata_bytes")
    if limits.peer_penalty_max_seconds < limits.peer_penalty_seconds:
        raise ConfigError("limits.peer_penalty_max_seconds: must be >= limits.peer_penalty_seconds")
    return limits


# Lower and upper bounds of each limit (floats are only bounded below).
_LIMIT_RANGES: dict[str, tuple[float, float]] = {
    "max_connections": (1, 1_000_000),
    "handshake_timeout_seconds": (0.1, 0),
    "idle_timeout_seconds": (1, 0),
    "settings_entries_per_frame": (6, 2730),  # 6 settings exist; 2,730 fill a frame
    "control_frames_per_second": (1, 0),
    "control_frame_burst": (1, 10_000_000),
    "resets_per_second": (1, 0),
    "reset_burst": (1, 10_000_000),
    "max_buffered_request_bytes": (64 * 1024, 2**40),
    "max_metadata_bytes": (1024, 16 * 1024 * 1024),
    "max_header_block_bytes": (1024, 16 * 1024 * 1024),
    "peer_table_size": (0, 10_000_000),
    "peer_penalty_seconds": (0, 0),
    "peer_penalty_max_seconds": (0, 0),
    "max_connections_per_peer": (0, 1_000_000),
}


def parse_listen(addr: str, key: str) -> tuple[str, int] | pathlib.Path:
    """Parse ``host:port`` or ``unix:/abs/path``."""
    if addr.startswith("unix:"):
        path = addr[len("unix:") :]
        if not path.startswith("/"):
            raise ConfigError(f"{key}: unix socket path must be absolute, got {addr!r}")
        return pathlib.Path(path)
    return host_port(addr, key)


def host_port(addr: str, key: str) -> tuple[str, int]:
    """Parse ``host:port`` (IPv6 hosts in brackets)."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{key}: must be host:port or unix:/path, got {addr!r}")
    return host.strip("[]"), int(port_text)


def _jwt(raw: object, base_dir: pathlib.Path) -> JwtConfig:
    doc = _mapping(raw, "jwt")
    _known(doc, "jwt", contract.keys(contract.JwtDoc))
    trust = doc.get("trust_envoy_metadata", False)
    if not isinstance(trust, bool):
        raise ConfigError("jwt.trust_envoy_metadata: must be true or false")
    providers_raw = _list(doc.get("providers", []), "jwt.providers")
    providers = tuple(
        _provider(item, f"jwt.providers[{i}]", base_dir) for i, item in enumerate(providers_raw)
    )
    names = [p.name for p in providers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"jwt.providers[{i}].name: duplicate provider name {name!r}")
    return JwtConfig(
        leeway_seconds=_int(doc.get("leeway_seconds", 60), "jwt.leeway_seconds", 0, 3600),
        max_token_bytes=_int(
            doc.get("max_token_bytes", 16 * 1024), "jwt.max_token_bytes", 256, 1024 * 1024
        ),
        providers=providers,
        trust_envoy_metadata=trust,
    )


def _provider(raw: object, key: str, base_dir: pathlib.Path) -> Provider:
    doc = _mapping(raw, key)
    _known(doc, key, contract.keys(contract.ProviderDoc))
    _required(doc, key, contract.ProviderDoc)
    algorithms = _str_list(doc.get("algorithms", ["RS256"]), f"{key}.algorithms", nonempty=True)
    hs_secret = _opt_path(doc.get("hs_secret_file"), f"{key}.hs_secret_file", base_dir)
    _check_algorithms(algorithms, hs_secret is not None, f"{key}.algorithms")
    jwks_file = _opt_path(doc.get("jwks_file"), f"{key}.jwks_file", base_dir)
    jwks_uri = _opt_str(doc.get("jwks_uri"), f"{key}.jwks_uri")
    jwks_inline = doc.get("jwks")
    sources = [s for s in (jwks_file, jwks_uri, jwks_inline) if s is not None]
    if len(sources) > 1:
        raise ConfigError(f"{key}: set only one of jwks_file, jwks_uri, jwks")
    needs_jwks = any(a in ASYMMETRIC_ALGORITHMS for a in algorithms)
    if needs_jwks and not sources:
        raise ConfigError(f"{key}: one of jwks_file, jwks_uri, jwks is required")
    if jwks_uri is not None:
        _check_jwks_uri(jwks_uri, f"{key}.jwks_uri")
    if jwks_inline is not None:
        _list(_mapping(jwks_inline, f"{key}.jwks").get("keys"), f"{key}.jwks.keys")
    return Provider(
        name=_name(doc["name"], f"{key}.name"),
        issuer=_str(doc["issuer"], f"{key}.issuer"),
        audiences=_str_list(doc["audiences"], f"{key}.audiences", nonempty=True),
        algorithms=algorithms,
        jwks_file=jwks_file,
        jwks_uri=jwks_uri,
        jwks=jwks_inline,
        hs_secret_file=hs_secret,
        from_headers=_header_sources(doc.get("from_headers"), f"{key}.from_headers"),
        from_params=_str_list(doc.get("from_params", []), f"{key}.from_params"),
        from_cookies=_str_list(doc.get("from_cookies", []), f"{key}.from_cookies"),
        claim_to_headers=_claim_headers(doc.get("claim_to_headers", []), key),
        forward_payload_header=_opt_header(
            doc.get("forward_payload_header"), f"{key}.forward_payload_header"
        ),
        forward_original_token=_bool(
            doc.get("forward_original_token", False), f"{key}.forward_original_token"
        ),
        jwks_cache_seconds=_number(
            doc.get("jwks_cache_seconds", 300), f"{key}.jwks_cache_seconds", minimum=1
        ),
        jwks_fetch_timeout_ms=_int(
            doc.get("jwks_fetch_timeout_ms", 2000), f"{key}.jwks_fetch_timeout_ms", 10, 60_000
        ),
        unknown_kid_refetch_seconds=_number(
            doc.get("unknown_kid_refetch_seconds", 10),
            f"{key}.unknown_kid_refetch_seconds",
            minimum=1,
        ),
    )


def _check_algorithms(algorithms: tuple[str, ...], has_secret: bool, key: str) -> None:
    for i, alg in enumerate(algorithms):
        if alg.lower() == "none":
            raise ConfigError(f"{key}[{i}]: 'none' is never allowed")
        if alg in HMAC_ALGORITHMS and not has_secret:
            raise ConfigError(f"{key}[{i}]: {alg} needs hs_secret_file")
        if alg not in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS:
            raise ConfigError(f"{key}[{i}]: unknown algorithm {alg!r}")


def _check_jwks_uri(uri: str, key: str) -> None:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname and _is_loopback(parsed.hostname):
        return
    raise ConfigError(f"{key}: must be an https:// URL (http:// only for loopback), got {uri!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _header_sources(raw: object, key: str) -> tuple[HeaderSource, ...]:
    if raw is None:
        return (HeaderSource("authorization", "Bearer "),)
    out = []
    for i, item in enumerate(_list(raw, key)):
        doc = _mapping(item, f"{key}[{i}]")
        _known(doc, f"{key}[{i}]", contract.keys(contract.HeaderSourceDoc))
        _required(doc, f"{key}[{i}]", contract.HeaderSourceDoc)
        out.append(
            HeaderSource(
                name=_header(doc["name"], f"{key}[{i}].name"),
                prefix=_str(doc.get("prefix", ""), f"{key}[{i}].prefix", empty_ok=True),
            )
        )
    return tuple(out)


def _claim_headers(raw: object, provider_key: str) -> tuple[ClaimToHeader, ...]:
    key = f"{provider_key}.claim_to_headers"
    out = []
    for i, item in enumerate(_list(raw, key)):
        doc = _mapping(item, f"{key}[{i}]")
        _known(doc, f"{key}[{i}]", contract.keys(contract.ClaimToHeaderDoc))
        _required(doc, f"{key}[{i}]", contract.ClaimToHeaderDoc)
        out.append(
            ClaimToHeader(
                claim=_str(doc["claim"], f"{key}[{i}].claim"),
                header=_header(doc["header"], f"{key}[{i}].header"),
            )
        )
    return tuple(out)


def _policy(raw: object, base_dir: pathlib.Path) -> PolicyConfig:
    doc = _mapping(raw, "policy")
    _known(doc, "policy", contract.keys(contract.PolicyDoc))
    engine = _choice(doc.get("engine", "embedded"), "policy.engine", ("embedded", "opa"))
    modules = tuple(
        _path(item, f"policy.modules[{i}]", base_dir)
        for i, item in enumerate(_list(doc.get("modules", []), "policy.modules"))
    )
    for i, module in enumerate(modules):
        if module.suffix not in (".rego", ".json"):
            raise ConfigError(f"policy.modules[{i}]: must be a .rego or .json file")
    if engine == "embedded" and not any(m.suffix == ".rego" for m in modules):
        raise ConfigError("policy.modules: the embedded engine needs at least one .rego file")
    decision = _str(doc.get("decision", DEFAULT_DECISION), "policy.decision").strip("/")
    if not DECISION_PATH.match(decision):
        raise ConfigError(f"policy.decision: must look like 'envoy/authz/allow', got {decision!r}")
    return PolicyConfig(
        engine=engine,  # type: ignore[arg-type]
        modules=modules,
        decision=decision,
        rego_version=_choice(  # type: ignore[arg-type]
            doc.get("rego_version", "v1"), "policy.rego_version", ("v0", "v1")
        ),
        opa=_opa(doc.get("opa", {})),
        cache_entries=_int(doc.get("cache_entries", 10_000), "policy.cache_entries", 0, 10_000_000),
        cache_bytes=_int(
            doc.get("cache_bytes", 16 * 1024 * 1024), "policy.cache_bytes", 64 * 1024, 2**40
        ),
    )


def _opa(raw: object) -> OpaConfig:
    doc = _mapping(raw, "policy.opa")
    _known(doc, "policy.opa", contract.keys(contract.OpaDoc))
    url = _str(doc.get("url", OpaConfig.url), "policy.opa.url")
    parsed = urllib.parse.urlsplit(url)
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.path not in ("", "/")
    ):
        raise ConfigError(f"policy.opa.url: must be http(s)://host[:port], got {url!r}")
    return OpaConfig(
        url=url, timeout_ms=_int(doc.get("timeout_ms", 100), "policy.opa.timeout_ms", 1, 60_000)
    )


# -- primitive validators -------------------------------------------------------------


def _mapping(raw: object, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: must be a mapping, got {type(raw).__name__}")
    return raw


def _known(doc: Mapping[str, Any], key: str, allowed: frozenset[str]) -> None:
    for name in doc:
        if name not in allowed:
            where = f"{key}.{name}" if key else str(name)
            raise ConfigError(
                f"{where}: unknown key (expected one of {', '.join(sorted(allowed))})"
            )


def _required(doc: Mapping[str, Any], key: str, shape: type) -> None:
    for name in contract.required(shape):
        if name not in doc:
            raise ConfigError(f"{key}.{name}: is required")


def _list(raw: object, key: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ConfigError(f"{key}: must be a list, got {type(raw).__name__}")
    return raw


def _str(raw: object, key: str, empty_ok: bool = False) -> str:
    if not isinstance(raw, str) or (not raw and not empty_ok):
        raise ConfigError(f"{key}: must be a non-empty string")
    return raw


def _opt_str(raw: object, key: str) -> str | None:
    return None if raw is None else _str(raw, key)


def _str_list(raw: object, key: str, nonempty: bool = False) -> tuple[str, ...]:
    if not isinstance(raw, list) or (nonempty and not raw):
        raise ConfigError(f"{key}: must be a {'non-empty ' if nonempty else ''}list")
    return tuple(_str(item, f"{key}[{i}]") for i, item in enumerate(raw))


def _bool(raw: object, key: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{key}: must be true or false")
    return raw


def _int(raw: object, key: str, minimum: int, maximum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not minimum <= raw <= maximum:
        raise ConfigError(f"{key}: must be an integer in [{minimum}, {maximum}]")
    return raw


def _number(raw: object, key: str, minimum: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < minimum:
        raise ConfigError(f"{key}: must be a number >= {minimum}")
    return float(raw)


def _choice(raw: object, key: str, options: tuple[str, ...]) -> str:
    if raw not in options:
        raise ConfigError(f"{key}: must be one of {', '.join(options)}, got {raw!r}")
    return str(raw)


def _name(raw: object, key: str) -> str:
    name = _str(raw, key)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{key}: must match [A-Za-z0-9_.-]+, got {name!r}")
    return name


def _header(raw: object, key: str) -> str:
    name = _str(raw, key).lower()
    if not _HEADER_NAME.match(name):
        raise ConfigError(f"{key}: not a valid header name: {raw!r}")
    return name


def _opt_header(raw: object, key: str) -> str | None:
    return None if raw is None else _header(raw, key)


def _path(raw: object, key: str, base_dir: pathlib.Path) -> pathlib.Path:
    path = base_dir / _str(raw, key)
    if not path.is_file():
        raise ConfigError(f"{key}: no such file: {path}")
    return path


def _opt_path(raw: object, key: str, base_dir: pathlib.Path) -> pathlib.Path | None:
    return None if raw is None else _path(raw, key, base_dir)
