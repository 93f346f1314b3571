"""JWT authentication: every attack in the spec is refused, valid tokens pass, and
remote JWKS refetches are single-flight and rate limited (driven by a fake clock)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.server
import json
import os
import pathlib
import re
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from jwt import algorithms as jwt_algorithms

from extauthz import cli, config
from extauthz import jwt as jwt_auth
from tests.extauthz import support

pytestmark = pytest.mark.asyncio


def _authenticator(
    tmp_path: pathlib.Path, clock: jwt_auth.Clock | None = None, **provider: Any
) -> jwt_auth.Authenticator:
    doc = support.base_config(tmp_path)
    doc["jwt"]["providers"][0].update(provider)
    settings = config.from_mapping(doc, tmp_path)
    authn = jwt_auth.Authenticator(settings.jwt, clock or support.FakeClock())
    authn.load_static()
    return authn


def _bearer(token: str) -> jwt_auth.RequestTokens:
    return jwt_auth.RequestTokens({"authorization": f"Bearer {token}"}, {}, {})


async def _verify(authn: jwt_auth.Authenticator, token: str) -> jwt_auth.Identity | None:
    return await authn.authenticate(_bearer(token))


NOW = support.FakeClock().now


async def test_valid_rs256_and_es256_tokens_pass(tmp_path: pathlib.Path) -> None:
    authn = _authenticator(tmp_path)
    rsa = await _verify(authn, support.token(support.claims(NOW, role="admin")))
    assert rsa is not None
    assert rsa.provider == "corp"
    assert rsa.claims["role"] == "admin"
    assert rsa.source_header == "authorization"
    ec = await _verify(
        authn, support.token(support.claims(NOW), key=support.EC_KEY, kid="ec-1", alg="ES256")
    )
    assert ec is not None
    assert ec.claims["sub"] == "alice"


async def test_no_token_is_no_identity(tmp_path: pathlib.Path) -> None:
    authn = _authenticator(tmp_path)
    assert await authn.authenticate(jwt_auth.RequestTokens({}, {}, {})) is None
    # A different auth scheme is not our token: Istio treats it as missing.
    basic = jwt_auth.RequestTokens({"authorization": "Basic dXNlcjpwYXNz"}, {}, {})
    assert await authn.authenticate(basic) is None


async def test_tokens_from_query_param_and_cookie(tmp_path: pathlib.Path) -> None:
    authn = _authenticator(tmp_path)
    tok = support.token(support.claims(NOW))
    by_param = await authn.authenticate(jwt_auth.RequestTokens({}, {"access_token": [tok]}, {}))
    assert by_param is not None
    assert by_param.source_header is None
    cookies = jwt_auth.parse_cookies(f"theme=dark; session={tok}")
    assert await authn.authenticate(jwt_auth.RequestTokens({}, {}, cookies)) is not None


def _attacks() -> dict[str, str]:
    now = int(NOW)
    good = support.claims(NOW)
    rsa_pub_pem = support.public_pem(support.RSA_KEY)
    header, payload, _sig = support.token(good).split(".")
    other_payload = support.b64(json.dumps({**good, "sub": "mallory"}).encode())
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = (
        f"{support.b64(json.dumps(hs_header).encode())}.{support.b64(json.dumps(good).encode())}"
    )
    hs_forged = hmac.new(rsa_pub_pem, signing_input.encode(), hashlib.sha256).digest()
    return {
        "alg none": support.raw_token({"alg": "none", "kid": "rsa-1"}, good),
        "alg None mixed case": support.raw_token({"alg": "None", "kid": "rsa-1"}, good),
        "HS256 signed with the RSA public key": f"{signing_input}.{support.b64(hs_forged)}",
        "expired": support.token(support.claims(NOW, exp=now - 31)),
        "not yet valid": support.token(support.claims(NOW, nbf=now + 31)),
        "issued in the future": support.token(support.claims(NOW, iat=now + 31)),
        "wrong iss": support.token(support.claims(NOW, iss="https://evil.test")),
        "missing exp": support.token(support.claims(NOW, exp=None)),
        "numeric-string exp": support.token(support.claims(NOW, exp=str(now + 600))),
        "boolean exp": support.token(support.claims(NOW, exp=True)),
        "wrong aud": support.token(support.claims(NOW, aud="inventory")),
        "missing aud": support.token(support.claims(NOW, aud=None)),
        "unknown kid": support.token(support.claims(NOW), key=support.ATTACKER_KEY, kid="nope"),
        "no kid": support.token(support.claims(NOW), kid=None),
        "jku pointing elsewhere": support.token(
            support.claims(NOW),
            key=support.ATTACKER_KEY,
            kid="attacker",
            headers={"jku": "http://127.0.0.1:9/jwks.json"},
        ),
        "x5u pointing elsewhere": support.token(
            support.claims(NOW),
            key=support.ATTACKER_KEY,
            kid="attacker",
            headers={"x5u": "http://127.0.0.1:9/cert.pem"},
        ),
        "embedded jwk with trusted kid": support.token(
            support.claims(NOW),
            key=support.ATTACKER_KEY,
            kid="rsa-1",
            headers={"jwk": support.public_jwk(support.ATTACKER_KEY, "rsa-1")},
        ),
        "tampered payload": f"{header}.{other_payload}.{_sig}",
        "signed by attacker with trusted kid": support.token(
            support.claims(NOW), key=support.ATTACKER_KEY, kid="rsa-1"
        ),
        "RS256 header on an EC key": support.token(
            support.claims(NOW), key=support.RSA_KEY, kid="ec-1"
        ),
        "alg outside allow-list": support.token(
            support.claims(NOW), key=support.RSA_KEY, kid="rsa-1", alg="PS256"
        ),
        "crit header": support.token(
            support.claims(NOW), headers={"crit": ["exp-policy"], "exp-policy": 1}
        ),
        "crit b64": support.token(support.claims(NOW), headers={"crit": ["b64"], "b64": True}),
        "oversized": support.token(support.claims(NOW, pad="x" * 17_000)),
        "garbage": "not-a-jwt",
        "garbage three segments": "a.b.c",
        "payload is a list": support.raw_token({"alg": "RS256", "kid": "rsa-1"}, [1, 2]),  # type: ignore[arg-type]
        "empty signature": f"{header}.{payload}.",
    }


ATTACKS = _attacks()
# Each attack must fail for its own reason, not by accident of an earlier check.
REASONS = {
    "HS256 signed with the RSA public key": "alg 'HS256' is not allowed",
    "RS256 header on an EC key": "type EC cannot verify RS256",
    "alg None mixed case": "alg 'None' is not allowed",
    "alg none": "alg 'none' is not allowed",
    "alg outside allow-list": "alg 'PS256' is not allowed",
    "boolean exp": "exp is not a NumericDate",
    "crit b64": "unsupported critical",
    "crit header": "unsupported critical",
    "embedded jwk with trusted kid": "signature verification failed",
    "empty signature": "bad base64url",
    "expired": "expired",
    "garbage": "no provider for the token's issuer",
    "garbage three segments": "no provider for the token's issuer",
    "issued in the future": "iat is in the future",
    "jku pointing elsewhere": "kid 'attacker' is not in the trusted key set",
    "missing aud": "aud does not match",
    "missing exp": "exp is required",
    "no kid": "no kid",
    "not yet valid": "nbf is in the future",
    "numeric-string exp": "exp is not a NumericDate",
    "oversized": "exceeds 16384",
    "payload is a list": "no provider for the token's issuer",
    "signed by attacker with trusted kid": "signature verification failed",
    "tampered payload": "signature verification failed",
    "unknown kid": "kid 'nope' is not in the trusted key set",
    "wrong aud": "aud does not match",
    "wrong iss": "no provider for the token's issuer",
    "x5u pointing elsewhere": "kid 'attacker' is not in the trusted key set",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
async def test_attack_is_refused(tmp_path: pathlib.Path, name: str) -> None:
    authn = _authenticator(tmp_path)
    with pytest.raises(jwt_auth.InvalidToken) as caught:
        await _verify(authn, ATTACKS[name])
    assert REASONS[name] in str(caught.value)


async def test_wrong_iss_is_refused_by_the_provider_itself(tmp_path: pathlib.Path) -> None:
    # Bypass issuer routing: the provider's own check must also refuse a foreign iss.
    authn = _authenticator(tmp_path)
    with pytest.raises(jwt_auth.InvalidToken, match="iss does not match"):
        await authn.provider("corp").verify(ATTACKS["wrong iss"])


async def test_leeway_accepts_slightly_expired_and_early_tokens(tmp_path: pathlib.Path) -> None:
    authn = _authenticator(tmp_path)
    now = int(NOW)
    assert await _verify(authn, support.token(support.claims(NOW, exp=now - 29))) is not None
    assert await _verify(authn, support.token(support.claims(NOW, nbf=now + 29))) is not None


async def test_audience_list_matches_any(tmp_path: pathlib.Path) -> None:
    authn = _authenticator(tmp_path)
    tok = support.token(support.claims(NOW, aud=["inventory", "billing"]))
    assert await _verify(authn, tok) is not None


async def test_hs256_with_configured_secret(tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 40)
    authn = _authenticator(tmp_path, algorithms=["RS256", "HS256"], hs_secret_file=str(secret))
    good = support.token(support.claims(NOW), key=b"s" * 40, kid=None, alg="HS256")
    assert await _verify(authn, good) is not None
    # Even with HS256 allowed, the RSA public key is not the secret.
    with pytest.raises(jwt_auth.InvalidToken):
        await _verify(authn, ATTACKS["HS256 signed with the RSA public key"])


async def test_verified_token_is_cached_until_exp(tmp_path: pathlib.Path) -> None:
    clock = support.FakeClock()
    authn = _authenticator(tmp_path, clock)
    tok = support.token(support.claims(clock.now, exp=int(clock.now) + 100))
    first = await _verify(authn, tok)
    second = await _verify(authn, tok)
    assert first is not None
    assert second is not None
    assert first.claims is second.claims
    clock.advance(100 + 30)
    with pytest.raises(jwt_auth.InvalidToken, match="expired"):
        await _verify(authn, tok)


async def test_token_of_unknown_issuer_is_refused(tmp_path: pathlib.Path) -> None:
    authn = _authenticator(tmp_path)
    with pytest.raises(jwt_auth.InvalidToken, match="issuer"):
        await _verify(authn, support.token(support.claims(NOW, iss="https://other.test")))


@contextlib.contextmanager
def _counting_server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


async def test_jku_and_x5u_are_never_fetched(tmp_path: pathlib.Path) -> None:
    authn = _authenticator(tmp_path)
    with _counting_server() as (base, hits):
        for header in ({"jku": f"{base}/jwks.json"}, {"x5u": f"{base}/cert.pem"}):
            tok = support.token(
                support.claims(NOW), key=support.ATTACKER_KEY, kid="attacker", headers=header
            )
            with pytest.raises(jwt_auth.InvalidToken):
                await _verify(authn, tok)
    assert hits == []


async def _remote(
    tmp_path: pathlib.Path, server: support.JwksServer, clock: support.FakeClock
) -> jwt_auth.Authenticator:
    authn = _authenticator(tmp_path, clock, jwks=None, jwks_uri=server.uri)
    await asyncio.wait_for(authn.start(), 10)
    return authn


async def test_unknown_kid_flood_fetches_at_most_once_per_10s(tmp_path: pathlib.Path) -> None:
    clock = support.FakeClock()
    with support.JwksServer(support.TRUSTED_JWKS).running() as server:
        authn = await _remote(tmp_path, server, clock)
        provider = authn.provider("corp")
        assert server.hits == 1

        async def flood(prefix: str) -> None:
            tokens = [
                support.token(
                    support.claims(clock.now), key=support.ATTACKER_KEY, kid=f"{prefix}{i}"
                )
                for i in range(40)
            ]
            results = await asyncio.gather(
                *(_verify(authn, t) for t in tokens), return_exceptions=True
            )
            assert all(isinstance(r, jwt_auth.InvalidToken) for r in results)
            await provider.wait_idle()

        await flood("a")
        assert server.hits == 2
        clock.advance(5)
        await flood("b")
        assert server.hits == 2
        clock.advance(5.5)
        await flood("c")
        assert server.hits == 3
        # Known kids never trigger fetches.
        assert await _verify(authn, support.token(support.claims(clock.now))) is not None
        assert server.hits == 3


async def test_rotated_key_is_found_by_unknown_kid_refetch(tmp_path: pathlib.Path) -> None:
    clock = support.FakeClock()
    with support.JwksServer(support.TRUSTED_JWKS).running() as server:
        authn = await _remote(tmp_path, server, clock)
        server.doc = support.jwks((support.RSA_KEY, "rsa-1"), (support.ATTACKER_KEY, "rotated"))
        tok = support.token(support.claims(clock.now), key=support.ATTACKER_KEY, kid="rotated")
        await _verify(authn, tok)  # may finish within the bounded wait, or not
        await authn.provider("corp").wait_idle()
        identity = await _verify(authn, tok)
        assert identity is not None
        assert server.hits == 2


async def test_failed_fetch_keeps_last_good_keys_and_ttl_refresh_recovers(
    tmp_path: pathlib.Path,
) -> None:
    clock = support.FakeClock()
    with support.JwksServer(support.TRUSTED_JWKS).running() as server:
        authn = await _remote(tmp_path, server, clock)
        provider = authn.provider("corp")
        server.status = 500
        clock.advance(301)  # past jwks_cache_seconds: the next check kicks a refresh
        tok = support.token(support.claims(clock.now))
        assert await _verify(authn, tok) is not None
        await provider.wait_idle()
        assert server.hits == 2
        assert await _verify(authn, support.token(support.claims(clock.now, sub="b"))) is not None
        # The refresh is retried, no more often than the refetch interval.
        server.status = 200
        server.doc = support.jwks((support.ATTACKER_KEY, "new-1"))
        clock.advance(11)
        await _verify(authn, support.token(support.claims(clock.now, sub="c")))
        await provider.wait_idle()
        assert server.hits == 3
        fresh = support.token(support.claims(clock.now), key=support.ATTACKER_KEY, kid="new-1")
        assert await _verify(authn, fresh) is not None
        # The removed key no longer verifies, even for a token verified before.
        with pytest.raises(jwt_auth.InvalidToken):
            await _verify(authn, tok)


async def test_start_waits_for_first_good_jwks(tmp_path: pathlib.Path) -> None:
    with support.JwksServer(support.TRUSTED_JWKS).running() as server:
        server.status = 503
        authn = _authenticator(tmp_path, jwks=None, jwks_uri=server.uri)
        assert not authn.ready
        start = asyncio.get_running_loop().create_task(authn.start())
        while server.hits < 2:
            await asyncio.sleep(0.05)
        assert not authn.ready
        server.status = 200
        await asyncio.wait_for(start, 10)
        assert authn.ready


async def test_claim_header_values() -> None:
    assert jwt_auth.claim_header_value("alice") == "alice"
    assert jwt_auth.claim_header_value(7) == "7"
    assert jwt_auth.claim_header_value(True) == "true"
    assert jwt_auth.claim_header_value(["a", "b"]) == "a,b"
    assert jwt_auth.claim_header_value({"x": 1}) is None
    assert jwt_auth.claim_header_value("evil\r\nx-admin: 1") is None


async def test_cli_token_verifies_against_cli_jwks(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(
        support.EC_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert cli.main(["jwks", "--key", str(key), "--kid", "cli-1"]) == 0
    jwks_doc = json.loads(capsys.readouterr().out)
    args = ["token", "--key", str(key), "--kid", "cli-1", "--issuer", support.ISSUER]
    args += ["--audience", support.AUDIENCE, "--claim", "role=admin", "--claim", "level=3"]
    assert cli.main(args) == 0
    minted = capsys.readouterr().out.strip()
    authn = _authenticator(tmp_path, time.time, jwks=jwks_doc)
    identity = await _verify(authn, minted)
    assert identity is not None
    assert identity.claims["role"] == "admin"
    assert identity.claims["level"] == 3


async def test_replaced_key_under_same_kid_drops_cached_tokens(tmp_path: pathlib.Path) -> None:
    clock = support.FakeClock()
    with support.JwksServer(support.TRUSTED_JWKS).running() as server:
        authn = await _remote(tmp_path, server, clock)
        old = support.token(support.claims(clock.now, exp=int(clock.now) + 3600))
        assert await _verify(authn, old) is not None
        server.doc = support.jwks((support.ATTACKER_KEY, "rsa-1"))
        clock.advance(301)
        assert await _verify(authn, old) is not None  # kicks the refresh, still old keys
        await authn.provider("corp").wait_idle()
        with pytest.raises(jwt_auth.InvalidToken, match="signature"):
            await _verify(authn, old)
        new = support.token(support.claims(clock.now), key=support.ATTACKER_KEY, kid="rsa-1")
        assert await _verify(authn, new) is not None


async def test_rejections_are_remembered_briefly_but_not_across_key_changes(
    tmp_path: pathlib.Path,
) -> None:
    clock = support.FakeClock()
    with support.JwksServer(support.TRUSTED_JWKS).running() as server:
        server.status = 503
        authn = _authenticator(tmp_path, clock, jwks=None, jwks_uri=server.uri)
        early = support.token(support.claims(clock.now))
        # Before any keys arrive the token cannot verify, and that refusal is remembered...
        with pytest.raises(jwt_auth.InvalidToken, match="not in the trusted key set"):
            await _verify(authn, early)
        server.status = 200
        await asyncio.wait_for(authn.start(), 10)
        # ...but not once keys arrive.
        assert await _verify(authn, early) is not None

        # A refused token is refused from memory for a while: with the clock set back,
        # a fresh check would accept this token, the remembered refusal does not.
        stale = support.token(support.claims(clock.now, exp=int(clock.now) - 31))
        with pytest.raises(jwt_auth.InvalidToken, match="expired"):
            await _verify(authn, stale)
        clock.advance(-2)
        with pytest.raises(jwt_auth.InvalidToken, match="expired"):
            await _verify(authn, stale)
        clock.advance(2)

        later = support.token(support.claims(clock.now, nbf=int(clock.now) + 40))
        with pytest.raises(jwt_auth.InvalidToken, match="nbf"):
            await _verify(authn, later)
        clock.advance(15)
        assert await _verify(authn, later) is not None


# -- jwks_file is watched like a jwks_uri ----------------------------------------------


def _write_jwks(path: pathlib.Path, doc: Any) -> None:
    # Write-then-rename, as config management tools do: readers never see half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)


def _watched(
    tmp_path: pathlib.Path, clock: support.FakeClock, path: pathlib.Path
) -> tuple[jwt_auth.Authenticator, list[str]]:
    """An authenticator on ``jwks_file=path`` and the results its on_fetch hook saw."""
    doc = support.base_config(tmp_path)
    doc["jwt"]["providers"][0].update(jwks=None, jwks_file=str(path))
    settings = config.from_mapping(doc, tmp_path)
    fetches: list[str] = []
    authn = jwt_auth.Authenticator(
        settings.jwt, clock, on_fetch=lambda provider, result: fetches.append(result)
    )
    authn.load_static()
    return authn, fetches


async def _tick(authn: jwt_auth.Authenticator, clock: support.FakeClock, seconds: float) -> None:
    """Move the clock, let a request notice it and wait for any refresh it kicked."""
    clock.advance(seconds)
    await _verify(authn, support.token(support.claims(clock.now, sub=f"tick-{clock.now}")))
    await authn.provider("corp").wait_idle()


NEW_KEY_JWKS = support.jwks((support.ATTACKER_KEY, "rsa-2"))


async def test_jwks_file_rotation_applies_after_ttl(tmp_path: pathlib.Path) -> None:
    clock = support.FakeClock()
    path = tmp_path / "jwks.json"
    _write_jwks(path, support.jwks((support.RSA_KEY, "rsa-1")))
    authn, fetches = _watched(tmp_path, clock, path)
    old = support.token(support.claims(clock.now, exp=int(clock.now) + 3600))
    assert await _verify(authn, old) is not None
    _write_jwks(path, NEW_KEY_JWKS)
    await _tick(authn, clock, 299)
    assert fetches == []  # within jwks_cache_seconds the file is not looked at
    assert await _verify(authn, old) is not None
    clock.advance(2)
    assert await _verify(authn, old) is not None  # from cache; kicks the re-read
    await authn.provider("corp").wait_idle()
    assert fetches == ["ok"]
    new = support.token(support.claims(clock.now), key=support.ATTACKER_KEY, kid="rsa-2")
    assert await _verify(authn, new) is not None
    # The removed key stops verifying at once, although the token was cached.
    with pytest.raises(jwt_auth.InvalidToken, match="'rsa-1' is not in the trusted key set"):
        await _verify(authn, old)
    assert fetches == ["ok"]  # that unknown kid cost one stat, not a re-read


async def test_jwks_file_unknown_kid_rereads_at_once_rate_limited(tmp_path: pathlib.Path) -> None:
    clock = support.FakeClock()
    path = tmp_path / "jwks.json"
    _write_jwks(path, support.jwks((support.RSA_KEY, "rsa-1")))
    authn, fetches = _watched(tmp_path, clock, path)
    provider = authn.provider("corp")
    _write_jwks(path, support.jwks((support.RSA_KEY, "rsa-1"), (support.ATTACKER_KEY, "new-1")))
    first = support.token(support.claims(clock.now), key=support.ATTACKER_KEY, kid="new-1")
    with contextlib.suppress(jwt_auth.InvalidToken):
        await _verify(authn, first)  # may finish within the bounded wait, or not
    await provider.wait_idle()
    assert await _verify(authn, first) is not None
    assert fetches == ["ok"]

    keys = ((support.RSA_KEY, "rsa-1"), (support.ATTACKER_KEY, "new-1"), (support.EC_KEY, "new-2"))
    _write_jwks(path, support.jwks(*keys))
    clock.advance(5)
    second = support.token(support.claims(clock.now), key=support.EC_KEY, kid="new-2", alg="ES256")
    with pytest.raises(jwt_auth.InvalidToken, match="'new-2' is not in the trusted key set"):
        await _verify(authn, second)
    await provider.wait_idle()
    assert fetches == ["ok"]  # within unknown_kid_refetch_seconds: not re-read
    clock.advance(5.5)
    # A fresh token: the refusal of the one above is remembered for a while.
    third = support.token(support.claims(clock.now), key=support.EC_KEY, kid="new-2", alg="ES256")
    with contextlib.suppress(jwt_auth.InvalidToken):
        await _verify(authn, third)
    await provider.wait_idle()
    assert fetches == ["ok", "ok"]
    assert await _verify(authn, third) is not None


async def test_jwks_file_follows_kubernetes_symlink_swap(tmp_path: pathlib.Path) -> None:
    # The kubelet's layout: jwks.json -> ..data/jwks.json, ..data -> ..<timestamp>; an update
    # writes a new timestamped directory and renames a new ..data link over the old one.
    mount = tmp_path / "mount"
    (mount / "..2026_x").mkdir(parents=True)
    (mount / "..2026_x" / "jwks.json").write_text(json.dumps(support.TRUSTED_JWKS))
    (mount / "..data").symlink_to("..2026_x")
    (mount / "jwks.json").symlink_to("..data/jwks.json")
    clock = support.FakeClock()
    authn, fetches = _watched(tmp_path, clock, mount / "jwks.json")
    old = support.token(support.claims(clock.now))
    assert await _verify(authn, old) is not None

    (mount / "..2026_y").mkdir()
    (mount / "..2026_y" / "jwks.json").write_text(json.dumps(NEW_KEY_JWKS))
    (mount / "..data_tmp").symlink_to("..2026_y")
    os.replace(mount / "..data_tmp", mount / "..data")
    shutil.rmtree(mount / "..2026_x")
    await _tick(authn, clock, 301)
    assert fetches == ["ok"]
    new = support.token(support.claims(clock.now), key=support.ATTACKER_KEY, kid="rsa-2")
    assert await _verify(authn, new) is not None
    with pytest.raises(jwt_auth.InvalidToken, match="not in the trusted key set"):
        await _verify(authn, old)


BAD_FILES = {"not JSON": "{not json", "no usable keys": '{"keys": []}', "deleted": None}


@pytest.mark.parametrize("bad", sorted(BAD_FILES))
async def test_bad_jwks_file_after_startup_keeps_last_good_keys(
    tmp_path: pathlib.Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = support.FakeClock()
    path = tmp_path / "jwks.json"
    _write_jwks(path, support.TRUSTED_JWKS)
    authn, fetches = _watched(tmp_path, clock, path)
    content = BAD_FILES[bad]
    if content is None:
        path.unlink()
    else:
        _write_jwks(path, content)
    await _tick(authn, clock, 301)
    assert fetches == ["error"]
    assert any(
        "provider corp" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records
    )
    assert await _verify(authn, support.token(support.claims(clock.now, sub="b"))) is not None
    # A bad file stays visible: it is retried (and reported) each refetch interval.
    await _tick(authn, clock, 11)
    assert fetches == ["error", "error"]
    _write_jwks(path, NEW_KEY_JWKS)
    await _tick(authn, clock, 11)
    assert fetches == ["error", "error", "ok"]
    new = support.token(support.claims(clock.now), key=support.ATTACKER_KEY, kid="rsa-2")
    assert await _verify(authn, new) is not None


async def test_steady_jwks_file_is_not_reparsed(tmp_path: pathlib.Path) -> None:
    clock = support.FakeClock()
    path = tmp_path / "jwks.json"
    _write_jwks(path, support.TRUSTED_JWKS)
    authn, fetches = _watched(tmp_path, clock, path)
    tok = support.token(support.claims(clock.now, exp=int(clock.now) + 3600))
    first = await _verify(authn, tok)
    for _ in range(3):
        await _tick(authn, clock, 301)
    assert fetches == []
    # The stat is really taken: a new mtime alone makes it re-read the file, and equal
    # keys leave verified tokens cached. An unchanged stat restarted the TTL, so the
    # change is seen a full jwks_cache_seconds after the last stat, not sooner.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    await _tick(authn, clock, 11)
    assert fetches == []
    await _tick(authn, clock, 290)
    assert fetches == ["ok"]
    again = await _verify(authn, tok)
    assert first is not None
    assert again is not None
    assert again.claims is first.claims


@pytest.mark.parametrize("bad", sorted(BAD_FILES))
async def test_bad_jwks_file_at_startup_is_an_error(tmp_path: pathlib.Path, bad: str) -> None:
    path = tmp_path / "jwks.json"
    _write_jwks(path, support.TRUSTED_JWKS)
    doc = support.base_config(tmp_path)
    doc["jwt"]["providers"][0].update(jwks=None, jwks_file=str(path))
    authn = jwt_auth.Authenticator(config.from_mapping(doc, tmp_path).jwt, support.FakeClock())
    content = BAD_FILES[bad]
    if content is None:
        path.unlink()
    else:
        _write_jwks(path, content)
    with pytest.raises(ValueError, match=re.escape(f"provider corp: jwks_file {path}")):
        authn.load_static()


# -- hostile token shapes: refused cheaply, cleanly, and remembered ----------------------


def _signed_raw(header_json: str, payload_json: str) -> str:
    """An RS256 token over exactly these JSON texts (pyjwt would re-serialize them)."""
    signing_input = f"{support.b64(header_json.encode())}.{support.b64(payload_json.encode())}"
    signer = jwt_algorithms.RSAAlgorithm(jwt_algorithms.RSAAlgorithm.SHA256)
    signature = signer.sign(signing_input.encode(), support.RSA_KEY)
    return f"{signing_input}.{support.b64(signature)}"


_HEADER = '{"alg":"RS256","kid":"rsa-1","typ":"JWT"}'


def _payload(**extra: Any) -> str:
    return json.dumps({**support.claims(NOW), **extra})


async def test_duplicate_member_names_are_refused(tmp_path: pathlib.Path) -> None:
    authn = _authenticator(tmp_path)
    # Signed by the trusted key: only the duplicate makes it bad.
    twice = _payload(role="user")[:-1] + ', "role": "admin"}'
    assert '"role": "user"' in twice
    with pytest.raises(jwt_auth.InvalidToken, match="payload has a duplicate member name"):
        await _verify(authn, _signed_raw(_HEADER, twice))
    header_twice = '{"alg":"RS256","kid":"rsa-1","kid":"rsa-1"}'
    with pytest.raises(jwt_auth.InvalidToken, match="header has a duplicate member name"):
        await _verify(authn, _signed_raw(header_twice, _payload()))
    nested_twice = _payload()[:-1] + ', "o": {"a": 1, "a": 2}}'
    with pytest.raises(jwt_auth.InvalidToken, match="duplicate member name"):
        await _verify(authn, _signed_raw(_HEADER, nested_twice))
    # The same claims without the duplicate pass.
    assert await _verify(authn, _signed_raw(_HEADER, _payload(role="admin"))) is not None


async def test_deeply_nested_json_is_a_remembered_401(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authn = _authenticator(tmp_path)
    deep = "[" * 3000 + "]" * 3000
    in_payload = _signed_raw(_HEADER, _payload()[:-1] + f', "x": {deep}}}')
    in_header = _signed_raw(_HEADER[:-1] + f',"x":{deep}}}', _payload())
    with pytest.raises(jwt_auth.InvalidToken, match="payload is nested too deeply"):
        await _verify(authn, in_payload)
    with pytest.raises(jwt_auth.InvalidToken, match="header is nested too deeply"):
        await _verify(authn, in_header)
    # Both refusals are remembered: the next try parses nothing.
    parsed: list[str] = []
    original = jwt_auth._json_object

    def spy(segment: str, what: str) -> dict[str, Any]:
        parsed.append(what)
        return original(segment, what)

    monkeypatch.setattr(jwt_auth, "_json_object", spy)
    for token, reason in ((in_payload, "payload is nested"), (in_header, "header is nested")):
        with pytest.raises(jwt_auth.InvalidToken, match=reason):
            await _verify(authn, token)
    assert parsed == []


async def test_an_oversized_token_is_refused_before_any_decoding(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authn = _authenticator(tmp_path)
    huge = support.token(support.claims(NOW, pad="x" * 1_000_000))

    def never(*_args: Any) -> Any:
        raise AssertionError("an oversized token was decoded or hashed")

    monkeypatch.setattr(jwt_auth, "_b64decode", never)
    monkeypatch.setattr(hashlib, "sha256", never)
    with pytest.raises(jwt_auth.InvalidToken, match="exceeds 16384"):
        await _verify(authn, huge)


async def test_the_token_cache_is_bounded_by_bytes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwt_auth, "_CACHE_BYTES", 100_000)
    authn = _authenticator(tmp_path)
    verifier = authn.provider("corp")
    for i in range(40):  # tokens of about 10 KB each: 40 x 3 x 10 KB would be 1.2 MB
        token = support.token(support.claims(NOW, sub=f"user-{i}", pad="p" * 7000))
        assert await _verify(authn, token) is not None
        assert verifier._cache_bytes <= 100_000
    assert 0 < len(verifier._cache) < 40
