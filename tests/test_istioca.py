"""``waypoint istio-certs`` against a stand-in for istiod's CA over real gRPC and TLS.

The stand-in (tests/istioca_server.py) follows istiod's contract; these tests check what the
component sends (token, cluster ID, CSR identity), what it accepts (identity, key, chain),
that failures never touch the last good certificate, and the renewal schedule.
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import random
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509

from tests import istioca_server
from waypoint import cli, pki
from waypoint.istioca import agent, client

TD = "cluster.local"
TOKEN = "projected-token-of-ns1-waypoint"
SPIFFE_ID = f"spiffe://{TD}/ns/ns1/sa/waypoint"


@dataclasses.dataclass
class Setup:
    mesh: istioca_server.MeshCa
    server: istioca_server.TestCaServer
    tmp: pathlib.Path
    config: agent.AgentConfig

    @property
    def cert_dir(self) -> pathlib.Path:
        return pathlib.Path(self.config.cert_dir)

    def files(self) -> dict[str, bytes]:
        return {name: (self.cert_dir / name).read_bytes() for name in pki.FILE_NAMES}


def make_config(
    tmp: pathlib.Path, mesh: istioca_server.MeshCa, address: str, **ca: object
) -> agent.AgentConfig:
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "root-cert.pem").write_bytes(mesh.root_pem)
    fields: dict[str, object] = {
        "address": address,
        "root_cert_path": str(tmp / "root-cert.pem"),
        "token_path": str(tmp / "token"),
        "server_name": istioca_server.ISTIOD_DNS,
        "timeout_seconds": 5.0,
        **ca,
    }
    return agent.AgentConfig(
        ca=client.CaConfig(**fields),  # type: ignore[arg-type]
        spiffe_id=SPIFFE_ID,
        cert_dir=str(tmp / "certs"),
        initial_backoff=0.05,
        max_backoff=0.2,
    )


@pytest.fixture(scope="module")
def mesh() -> istioca_server.MeshCa:
    return istioca_server.MeshCa(TD)


@pytest.fixture
def setup(mesh: istioca_server.MeshCa, tmp_path: pathlib.Path) -> Iterator[Setup]:
    with istioca_server.TestCaServer(mesh, {TOKEN: ("ns1", "waypoint")}) as server:
        yield Setup(mesh, server, tmp_path, make_config(tmp_path, mesh, server.address))


def test_obtains_a_certificate_for_its_identity(setup: Setup) -> None:
    issued = agent.Agent(setup.config).obtain(timeout=10)
    (call,) = setup.server.calls
    # What istiod sees: the projected token as bearer, the cluster ID, a CSR for our ID.
    assert call.authorization == f"Bearer {TOKEN}"
    assert call.cluster_id == client.DEFAULT_CLUSTER_ID
    assert call.csr_ids == (SPIFFE_ID,)
    assert call.validity_duration == client.DEFAULT_VALIDITY_SECONDS
    # What Envoy gets: leaf + intermediate, the key, the configured root bundle.
    files = setup.files()
    chain = x509.load_pem_x509_certificates(files[pki.CERT_CHAIN_FILE])
    assert [c.serial_number for c in chain] == [
        call.serial,
        setup.mesh.intermediate.serial_number,
    ]
    assert files[pki.ROOT_CERT_FILE] == setup.mesh.root_pem
    assert pki.verify(chain[0], setup.mesh.root.certificate, chain[1:]) == SPIFFE_ID
    lifetime = chain[0].not_valid_after_utc - chain[0].not_valid_before_utc
    assert lifetime == datetime.timedelta(hours=24)
    assert issued.leaf.serial_number == call.serial
    # Written Kubernetes-style: each file a link through the atomically swapped ..data.
    assert (setup.cert_dir / pki.DATA_LINK).is_symlink()
    assert (setup.cert_dir / pki.KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_requested_validity_is_what_is_issued(setup: Setup) -> None:
    config = dataclasses.replace(
        setup.config, ca=dataclasses.replace(setup.config.ca, validity_seconds=600)
    )
    issued = agent.Agent(config).obtain(timeout=10)
    assert issued.not_after - issued.not_before == datetime.timedelta(seconds=600)


def test_a_wrong_token_is_refused_with_istiods_message(setup: Setup) -> None:
    (setup.tmp / "token").write_text("someone-elses-token")
    with pytest.raises(client.CaUnavailable, match="UNAUTHENTICATED: request authenticate"):
        client.request_certificate(setup.config.ca, SPIFFE_ID)


def test_an_unknown_cluster_id_is_refused(setup: Setup) -> None:
    ca = dataclasses.replace(setup.config.ca, cluster_id="other-cluster")
    with pytest.raises(client.CaUnavailable, match="UNAUTHENTICATED"):
        client.request_certificate(ca, SPIFFE_ID)
    assert setup.server.calls[0].cluster_id == "other-cluster"


def test_a_missing_token_is_a_clear_error(setup: Setup) -> None:
    (setup.tmp / "token").unlink()
    with pytest.raises(client.CaUnavailable, match="cannot read the service-account token"):
        client.request_certificate(setup.config.ca, SPIFFE_ID)
    assert setup.server.calls == []


def test_a_certificate_for_another_identity_is_refused(setup: Setup) -> None:
    worker = agent.Agent(setup.config)
    good = worker.obtain(timeout=10)
    before = setup.files()
    setup.server.issue_as = f"spiffe://{TD}/ns/ns1/sa/intruder"
    with pytest.raises(client.CertificateRejected, match="not the expected"):
        worker.refresh()
    assert setup.files() == before  # the last good certificate stays
    assert worker.current == good
    assert "sa/intruder" in worker.last_error


def test_a_ca_server_outside_the_mesh_root_is_not_trusted(
    mesh: istioca_server.MeshCa, tmp_path: pathlib.Path
) -> None:
    rogue = istioca_server.MeshCa(TD)
    tokens = {TOKEN: ("ns1", "waypoint")}
    with istioca_server.TestCaServer(mesh, tokens, serving_ca=rogue) as server:
        config = make_config(tmp_path, mesh, server.address)
        with pytest.raises(client.CaUnavailable, match="UNAVAILABLE"):
            client.request_certificate(config.ca, SPIFFE_ID)
        assert server.calls == []  # the token never left the client


def test_a_chain_to_another_root_is_refused(setup: Setup) -> None:
    key, _csr = client.new_key_and_csr(SPIFFE_ID)
    rogue = istioca_server.MeshCa(TD)
    leaf = rogue.sign(key.public_key(), SPIFFE_ID, datetime.timedelta(hours=1))
    pem = [istioca_server._pem(leaf), istioca_server._pem(rogue.intermediate)]
    roots = [setup.mesh.root.certificate]
    with pytest.raises(client.CertificateRejected, match="does not chain"):
        client.verify_response(pem, key, roots, setup.mesh.root_pem, SPIFFE_ID)


def test_a_certificate_for_another_key_is_refused(setup: Setup) -> None:
    key, _csr = client.new_key_and_csr(SPIFFE_ID)
    other, _ = client.new_key_and_csr(SPIFFE_ID)
    leaf = setup.mesh.sign(other.public_key(), SPIFFE_ID, datetime.timedelta(hours=1))
    pem = [istioca_server._pem(leaf)]
    with pytest.raises(client.CertificateRejected, match="not for the key"):
        client.verify_response(pem, key, [setup.mesh.root.certificate], b"", SPIFFE_ID)


def test_ca_errors_keep_the_last_good_certificate_and_back_off(setup: Setup) -> None:
    worker = agent.Agent(setup.config)
    good = worker.obtain(timeout=10)
    before = setup.files()
    failed_before = agent.REQUESTS.labels(result="unavailable")._value.get()
    # Unreachable: the CA is gone.
    port = setup.server.port
    setup.server.stop()
    worker.renew_time = worker.clock()  # due now
    delays = [worker.step() for _ in range(4)]
    assert delays == [0.05, 0.1, 0.2, 0.2]  # doubling, capped at max_backoff
    assert setup.files() == before
    assert worker.current == good
    assert worker.failures == 4
    assert "UNAVAILABLE" in worker.last_error
    assert agent.REQUESTS.labels(result="unavailable")._value.get() == failed_before + 4
    assert agent.FAILURES._value.get() == 4
    # Back on the same port, refusing: still kept.
    server = istioca_server.TestCaServer(setup.mesh, {TOKEN: ("ns1", "waypoint")}, port=port)
    with server:
        server.fail_with = grpc.StatusCode.INTERNAL
        worker.step()
        assert setup.files() == before
        assert "INTERNAL: test CA told to fail" in worker.last_error
        # Healthy again: the next step renews and schedules the next renewal.
        server.fail_with = None
        delay = worker.step()
    assert delay == setup.config.root_check_interval  # renewal is hours away
    assert worker.renew_time is not None
    until = (worker.renew_time - worker.clock()).total_seconds()
    assert 11.5 * 3600 < until < 12.5 * 3600  # half of 24 h, ± the 1% jitter
    assert worker.failures == 0
    assert worker.current is not None
    assert worker.current.leaf != good.leaf
    assert setup.files() != before


def test_the_sidecar_reuses_the_init_containers_certificate(setup: Setup) -> None:
    agent.Agent(setup.config).obtain(timeout=10)
    sidecar = agent.Agent(setup.config)
    reused = sidecar.load_existing()
    assert reused is not None
    assert not sidecar.due()
    assert len(setup.server.calls) == 1
    # A root rotation in the ConfigMap makes the old certificate unusable: ask again.
    (setup.tmp / "root-cert.pem").write_bytes(istioca_server.MeshCa(TD).root_pem)
    assert agent.Agent(setup.config).load_existing() is None


def test_a_new_trust_bundle_reaches_envoy_between_renewals(setup: Setup) -> None:
    worker = agent.Agent(setup.config)
    worker.obtain(timeout=10)
    leaf_pem = setup.files()[pki.CERT_CHAIN_FILE]
    # Root rotation, step 1: istiod publishes old + new root; the certificate still chains.
    new_root = istioca_server.MeshCa(TD).root_pem
    bundle = setup.mesh.root_pem + new_root
    (setup.tmp / "root-cert.pem").write_bytes(bundle)
    assert worker.step() == setup.config.root_check_interval
    assert setup.files()[pki.ROOT_CERT_FILE] == bundle
    assert setup.files()[pki.CERT_CHAIN_FILE] == leaf_pem  # same certificate, no CA call
    assert len(setup.server.calls) == 1
    # Step 2: only the new root; our certificate no longer chains, so renew at once. This
    # test CA is still under the old root, so the call fails and the last good files stay.
    (setup.tmp / "root-cert.pem").write_bytes(new_root)
    before = setup.files()
    worker.step()
    assert worker.failures == 1
    assert "UNAVAILABLE" in worker.last_error  # istiod's old certificate is not trusted now
    assert setup.files() == before


def test_renewal_is_at_half_life_with_istios_jitter() -> None:
    created = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    expiry = created + datetime.timedelta(hours=24)
    assert agent.renew_at(created, expiry, 0.5) == created + datetime.timedelta(hours=12)
    assert agent.renew_at(created, expiry, 0.51) == created + datetime.timedelta(hours=24 * 0.49)
    assert agent.renew_at(created, expiry, 2.0) == created  # clamped, as Istio does
    assert agent.backoff(1, 1.0, 300.0) == 1.0
    assert agent.backoff(5, 1.0, 300.0) == 16.0
    assert agent.backoff(20, 1.0, 300.0) == 300.0


def test_jitter_stays_within_one_percent(setup: Setup) -> None:
    worker = agent.Agent(setup.config, rng=random.Random(7))
    issued = worker.obtain(timeout=10)
    lifetime = issued.not_after - issued.not_before
    assert worker.renew_time is not None
    left = issued.not_after - worker.renew_time
    assert 0.49 * lifetime <= left <= 0.51 * lifetime


def _cli_args(setup: Setup, *extra: str) -> list[str]:
    ca = setup.config.ca
    return [
        "istio-certs",
        "--ca-address",
        ca.address,
        "--ca-server-name",
        ca.server_name,
        "--root-cert",
        ca.root_cert_path,
        "--token",
        ca.token_path,
        "--namespace",
        "ns1",
        "--service-account",
        "waypoint",
        "--cert-dir",
        setup.config.cert_dir,
        *extra,
    ]


def test_cli_once_writes_the_certificate(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(_cli_args(setup, "--once")) == 0
    assert SPIFFE_ID in capsys.readouterr().out
    assert pki.load_identity(setup.cert_dir).spiffe_id == SPIFFE_ID


def test_cli_once_fails_clearly_when_the_ca_refuses(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    (setup.tmp / "token").write_text("stale")
    assert cli.main(_cli_args(setup, "--once", "--timeout", "0.3", "--max-backoff", "0.1")) == 1
    err = capsys.readouterr().err
    assert "no certificate from istiod's CA" in err
    assert "UNAUTHENTICATED" in err
    assert not setup.cert_dir.exists()


def test_cli_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["istio-certs", "--help"])
    text = capsys.readouterr().out
    assert "--once" in text
    assert "``" not in text


def test_cli_needs_the_pods_identity(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["istio-certs", "--once", "--namespace", "", "--service-account", ""])
    assert code == 2
    assert "namespace and service account are required" in capsys.readouterr().err


def test_an_unwritable_cert_dir_is_a_failure_not_a_crash(setup: Setup) -> None:
    setup.cert_dir.write_text("a file where the directory should be")
    worker = agent.Agent(setup.config)
    assert worker.step() == setup.config.initial_backoff
    assert worker.failures == 1
    assert "cannot write" in worker.last_error
    assert worker.current is None
