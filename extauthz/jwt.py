"""End-user JWT authentication with Istio RequestAuthentication semantics.

A request without a token passes on without identity; a request whose token fails any
check is refused (the caller answers 401). We parse and check tokens ourselves and use
PyJWT only for its signature primitives, because PyJWT's claim checks are opt-in and
accept a numeric-string ``exp`` (RFC 7519 requires a NumericDate). Header parameters
that name keys (``jku``, ``x5u``, ``jwk``, ``x5c``) are never read: keys come only from
the provider's configured JWKS. Keys from a ``jwks_uri`` or a ``jwks_file`` are refreshed
off the request path; an unknown ``kid`` triggers at most one single-flight refetch per
provider per ``unknown_kid_refetch_seconds``, and a failed fetch keeps the last good keys.
A ``jwks_file`` is re-read the same way because in Kubernetes it is a mounted ConfigMap or
Secret that the kubelet rotates in place; a stat decides whether it changed, so a steady
file costs one stat per ``jwks_cache_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format
from jwt import algorithms as jwt_algorithms

from extauthz import config

log = logging.getLogger(__name__)

Clock = Callable[[], float]
FetchHook = Callable[[str, str], None]
"""Called as ``hook(provider_name, "ok" | "error")`` after every JWKS fetch or file re-read
(a ``jwks_file`` whose stat is unchanged is not re-read and not reported)."""
FileStamp = tuple[int, int, int]
"""A file's identity for change detection: ``(st_ino, st_mtime_ns, st_size)``."""

_MAX_JWKS_BYTES = 1024 * 1024
_MIN_RSA_BITS = 2048
_CACHE_LIMIT = 10_000
# Bytes the verified-token cache may hold, roughly: an identity keeps the payload segment
# and its decoded claims, about three times the token, plus a fixed overhead.
_CACHE_BYTES = 32 * 1024 * 1024
_IDENTITY_OVERHEAD = 600
_REJECTION_TTL_SECONDS = 10.0
_STARTUP_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_KEY_TYPE_FOR_ALG = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(_EC_CURVES, "EC"),
    "EdDSA": "OKP",
    **dict.fromkeys(config.HMAC_ALGORITHMS, "oct"),
}
_VERIFIERS = pyjwt.algorithms.get_default_algorithms()


class InvalidToken(Exception):
    """A presented token failed a check; ``str(exc)`` is for logs, never for clients."""


class HostileToken(InvalidToken):
    """A token shaped to hurt a parser (duplicate names, deep nesting): refused by name."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """A verified token: who issued it, its claims and where it came from."""

    provider: str
    claims: Mapping[str, Any]
    payload_segment: str
    source_header: str | None
    expires_at: float


@dataclasses.dataclass(frozen=True)
class TrustedKey:
    """One verification key from a JWKS, with what it may be used for."""

    kid: str
    kty: str
    crv: str | None
    alg: str | None
    key: Any
    fingerprint: bytes


@dataclasses.dataclass(frozen=True)
class RequestTokens:
    """The parts of a request that tokens can come from."""

    headers: Mapping[str, str]
    query: Mapping[str, Sequence[str]]
    cookies: Mapping[str, str]


# -- JWKS parsing ---------------------------------------------------------------------


def parse_jwks(doc: object, where: str) -> dict[str, TrustedKey]:
    """Parse a JWKS document; keys that cannot be used for signatures are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{where}: not a JWKS (expected an object with a 'keys' list)")
    keys: dict[str, TrustedKey] = {}
    for i, jwk in enumerate(doc["keys"]):
        try:
            key = _parse_jwk(jwk)
        except (ValueError, TypeError, KeyError, pyjwt.exceptions.PyJWTError) as exc:
            log.warning("%s: skipping keys[%d]: %s", where, i, exc)
            continue
        if key is not None:
            keys[key.kid] = key
    return keys


def _parse_jwk(jwk: object) -> TrustedKey | None:
    if not isinstance(jwk, dict):
        raise ValueError("not an object")
    if jwk.get("use", "sig") != "sig":
        return None
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no 'kid' (tokens are matched to keys by kid only)")
    kty = jwk.get("kty")
    text = json.dumps(jwk)
    if kty == "RSA":
        key: Any = jwt_algorithms.RSAAlgorithm.from_jwk(text)
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits is too small")
    elif kty == "EC":
        key = jwt_algorithms.ECAlgorithm.from_jwk(text)
    elif kty == "OKP":
        key = jwt_algorithms.OKPAlgorithm.from_jwk(text)
    else:
        raise ValueError(f"unsupported kty {kty!r}")
    if hasattr(key, "private_numbers") or hasattr(key, "private_bytes_raw"):
        key = key.public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TrustedKey(
        kid=kid, kty=kty, crv=jwk.get("crv"), alg=jwk.get("alg"), key=key, fingerprint=der
    )


def _http_get(uri: str, timeout: float) -> bytes:
    request = urllib.request.Request(uri, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        body: bytes = resp.read(_MAX_JWKS_BYTES + 1)
    return _within_limit(body)


def read_if_changed(path: pathlib.Path, last: FileStamp | None) -> tuple[FileStamp, bytes | None]:
    """The file's stamp, and its bytes unless the stamp equals ``last``.

    ``os.stat`` follows symlinks, so a kubelet swapping the ``..data`` link shows up as a
    new inode. The stamp is taken before the read: a change racing the read is seen
    again on the next check rather than missed.
    """
    st = os.stat(path)
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    if stamp == last:
        return stamp, None
    with path.open("rb") as f:
        return stamp, _within_limit(f.read(_MAX_JWKS_BYTES + 1))


def _within_limit(body: bytes) -> bytes:
    if len(body) > _MAX_JWKS_BYTES:
        raise ValueError("JWKS larger than 1 MiB")
    return body


# -- token parsing --------------------------------------------------------------------


def _b64decode(segment: str) -> bytes:
    if not segment or "=" in segment:
        raise InvalidToken("bad base64url segment")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("bad base64url segment") from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object hook refusing duplicate names (RFC 7519 7.2 lets a parser do so).

    Otherwise the last ``role`` would win here while another reader of the same token
    might take the first.
    """
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _DuplicateKey
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = _DECODER.decode(_b64decode(segment).decode("utf-8"))
    except _DuplicateKey:
        raise HostileToken(f"{what} has a duplicate member name") from None
    except RecursionError:
        raise HostileToken(f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise InvalidToken(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"{what} is not a JSON object")
    return value


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"{name} is not a NumericDate")
    return float(value)


def peek_issuer(token: str) -> str | None:
    """The unverified ``iss`` claim, used only to pick which provider verifies.

    A payload that is not JSON names no issuer; one shaped to hurt a parser raises
    ``HostileToken``, so the refusal says what was wrong.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        iss = _json_object(parts[1], "payload").get("iss")
    except HostileToken:
        raise
    except InvalidToken:
        return None
    return iss if isinstance(iss, str) else None


# -- one provider ---------------------------------------------------------------------


class ProviderVerifier:
    """Keys, cache and checks for one provider."""

    def __init__(
        self,
        provider: config.Provider,
        leeway: float,
        max_token_bytes: int,
        clock: Clock,
        on_fetch: FetchHook,
    ) -> None:
        self.provider = provider
        self._leeway = leeway
        self.max_token_bytes = max_token_bytes
        self._clock = clock
        self._on_fetch = on_fetch
        self._keys: dict[str, TrustedKey] | None = None
        self._hmac_secret: bytes | None = None
        self._cache: dict[bytes, Identity] = {}
        self._cache_bytes = 0  # approximate, see _CACHE_BYTES
        self._rejected: dict[bytes, tuple[str, float]] = {}
        self._inflight: asyncio.Task[None] | None = None
        self._last_attempt = -math.inf
        self._last_success = -math.inf
        self._last_unknown_kid_fetch = -math.inf
        self._file_stamp: FileStamp | None = None
        # Where refreshable keys come from; None when the key set never changes.
        self._source = provider.jwks_uri or _opt_str(provider.jwks_file)

    @property
    def ready(self) -> bool:
        return self._keys is not None or not self._needs_jwks

    @property
    def _needs_jwks(self) -> bool:
        return any(a in config.ASYMMETRIC_ALGORITHMS for a in self.provider.algorithms)

    def load_static(self) -> None:
        """Load file, inline and secret key material; raise ValueError if unusable."""
        p = self.provider
        if p.hs_secret_file is not None:
            secret = p.hs_secret_file.read_bytes().strip()
            if len(secret) < 32:
                raise ValueError(f"provider {p.name}: hs_secret_file must hold >= 32 bytes")
            self._hmac_secret = secret
        if p.jwks_file is not None:
            try:
                self._apply_file(*read_if_changed(p.jwks_file, None))
            except (OSError, ValueError) as exc:
                raise ValueError(f"provider {p.name}: jwks_file {p.jwks_file}: {exc}") from None
            self._last_success = self._clock()
        elif p.jwks is not None:
            where = f"provider {p.name} jwks"
            keys = parse_jwks(dict(p.jwks), where)
            try:
                self._set_keys(keys)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None

    async def start(self) -> None:
        """Fetch a remote JWKS until it succeeds once (readiness waits for this)."""
        if self.provider.jwks_uri is None:
            return
        for attempt in range(1_000_000):
            await self._refresh()
            if self._keys is not None:
                return
            await asyncio.sleep(
                _STARTUP_RETRY_SECONDS[min(attempt, len(_STARTUP_RETRY_SECONDS) - 1)]
            )

    def _set_keys(self, keys: dict[str, TrustedKey]) -> None:
        if not keys:
            raise ValueError("JWKS has no usable signing keys")
        if self._keys is None or _fingerprints(self._keys) != _fingerprints(keys):
            # A removed or replaced key must stop verifying at once: cached tokens go too,
            # and so do rejections, since a new key may verify a token refused before.
            self._cache.clear()
            self._cache_bytes = 0
            self._rejected.clear()
        self._keys = keys

    async def _refresh(self) -> None:
        source = self._source
        assert source is not None
        self._last_attempt = self._clock()
        timeout = self.provider.jwks_fetch_timeout_ms / 1000
        try:
            reloaded = await asyncio.wait_for(self._load(timeout), timeout)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning(
                "provider %s: JWKS from %s failed, keeping the last good keys: %s",
                self.provider.name,
                source,
                exc,
            )
            self._on_fetch(self.provider.name, "error")
            return
        # An unchanged file still counts as fresh, so the next stat waits a full TTL.
        self._last_success = self._clock()
        if reloaded:
            self._on_fetch(self.provider.name, "ok")

    async def _load(self, timeout: float) -> bool:
        """Load keys from the source; False when a file is unchanged and was not read."""
        if self.provider.jwks_uri is not None:
            return await self._load_uri(self.provider.jwks_uri, timeout)
        return await self._load_file()

    async def _load_uri(self, uri: str, timeout: float) -> bool:
        body = await asyncio.to_thread(_http_get, uri, timeout)
        self._set_keys(parse_jwks(json.loads(body), uri))
        return True

    async def _load_file(self) -> bool:
        assert self.provider.jwks_file is not None
        read = await asyncio.to_thread(read_if_changed, self.provider.jwks_file, self._file_stamp)
        return self._apply_file(*read)

    def _apply_file(self, stamp: FileStamp, body: bytes | None) -> bool:
        if body is None:
            return False
        assert self.provider.jwks_file is not None
        self._set_keys(parse_jwks(json.loads(body), str(self.provider.jwks_file)))
        # Remembered only once the keys are in use: a bad file is re-read and reported
        # on every retry until it is fixed, as a failing jwks_uri would be.
        self._file_stamp = stamp
        return True

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._refresh())
        return self._inflight

    def maybe_refresh(self) -> None:
        """Kick a background refresh when the keys are older than the cache TTL."""
        if self._source is None or self._inflight_running():
            return
        now = self._clock()
        stale = now - self._last_success >= self.provider.jwks_cache_seconds
        may_retry = now - self._last_attempt >= self.provider.unknown_kid_refetch_seconds
        if stale and may_retry:
            self._start_fetch()

    async def wait_idle(self) -> None:
        """Wait for a background JWKS fetch, if one is running, to finish."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)

    def _inflight_running(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    async def _refetch_for_unknown_kid(self) -> None:
        if self._source is None:
            return
        if not self._inflight_running():
            now = self._clock()
            if now - self._last_unknown_kid_fetch < self.provider.unknown_kid_refetch_seconds:
                return
            self._last_unknown_kid_fetch = now
        task = self._start_fetch()
        # Waiting is bounded so Envoy's own ext_authz timeout does not fire first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 0.1)

    def cached(self, token: str, source: str | None = None) -> Identity | None:
        """A still-valid identity verified earlier for this exact token, if any."""
        if len(token) > self.max_token_bytes:
            return None  # never hashed, decoded or parsed: refused by size
        hit = self._cache.get(hashlib.sha256(token.encode()).digest())
        if hit is None or self._clock() >= hit.expires_at + self._leeway:
            return None
        if hit.source_header != source:
            return dataclasses.replace(hit, source_header=source)
        return hit

    async def verify(self, token: str, source: str | None = None) -> Identity:
        """Verify a token for this provider or raise InvalidToken."""
        self.check_size(token)
        self.maybe_refresh()
        hit = self.cached(token, source)
        if hit is not None:
            return hit
        digest = hashlib.sha256(token.encode()).digest()
        self._check_rejected(digest)
        try:
            verified = await self._verify_uncached(token)
        except InvalidToken as exc:
            self._remember_rejection(digest, exc)
            raise
        identity = dataclasses.replace(verified, source_header=source)
        self._remember(digest, identity)
        return identity

    def check_size(self, token: str) -> None:
        """Refuse a token over ``max_token_bytes`` before any work is spent on it."""
        if len(token) > self.max_token_bytes:
            raise InvalidToken(f"token of {len(token)} bytes exceeds {self.max_token_bytes}")

    def check_remembered(self, token: str) -> None:
        """Raise the remembered refusal of this exact token, if it is still remembered."""
        if self._rejected:
            self._check_rejected(hashlib.sha256(token.encode()).digest())

    def refuse(self, token: str, exc: InvalidToken) -> InvalidToken:
        """Remember a refusal decided outside ``verify`` (no provider claims the token)."""
        self._remember_rejection(hashlib.sha256(token.encode()).digest(), exc)
        return exc

    def _check_rejected(self, digest: bytes) -> None:
        rejected = self._rejected.get(digest)
        if rejected is not None:
            reason, until = rejected
            if self._clock() < until:
                raise InvalidToken(reason)
            del self._rejected[digest]

    def _remember_rejection(self, digest: bytes, exc: InvalidToken) -> None:
        # A client retrying the same bad token must not cost a signature check each time.
        # "Not yet valid" tokens may become valid, so they are never remembered.
        reason = str(exc)
        if reason.endswith("is in the future"):
            return
        if len(self._rejected) >= _CACHE_LIMIT:
            self._rejected.clear()
        self._rejected[digest] = (reason, self._clock() + _REJECTION_TTL_SECONDS)

    def _remember(self, digest: bytes, identity: Identity) -> None:
        size = _identity_size(identity)
        if len(self._cache) >= _CACHE_LIMIT or self._cache_bytes + size > _CACHE_BYTES:
            now = self._clock()
            self._cache = {
                k: v for k, v in self._cache.items() if now < v.expires_at + self._leeway
            }
            self._cache_bytes = sum(_identity_size(v) for v in self._cache.values())
            if len(self._cache) >= _CACHE_LIMIT or self._cache_bytes + size > _CACHE_BYTES:
                self._cache.clear()
                self._cache_bytes = 0
        if digest not in self._cache:
            self._cache_bytes += size
        self._cache[digest] = identity

    async def _verify_uncached(self, token: str) -> Identity:
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("not a compact JWS (three segments)")
        header = _json_object(parts[0], "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.provider.algorithms:
            raise InvalidToken(f"alg {alg!r} is not allowed")
        if "crit" in header:
            raise InvalidToken(f"unsupported critical header parameters {header['crit']!r}")
        key = await self._key_for(header, alg)
        signature = _b64decode(parts[2])
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
        try:
            valid = _VERIFIERS[alg].verify(signing_input, key, signature)
        except (ValueError, TypeError, pyjwt.exceptions.PyJWTError):
            valid = False
        if not valid:
            raise InvalidToken("signature verification failed")
        claims = _json_object(parts[1], "payload")
        expires_at = self._check_claims(claims)
        return Identity(
            provider=self.provider.name,
            claims=claims,
            payload_segment=parts[1],
            source_header=None,
            expires_at=expires_at,
        )

    async def _key_for(self, header: Mapping[str, Any], alg: str) -> Any:
        if alg in config.HMAC_ALGORITHMS:
            if self._hmac_secret is None:
                raise InvalidToken("no HMAC secret configured")
            return _VERIFIERS[alg].prepare_key(self._hmac_secret)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("no kid in header")
        trusted = (self._keys or {}).get(kid)
        if trusted is None:
            await self._refetch_for_unknown_kid()
            trusted = (self._keys or {}).get(kid)
        if trusted is None:
            raise InvalidToken(f"kid {kid!r} is not in the trusted key set")
        _check_key_fits(trusted, alg)
        return trusted.key

    def _check_claims(self, claims: Mapping[str, Any]) -> float:
        now = self._clock()
        exp = _numeric_date(claims, "exp")
        if exp is None:
            raise InvalidToken("exp is required")
        if now >= exp + self._leeway:
            raise InvalidToken("token expired")
        for name in ("nbf", "iat"):
            when = _numeric_date(claims, name)
            if when is not None and when > now + self._leeway:
                raise InvalidToken(f"{name} is in the future")
        if claims.get("iss") != self.provider.issuer:
            raise InvalidToken("iss does not match the provider")
        aud = claims.get("aud")
        token_auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(token_auds, list) or not any(
            isinstance(a, str) and a in self.provider.audiences for a in token_auds
        ):
            raise InvalidToken("aud does not match")
        return exp


def _identity_size(identity: Identity) -> int:
    return 3 * len(identity.payload_segment) + _IDENTITY_OVERHEAD


def _opt_str(path: pathlib.Path | None) -> str | None:
    return None if path is None else str(path)


def _fingerprints(keys: Mapping[str, TrustedKey]) -> dict[str, tuple[Any, ...]]:
    return {kid: (k.kty, k.crv, k.alg, k.fingerprint) for kid, k in keys.items()}


def _check_key_fits(key: TrustedKey, alg: str) -> None:
    if key.alg is not None and key.alg != alg:
        raise InvalidToken(f"key {key.kid} is for {key.alg}, token says {alg}")
    if _KEY_TYPE_FOR_ALG.get(alg) != key.kty:
        raise InvalidToken(f"key {key.kid} of type {key.kty} cannot verify {alg}")
    if alg in _EC_CURVES and key.crv != _EC_CURVES[alg]:
        raise InvalidToken(f"key {key.kid} on curve {key.crv} cannot verify {alg}")
    if alg == "EdDSA" and key.crv != "Ed25519":
        raise InvalidToken(f"key {key.kid} on curve {key.crv} cannot verify EdDSA")


# -- all providers --------------------------------------------------------------------


class Authenticator:
    """Find a request's token, pick its provider and verify it."""

    def __init__(
        self,
        settings: config.JwtConfig,
        clock: Clock = time.time,
        on_fetch: FetchHook = lambda _provider, _result: None,
    ) -> None:
        self.providers = [
            ProviderVerifier(p, settings.leeway_seconds, settings.max_token_bytes, clock, on_fetch)
            for p in settings.providers
        ]
        self.spoofable_headers = tuple(
            sorted(
                {c.header for p in settings.providers for c in p.claim_to_headers}
                | {p.forward_payload_header for p in settings.providers if p.forward_payload_header}
            )
        )

    @property
    def ready(self) -> bool:
        return all(p.ready for p in self.providers)

    def load_static(self) -> None:
        for provider in self.providers:
            provider.load_static()

    async def start(self) -> None:
        """Load keys; returns once every provider has keys (retrying remote JWKS)."""
        await asyncio.gather(*(p.start() for p in self.providers))

    def provider(self, name: str) -> ProviderVerifier:
        for verifier in self.providers:
            if verifier.provider.name == name:
                return verifier
        raise KeyError(name)

    async def authenticate(self, request: RequestTokens) -> Identity | None:
        """Return the identity, None when no token was presented, or raise InvalidToken."""
        found = [
            (p, tok, src) for p in self.providers for tok, src in _extract(p.provider, request)
        ]
        if not found:
            return None
        for verifier, token, source in found:
            # The cache is consulted before even decoding the token: the hot path.
            hit = verifier.cached(token, source)
            if hit is not None:
                verifier.maybe_refresh()
                return hit
        for verifier, token, source in found:
            # Size first: a long token is never decoded. Then a refusal remembered for this
            # exact token stands, as it would inside verify; any invalid token presented
            # fails the request (Istio's rule too), so this never hides a valid one.
            verifier.check_size(token)
            verifier.check_remembered(token)
            try:
                issuer = peek_issuer(token)
            except HostileToken as exc:
                raise verifier.refuse(token, exc) from None
            if issuer == verifier.provider.issuer:
                return await verifier.verify(token, source)
        verifier, token, _source = found[0]
        raise verifier.refuse(token, InvalidToken("no provider for the token's issuer"))


def _extract(provider: config.Provider, request: RequestTokens) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for source in provider.from_headers:
        value = request.headers.get(source.name)
        if value is None:
            continue
        if source.prefix:
            if value[: len(source.prefix)].lower() != source.prefix.lower():
                continue
            value = value[len(source.prefix) :]
        if value.strip():
            out.append((value.strip(), source.name))
    for param in provider.from_params:
        out.extend((value, None) for value in request.query.get(param, ()) if value)
    for cookie in provider.from_cookies:
        value = request.cookies.get(cookie)
        if value:
            out.append((value, None))
    return out


def parse_cookies(header: str | None) -> dict[str, str]:
    """Parse a Cookie header leniently; the first occurrence of a name wins."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


def claim_header_value(value: object) -> str | None:
    """Render a claim as a header value: strings, numbers, booleans, lists of those."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    elif isinstance(value, list) and all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
    ):
        text = ",".join(str(v) for v in value)
    else:
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return None
    return text


# Where Envoy's jwt_authn filter leaves a verified payload (waypoint.envoy.jwt_authn).
ENVOY_JWT_FILTER = "envoy.filters.http.jwt_authn"
ENVOY_PAYLOAD_KEY = "payload"


def from_envoy_metadata(
    request: external_auth_pb2.CheckRequest, providers_by_issuer: Mapping[str, str]
) -> Identity | None:
    """The identity Envoy's jwt_authn verified for this request, if any.

    Only dynamic metadata is read (filters write it; a client cannot), and only a payload
    from an issuer of ours counts: anything else is verified here as before.
    """
    found = request.attributes.metadata_context.filter_metadata.get(ENVOY_JWT_FILTER)
    if found is None or ENVOY_PAYLOAD_KEY not in found.fields:
        return None
    value = found.fields[ENVOY_PAYLOAD_KEY]
    if value.WhichOneof("kind") != "struct_value":
        return None
    claims = _integral(json_format.MessageToDict(value.struct_value))
    provider = providers_by_issuer.get(str(claims.get("iss")))
    if provider is None:
        return None
    exp = claims.get("exp")
    segment = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return Identity(
        provider=provider,
        claims=claims,
        payload_segment=segment,
        source_header=None,
        expires_at=float(exp) if isinstance(exp, int | float) else math.inf,
    )


def _integral(value: Any) -> Any:
    """Protobuf Struct numbers are doubles; give JSON integers back as ints (exp, iat)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value
