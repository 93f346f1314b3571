"""SPIFFE IDs (``waypoint.names``), the dev CA (``waypoint.local.ca``), and the runtime
half (``waypoint.pki``): leaf certificates, cert-dir files and TLS contexts."""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import ssl
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.x509 import oid

from waypoint import names, pki
from waypoint.local import ca as dev_ca

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> dev_ca.CertificateAuthority:
    return dev_ca.CertificateAuthority.create("cluster.local")


def test_spiffe_id_round_trip() -> None:
    value = names.spiffe_id("cluster.local", "bookinfo", "reviews")
    assert value == "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    assert names.parse_spiffe_id(value) == ("cluster.local", "bookinfo", "reviews")


@pytest.mark.parametrize(
    "bad",
    [
        "http://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://Bad Domain/ns/a/sa/b",
        "spiffe:///ns/a/sa/b",
    ],
)
def test_parse_spiffe_id_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="SPIFFE"):
        names.parse_spiffe_id(bad)


def test_spiffe_id_rejects_bad_segments() -> None:
    with pytest.raises(ValueError, match="namespace 'a/b'"):
        names.spiffe_id("cluster.local", "a/b", "sa")
    with pytest.raises(ValueError, match="trust domain"):
        dev_ca.CertificateAuthority.create("UPPER CASE")


def test_translating_loads_no_tls_library() -> None:
    # SPIFFE IDs are plain strings: the pure translation must not pay for cryptography or ssl.
    probe = (
        "import sys, waypoint.translate; "
        "print(sorted(m for m in ('cryptography', 'ssl', 'waypoint.pki', 'waypoint.local')"
        " if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_root_is_a_self_signed_ca(ca: dev_ca.CertificateAuthority) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign


def test_leaf_carries_the_spiffe_id_and_usages(ca: dev_ca.CertificateAuthority) -> None:
    ident = ca.issue_workload(
        "default", "sleep", dns_names=["sleep.default"], ip_addresses=["127.0.0.9"]
    )
    cert = ident.certificate
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/sleep"
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["sleep.default"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.9")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {oid.ExtendedKeyUsageOID.SERVER_AUTH, oid.ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert pki.spiffe_id_of(cert) == ident.spiffe_id


def test_chain_validates_against_root(ca: dev_ca.CertificateAuthority) -> None:
    ident = ca.issue_workload("default", "sleep")
    assert (
        pki.verify(ident.certificate, ca.certificate)
        == "spiffe://cluster.local/ns/default/sa/sleep"
    )
    assert ident.verify() == ident.spiffe_id


def test_chain_from_another_ca_does_not_validate(ca: dev_ca.CertificateAuthority) -> None:
    other = dev_ca.CertificateAuthority.create("cluster.local")
    stranger = other.issue_workload("default", "sleep")
    with pytest.raises(pki.VerificationError, match="does not verify"):
        pki.verify(stranger.certificate, ca.certificate)


def test_expired_leaf_fails_verification() -> None:
    ca = dev_ca.CertificateAuthority.create(not_before=NOW - datetime.timedelta(days=1))
    expired = ca.issue(
        names.spiffe_id("cluster.local", "default", "old"),
        not_after=NOW - datetime.timedelta(hours=1),
    )
    assert expired.certificate.not_valid_after_utc < NOW
    with pytest.raises(pki.VerificationError, match="not valid at validation time"):
        expired.verify()
    # The same certificate was fine while it was valid.
    assert expired.verify(at=NOW - datetime.timedelta(hours=1, minutes=30))


def test_other_trust_domains_are_easy_to_make(ca: dev_ca.CertificateAuthority) -> None:
    foreign = ca.issue(names.spiffe_id("evil.example", "default", "sleep"))
    assert names.trust_domain_of(foreign.verify()) == "evil.example"
    other = dev_ca.CertificateAuthority.create("other.local").issue_workload("ns", "sa")
    assert other.spiffe_id == "spiffe://other.local/ns/ns/sa/sa"


def test_write_lays_out_a_kubernetes_style_cert_dir(
    ca: dev_ca.CertificateAuthority, tmp_path: pathlib.Path
) -> None:
    ident = ca.issue_workload("default", "waypoint")
    ident.write(tmp_path)
    for name in ("cert-chain.pem", "key.pem", "root-cert.pem"):
        assert os.readlink(tmp_path / name) == f"..data/{name}"
    versioned = tmp_path / os.readlink(tmp_path / "..data")
    assert versioned.is_dir()
    assert (tmp_path / "key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (versioned / "key.pem").stat().st_mode & 0o077 == 0
    loaded = pki.load_identity(tmp_path)
    assert loaded.spiffe_id == ident.spiffe_id
    assert loaded.certificate == ident.certificate
    assert loaded.root == ca.certificate
    assert loaded.verify() == ident.spiffe_id


def test_rotation_swaps_data_dir_and_removes_the_old_one(
    ca: dev_ca.CertificateAuthority, tmp_path: pathlib.Path
) -> None:
    ca.issue_workload("default", "waypoint").write(tmp_path)
    first = os.readlink(tmp_path / "..data")
    rotated = ca.issue_workload("default", "waypoint")
    rotated.write(tmp_path)
    second = os.readlink(tmp_path / "..data")
    assert first != second
    assert not (tmp_path / first).exists()
    assert pki.load_identity(tmp_path).certificate == rotated.certificate
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["..data", second, "cert-chain.pem", "key.pem", "root-cert.pem"]
    )


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> ssl.SSLObject:
    """Run a TLS handshake in memory; return the server's view or raise ssl.SSLError."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    done = {"server": False, "client": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return server
    raise AssertionError("handshake did not finish")


def test_ssl_contexts_do_mutual_tls_13_with_h2(ca: dev_ca.CertificateAuthority) -> None:
    server_id, client_id = (
        ca.issue_workload("istio-system", "ztunnel"),
        ca.issue_workload("ns", "app"),
    )
    server = _handshake(server_id.ssl_context(server=True), client_id.ssl_context(server=False))
    assert server.version() == "TLSv1.3"
    assert server.selected_alpn_protocol() == "h2"
    assert pki.peer_spiffe_id(server) == client_id.spiffe_id


def test_handshake_rejects_expired_and_foreign_clients(ca: dev_ca.CertificateAuthority) -> None:
    server_ctx = ca.issue_workload("istio-system", "ztunnel").ssl_context(server=True)
    expired = ca.issue(
        names.spiffe_id("cluster.local", "ns", "old"), not_after=NOW - datetime.timedelta(hours=1)
    )
    foreign = (
        dev_ca.CertificateAuthority.create().issue_workload("ns", "app").with_root(ca.certificate)
    )
    for client in (expired, foreign):
        with pytest.raises(ssl.SSLError):
            _handshake(server_ctx, client.ssl_context(server=False))
    with pytest.raises(ssl.SSLError, match=r"CERTIFICATE_REQUIRED|PEER_DID_NOT_RETURN"):
        _handshake(server_ctx, pki.trusting_context(ca.root_pem))
