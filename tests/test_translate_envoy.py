"""Every waypoint the translate goldens produce builds into a config ``envoy --mode validate``
accepts: bad input is stopped in translation, never passed on to break Envoy's config."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from waypoint import translate
from waypoint.envoy import bootstrap, options
from waypoint.local import ca as dev_ca
from waypoint.runtime import envoy_process, sds

CASES = pathlib.Path(__file__).parent / "golden" / "translate"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "in.yaml").exists())


@pytest.fixture(scope="module")
def local_options(tmp_path_factory: pytest.TempPathFactory) -> options.BootstrapOptions:
    root = tmp_path_factory.mktemp("translate-certs")
    ca = dev_ca.CertificateAuthority.create("cluster.local")
    ca.issue_workload("ns1", "waypoint").write(root / "certs")
    opts = options.BootstrapOptions(cert_dir=str(root / "certs"), sds_dir=str(root / "sds"))
    sds.write_files(opts)
    return opts


@pytest.mark.parametrize("case", CASE_NAMES)
def test_translated_waypoints_pass_envoy_validate(
    case: str, local_options: options.BootstrapOptions
) -> None:
    objects = [d for d in yaml.safe_load_all((CASES / case / "in.yaml").read_text()) if d]
    waypoints = translate.translate(objects).waypoints
    assert waypoints
    for waypoint in waypoints:
        envoy_process.validate_text(bootstrap.to_yaml(bootstrap.build(waypoint, local_options)))
