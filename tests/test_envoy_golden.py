"""Golden tests: IR (YAML) → Envoy bootstrap (YAML), and every output passes envoy validate."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from tests import golden
from waypoint import model
from waypoint.envoy import bootstrap, options, secrets
from waypoint.local import ca as dev_ca
from waypoint.model import serde
from waypoint.runtime import envoy_process, sds

CASES_DIR = pathlib.Path(__file__).parent / "golden" / "envoy"
CASES = sorted(path.name for path in CASES_DIR.iterdir() if (path / "in.yaml").exists())
CERT_DIR = "/etc/waypoint/certs"
SDS_DIR = "/etc/waypoint/sds"
OPTIONS = options.BootstrapOptions(cert_dir=CERT_DIR, sds_dir=SDS_DIR)


def load_case(case: str) -> model.Waypoint:
    data = yaml.safe_load((CASES_DIR / case / "in.yaml").read_text())
    waypoint: model.Waypoint = serde.from_data(model.Waypoint, data)
    return waypoint


def render(case: str) -> str:
    return bootstrap.to_yaml(bootstrap.build(load_case(case), OPTIONS))


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    golden.check(CASES_DIR / case / "out.yaml", render(case))


@pytest.mark.parametrize("case", CASES)
def test_input_round_trips(case: str) -> None:
    data = yaml.safe_load((CASES_DIR / case / "in.yaml").read_text())
    assert serde.to_data(load_case(case)) == data


@pytest.fixture(scope="module")
def cert_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A real cert dir and its SDS files, to stand in for the goldens' absolute paths."""
    root = tmp_path_factory.mktemp("golden-certs")
    ca = dev_ca.CertificateAuthority.create("cluster.local")
    ca.issue_workload("ns1", "waypoint").write(root / "certs")
    local = options.BootstrapOptions(cert_dir=str(root / "certs"), sds_dir=str(root / "sds"))
    sds.write_files(local)
    return local.cert_dir, local.sds_dir


@pytest.mark.parametrize("case", CASES)
def test_golden_output_passes_envoy_validate(case: str, cert_dirs: tuple[str, str]) -> None:
    text = (CASES_DIR / case / "out.yaml").read_text()
    # Behind ztunnel's sandwich the waypoint holds no certificate at all.
    assert (SDS_DIR in text) == (load_case(case).proxy_port is None)
    cert_dir, sds_dir = cert_dirs
    envoy_process.validate_text(text.replace(SDS_DIR, sds_dir).replace(CERT_DIR, cert_dir))


def test_output_is_deterministic() -> None:
    for case in CASES:
        assert render(case) == render(case)


def test_sds_files_point_at_the_cert_dir() -> None:
    files = secrets.sds_files(OPTIONS)
    assert sorted(files) == ["cert.yaml", "root.yaml"]
    cert = yaml.safe_load(files["cert.yaml"])["resources"][0]
    assert cert["name"] == secrets.CERT_SECRET
    assert cert["tls_certificate"]["certificate_chain"]["filename"] == f"{CERT_DIR}/cert-chain.pem"
    assert cert["tls_certificate"]["watched_directory"]["path"] == CERT_DIR
    root = yaml.safe_load(files["root.yaml"])["resources"][0]
    assert root["validation_context"]["trusted_ca"]["filename"] == f"{CERT_DIR}/root-cert.pem"
