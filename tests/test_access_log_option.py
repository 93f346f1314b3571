"""``BootstrapOptions.access_log`` and ``--access-log {on,off}``: off leaves no access log in
any listener of the static bootstrap or of the xDS resources, on (the default) keeps them.

The checks walk the generated config generically (every key of every message, every packed
``Any`` expanded), so a future builder that forgets the option fails here too. The worlds are
the example world ``waypoint up`` runs (HBONE terminate, L7 inbound listeners, HBONE
origination) and every golden IR case (adding an inbound TCP destination).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from loadtests import hop_bench
from tests import conftest
from tests import test_envoy_golden as golden_cases
from waypoint import cli, model, pipeline
from waypoint.commands import args as cli_args
from waypoint.commands import serve, up
from waypoint.controller import main as controller_main
from waypoint.controller import xds as kxds
from waypoint.envoy import bootstrap, filters, options, protos
from waypoint.local import ca as dev_ca
from waypoint.local import stack as stack_mod
from waypoint.local.hbone import client as hbone_client
from waypoint.runtime import envoy_process, inputs, sds
from waypoint.xds import cache, publish

OFF = options.BootstrapOptions(access_log=False)
WORLDS = ["example", *golden_cases.CASES]
# Listeners that never log (probes every few seconds would drown the request log).
UNLOGGED = {"readiness", "stats"}
LOGGED_FILTERS = {filters.HCM, filters.TCP_PROXY}


def _example_waypoint() -> model.Waypoint:
    objects = inputs.load_objects([up.EXAMPLE])
    return pipeline.render(objects, "demo", "waypoint", options.BootstrapOptions()).waypoint


def _waypoint(world: str) -> model.Waypoint:
    return _example_waypoint() if world == "example" else golden_cases.load_case(world)


def access_log_paths(value: Any, path: str = "") -> Iterator[str]:
    """Where ``value`` (plain data from a config) holds an access log, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            is_log = key in ("access_log", "accessLog") and bool(item)
            if is_log or (key == "@type" and "access_loggers" in str(item)):
                yield here
            else:
                yield from access_log_paths(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from access_log_paths(item, f"{path}[{index}]")


def static_config(world: str, opts: options.BootstrapOptions) -> dict[str, Any]:
    return bootstrap.to_dict(bootstrap.build(_waypoint(world), opts))


def xds_resources(world: str, opts: options.BootstrapOptions) -> dict[str, dict[str, Any]]:
    """Every resource of the waypoint's xDS snapshot, by ``<type url> <name>``."""
    snap = publish.build_snapshot(_waypoint(world), publish.xds_options(opts))
    return {
        f"{type_url} {name}": protos.to_dict(resource.body)
        for type_url, by_name in snap.resources.items()
        for name, resource in by_name.items()
    }


def network_filters(listener: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for chain in listener.get("filter_chains", []):
        yield from chain.get("filters", [])


@pytest.mark.parametrize("world", WORLDS)
def test_off_leaves_no_access_log_in_the_static_bootstrap(world: str) -> None:
    config = static_config(world, OFF)
    assert config["static_resources"]["listeners"]
    assert list(access_log_paths(config)) == []


@pytest.mark.parametrize("world", WORLDS)
def test_off_leaves_no_access_log_in_the_xds_resources(world: str) -> None:
    served = xds_resources(world, OFF)
    assert any("Listener" in key for key in served)
    assert {key: list(access_log_paths(body)) for key, body in served.items()} == {
        key: [] for key in served
    }


@pytest.mark.parametrize("world", WORLDS)
def test_default_logs_every_hcm_and_tcp_proxy_but_the_probes(world: str) -> None:
    listeners = static_config(world, options.BootstrapOptions())["static_resources"]["listeners"]
    logged = {
        (listener["name"], item["name"]): bool(item["typed_config"].get("access_log"))
        for listener in listeners
        for item in network_filters(listener)
        if item["name"] in LOGGED_FILTERS
    }
    assert logged == {key: key[0] not in UNLOGGED for key in logged}
    # The same listeners over xDS carry the same logs.
    served = xds_resources(world, options.BootstrapOptions())
    served_logged = [key for key, body in served.items() if list(access_log_paths(body))]
    assert len(served_logged) == len({name for (name, _), on in logged.items() if on})


def test_default_worlds_cover_an_hcm_and_every_tcp_proxy_kind() -> None:
    """The worlds above really hold what the option must reach (else they prove little)."""
    kinds: set[tuple[str, str]] = set()
    for world in WORLDS:
        for listener in static_config(world, options.BootstrapOptions())["static_resources"][
            "listeners"
        ]:
            for item in network_filters(listener):
                if item["typed_config"].get("access_log"):
                    kinds.add((listener["name"].split("|")[0], item["name"]))
    assert kinds >= {
        ("connect_terminate", filters.HCM),
        ("inbound-vip", filters.HCM),
        ("inbound-vip", filters.TCP_PROXY),
        ("connect_originate", filters.TCP_PROXY),
    }


def test_off_changes_nothing_but_the_logs() -> None:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "access_log"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    for world in WORLDS:
        on = static_config(world, options.BootstrapOptions())
        assert strip(on) == static_config(world, OFF), world
        assert static_config(world, OFF) == static_config(world, OFF), world


def _write_certs(root: pathlib.Path, opts: options.BootstrapOptions) -> options.BootstrapOptions:
    local = dataclasses.replace(opts, cert_dir=str(root / "certs"), sds_dir=str(root / "sds"))
    dev_ca.CertificateAuthority.create("cluster.local").issue_workload("ns1", "waypoint").write(
        local.cert_dir
    )
    sds.write_files(local)
    return local


def test_envoy_validates_the_access_log_off_bootstrap(tmp_path: pathlib.Path) -> None:
    opts = _write_certs(tmp_path, OFF)
    message = bootstrap.build(golden_cases.load_case("tcp-and-workload"), opts)
    assert list(access_log_paths(bootstrap.to_dict(message))) == []
    envoy_process.validate_text(bootstrap.to_yaml(message))


def test_render_access_log_off_has_none_and_validates(tmp_path: pathlib.Path) -> None:
    base = ["render", "-f", str(up.EXAMPLE), "--waypoint", "demo/waypoint",
            "--cert-dir", str(tmp_path / "certs")]  # fmt: skip
    off, on = tmp_path / "off.yaml", tmp_path / "on.yaml"
    assert cli.main([*base, "--access-log", "off", "-o", str(off)]) == 0
    assert cli.main([*base, "-o", str(on)]) == 0
    assert list(access_log_paths(yaml.safe_load(off.read_text()))) == []
    assert list(access_log_paths(yaml.safe_load(on.read_text())))
    envoy_process.validate(off)


def test_a_bad_switch_value_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["render", "--access-log", "no", "--waypoint", "demo/waypoint"])
    assert "--access-log: must be on or off, got 'no'" in capsys.readouterr().err
    assert [cli_args.on_off("on"), cli_args.on_off("off")] == [True, False]


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_controller_flag_reaches_the_options_it_serves_over_xds() -> None:
    assert controller_main.options(_parse("controller")).access_log
    opts = controller_main.options(_parse("controller", "--access-log", "off"))
    assert not opts.access_log
    # What the controller's xDS publisher builds snapshots with.
    publisher = kxds.Publisher(cache.SnapshotCache(), "127.0.0.1:15010", opts)
    assert not publisher.options.access_log
    snap = publish.build_snapshot(_example_waypoint(), publisher.options)
    bodies = [protos.to_dict(r.body) for by in snap.resources.values() for r in by.values()]
    assert [p for body in bodies for p in access_log_paths(body)] == []


def test_serve_and_up_flags_reach_their_options() -> None:
    serve_args = _parse("serve", "-f", ".", "--access-log", "off")
    assert not serve._options(serve_args).access_log
    assert serve._options(_parse("serve", "-f", ".")).access_log
    assert not _parse("up", "--access-log", "off").access_log
    assert _parse("up").access_log


def test_hop_bench_flag_defaults_on() -> None:
    assert hop_bench._parser().parse_args([]).waypoint_access_log
    assert not hop_bench._parser().parse_args(["--waypoint-access-log", "off"]).waypoint_access_log
    assert "--waypoint-access-log" in (hop_bench.__doc__ or "")


def _own_world(tmp_path: pathlib.Path) -> list[dict[str, Any]]:
    """The example world on loopback addresses of its own (no clash with other tests)."""
    return inputs.load_objects([conftest.own_world(tmp_path, 17)])


def test_local_stack_runs_and_serves_with_the_log_off(tmp_path: pathlib.Path) -> None:
    objects = _own_world(tmp_path)
    with stack_mod.LocalStack(
        objects, "demo", "waypoint", rego_modules=[up.EXAMPLE_REGO], access_log=False
    ) as local:
        assert not local.options.access_log
        assert list(access_log_paths(local.rendered.bootstrap)) == []
        client: hbone_client.SyncHboneClient = local.client("demo", "sleep")
        try:
            response = client.request(
                local.authority("demo", "echo", 80), "GET", "/", (), host="echo.demo"
            )
        finally:
            client.close()
        assert response.status == 200
