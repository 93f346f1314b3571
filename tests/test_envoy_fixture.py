"""The Envoy fixture starts the real binary, reports ready, and validates configs."""

from __future__ import annotations

import urllib.request

import pytest

from tests import conftest
from waypoint.runtime import envoy_process


def _direct_response_config(admin_port: int, port: int) -> dict[str, object]:
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "hi"}},
    }
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "t",
            "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [route]}]},
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [hcm]}],
                }
            ]
        },
    }


def test_envoy_starts_and_serves(envoy: conftest.EnvoyStarter) -> None:
    admin, port = conftest.free_port(), conftest.free_port()
    proc = envoy(_direct_response_config(admin, port), admin)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        assert resp.read() == b"hi"
    assert "LIVE" in proc.admin_get("/ready")


def test_validate_rejects_bad_config() -> None:
    with pytest.raises(envoy_process.EnvoyError, match="envoy rejected"):
        envoy_process.validate_text("static_resources: {listeners: [{name: x}]}\nbogus_field: 1\n")


def test_validate_rejects_deprecated_fields() -> None:
    """Envoy accepts a deprecated field with a warning on every start; we refuse it."""
    config = """
static_resources:
  listeners:
  - name: x
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x
          route_config: {}
          http_filters:
          - name: envoy.filters.http.set_filter_state
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config
              on_request_headers:
              - object_key: k
                factory_key: envoy.string
                format_string: {text_format_source: {inline_string: v}}
                read_only: true
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    with pytest.raises(envoy_process.EnvoyError, match="deprecated fields"):
        envoy_process.validate_text(config)
    envoy_process.validate_text(config.replace("                read_only: true\n", ""))
