"""Config loading: the spec's example loads, and every bad value names its key path."""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import re
from typing import Any

import pytest
import yaml

from extauthz import cli, config, contract
from tests.extauthz import support

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "extauthz" / "config.yaml"

SPEC_EXAMPLE = """
listen: "127.0.0.1:9191"
metrics_listen: "127.0.0.1:9464"
jwt:
  leeway_seconds: 60
  providers:
    - name: corp
      issuer: "https://issuer.example"
      audiences: ["orders"]
      algorithms: ["RS256", "ES256"]
      jwks_file: "keys/jwks.json"
      from_headers: [{name: authorization, prefix: "Bearer "}]
      from_params: []
      from_cookies: []
      claim_to_headers: [{claim: sub, header: x-jwt-sub}]
      forward_payload_header: x-jwt-payload
policy:
  engine: embedded
  modules: ["policies/authz.rego"]
  decision: "envoy/authz/allow"
  opa: {url: "http://127.0.0.1:8181", timeout_ms: 100}
dry_run: false
"""


def test_spec_example_loads_with_paths_relative_to_the_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text("{}")
    (tmp_path / "policies" / "authz.rego").write_text("package envoy.authz\n")
    (tmp_path / "extauthz.yaml").write_text(SPEC_EXAMPLE)
    settings = config.load(tmp_path / "extauthz.yaml")
    provider = settings.jwt.providers[0]
    assert provider.jwks_file == tmp_path / "keys" / "jwks.json"
    assert provider.audiences == ("orders",)
    assert provider.claim_to_headers == (config.ClaimToHeader("sub", "x-jwt-sub"),)
    assert provider.from_headers == (config.HeaderSource("authorization", "Bearer "),)
    assert settings.policy.modules == (tmp_path / "policies" / "authz.rego",)
    assert settings.policy.opa.timeout_ms == 100
    assert settings.jwt.max_token_bytes == 16 * 1024
    assert settings.listen == "127.0.0.1:9191"


def test_defaults(tmp_path: pathlib.Path) -> None:
    (tmp_path / "p.rego").write_text("package envoy.authz\n")
    settings = config.loads("policy: {modules: [p.rego]}", base_dir=tmp_path)
    assert settings.listen == config.DEFAULT_LISTEN
    assert settings.policy.decision == "envoy/authz/allow"
    assert settings.jwt.providers == ()
    assert settings.dry_run is False


def test_example_config_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", str(EXAMPLE)]) == 0
    assert "ok" in capsys.readouterr().out


def _provider_edit(key: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        provider = doc["jwt"]["providers"][0]
        if value is _DELETE:
            del provider[key]
        else:
            provider[key] = value

    return edit


_DELETE = object()

CASES: dict[str, tuple[Any, str]] = {
    "unknown top-level key": (lambda d: d.update(listne="x"), "listne: unknown key"),
    "bad listen": (lambda d: d.update(listen="nowhere"), "listen: must be host:port"),
    "relative unix path": (lambda d: d.update(listen="unix:sock"), "listen: unix socket path"),
    "bad metrics_listen": (lambda d: d.update(metrics_listen=":x"), "metrics_listen:"),
    "dry_run not bool": (lambda d: d.update(dry_run="yes"), "dry_run: must be true or false"),
    "leeway negative": (
        lambda d: d["jwt"].update(leeway_seconds=-1),
        "jwt.leeway_seconds: must be an integer",
    ),
    "unknown jwt key": (lambda d: d["jwt"].update(provider=[]), "jwt.provider: unknown key"),
    "empty audiences": (
        _provider_edit("audiences", []),
        "jwt.providers[0].audiences: must be a non-empty list",
    ),
    "missing issuer": (_provider_edit("issuer", _DELETE), "jwt.providers[0].issuer: is required"),
    "alg none": (
        _provider_edit("algorithms", ["RS256", "none"]),
        "jwt.providers[0].algorithms[1]: 'none' is never allowed",
    ),
    "HS without secret": (
        _provider_edit("algorithms", ["HS256"]),
        "jwt.providers[0].algorithms[0]: HS256 needs hs_secret_file",
    ),
    "unknown alg": (
        _provider_edit("algorithms", ["RS1"]),
        "jwt.providers[0].algorithms[0]: unknown algorithm",
    ),
    "two jwks sources": (
        _provider_edit("jwks_uri", "https://idp.test/jwks"),
        "jwt.providers[0]: set only one of jwks_file, jwks_uri, jwks",
    ),
    "no jwks source": (
        _provider_edit("jwks", _DELETE),
        "jwt.providers[0]: one of jwks_file, jwks_uri, jwks is required",
    ),
    "missing jwks file": (
        lambda d: (
            d["jwt"]["providers"][0].pop("jwks"),
            d["jwt"]["providers"][0].update(jwks_file="nope.json"),
        ),
        "jwt.providers[0].jwks_file: no such file",
    ),
    "plain http jwks_uri": (
        lambda d: (
            d["jwt"]["providers"][0].pop("jwks"),
            d["jwt"]["providers"][0].update(jwks_uri="http://idp.example/jwks"),
        ),
        "jwt.providers[0].jwks_uri: must be an https:// URL",
    ),
    "bad claim header": (
        _provider_edit("claim_to_headers", [{"claim": "sub", "header": "x bad"}]),
        "jwt.providers[0].claim_to_headers[0].header: not a valid header name",
    ),
    "claim mapping missing claim": (
        _provider_edit("claim_to_headers", [{"header": "x-sub"}]),
        "jwt.providers[0].claim_to_headers[0].claim: is required",
    ),
    "unknown from_headers key": (
        _provider_edit("from_headers", [{"name": "authorization", "prefx": "Bearer "}]),
        "jwt.providers[0].from_headers[0].prefx: unknown key",
    ),
    "from_params not a list": (
        _provider_edit("from_params", "access_token"),
        "jwt.providers[0].from_params: must be a list",
    ),
    "unknown provider key": (
        _provider_edit("audience", ["x"]),
        "jwt.providers[0].audience: unknown key",
    ),
    "duplicate provider": (
        lambda d: d["jwt"]["providers"].append(copy.deepcopy(d["jwt"]["providers"][0])),
        "jwt.providers[1].name: duplicate provider name 'corp'",
    ),
    "bad engine": (
        lambda d: d["policy"].update(engine="wasm"),
        "policy.engine: must be one of embedded, opa",
    ),
    "missing module": (
        lambda d: d["policy"].update(modules=["missing.rego"]),
        "policy.modules[0]: no such file",
    ),
    "no rego for embedded": (
        lambda d: d["policy"].update(modules=[str(support.DATA)]),
        "policy.modules: the embedded engine needs at least one .rego file",
    ),
    "bad decision": (
        lambda d: d["policy"].update(decision="envoy.authz.allow!"),
        "policy.decision: must look like",
    ),
    "opa timeout zero": (
        lambda d: d["policy"].update(opa={"timeout_ms": 0}),
        "policy.opa.timeout_ms: must be an integer in [1, 60000]",
    ),
    "opa url with path": (
        lambda d: d["policy"].update(opa={"url": "http://opa:8181/v1/data"}),
        "policy.opa.url: must be http(s)://host[:port]",
    ),
    "unknown opa key": (
        lambda d: d["policy"].update(opa={"retries": 2}),
        "policy.opa.retries: unknown key",
    ),
    "unknown limit": (
        lambda d: d.update(limits={"max_conections": 10}),
        "limits.max_conections: unknown key",
    ),
    "settings entries below the settings that exist": (
        lambda d: d.update(limits={"settings_entries_per_frame": 3}),
        "limits.settings_entries_per_frame: must be an integer in [6, 2730]",
    ),
    "zero idle timeout": (
        lambda d: d.update(limits={"idle_timeout_seconds": 0}),
        "limits.idle_timeout_seconds: must be a number >= 1",
    ),
    "header block below the metadata cap": (
        lambda d: d.update(limits={"max_metadata_bytes": 8192, "max_header_block_bytes": 4096}),
        "limits.max_header_block_bytes: must be >= limits.max_metadata_bytes",
    ),
}


def test_limits_have_defaults_and_can_be_set(tmp_path: pathlib.Path) -> None:
    doc = support.base_config(tmp_path)
    assert config.from_mapping(doc, tmp_path).limits == config.Limits()
    doc["limits"] = {"max_connections": 64, "control_frames_per_second": 20}
    limits = config.from_mapping(doc, tmp_path).limits
    assert (limits.max_connections, limits.control_frames_per_second) == (64, 20.0)
    assert limits.settings_entries_per_frame == 32


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_config_names_the_key(tmp_path: pathlib.Path, name: str) -> None:
    edit, message = CASES[name]
    doc = support.base_config(tmp_path)
    edit(doc)
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.from_mapping(doc, tmp_path)


def test_yaml_syntax_error_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.loads("listen: [", tmp_path)


def test_cli_reports_config_errors_with_exit_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = support.base_config(tmp_path)
    doc["jwt"]["providers"][0]["audiences"] = []
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert "jwt.providers[0].audiences: must be a non-empty list" in capsys.readouterr().err


def test_cli_reports_rego_errors(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.rego"
    bad.write_text("package envoy.authz\nallow if {\n")
    doc = support.base_config(tmp_path)
    doc["policy"]["modules"] = [str(bad)]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert f"policy: {bad}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("parsed", "doc"),
    [
        (config.Settings, contract.ConfigDoc),
        (config.JwtConfig, contract.JwtDoc),
        (config.Provider, contract.ProviderDoc),
        (config.HeaderSource, contract.HeaderSourceDoc),
        (config.ClaimToHeader, contract.ClaimToHeaderDoc),
        (config.PolicyConfig, contract.PolicyDoc),
        (config.OpaConfig, contract.OpaDoc),
    ],
)
def test_each_parsed_field_is_a_contract_key(parsed: type, doc: type) -> None:
    """The contract the waypoint writes and the dataclasses extauthz parses into name the
    same keys, so neither side can grow a key the other does not know."""
    assert {f.name for f in dataclasses.fields(parsed)} == contract.keys(doc)


_PROVIDER = {"name": "a", "issuer": "https://i", "audiences": ["x"], "jwks_uri": "https://i/k"}


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"jwt": {"providers": [{"name": "a", "issuer": "https://i"}]}}, "providers[0].audiences"),
        (
            {"jwt": {"providers": [{**_PROVIDER, "from_headers": [{"prefix": "Token "}]}]}},
            "from_headers[0].name",
        ),
    ],
)
def test_required_keys_come_from_the_contract(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(config.ConfigError, match=re.escape(where) + ": is required"):
        config.from_mapping(doc, REPO)
