"""A real Envoy serving the certificate ``waypoint istio-certs`` obtained from the test CA.

The waypoint bootstrap reads its certificate through file SDS from the component's
``--cert-dir``. Our HBONE client connects before and after the component renews at
half-life, and sees the same Envoy process present the new certificate: same SPIFFE ID,
new serial, each one the CA issued, each valid and chained to the mesh root. The waypoint
also presents it upstream: an HBONE terminator for a mesh workload sees the waypoint's ID.
"""

from __future__ import annotations

import datetime
import pathlib
import threading
import time

from cryptography import x509

from tests import conftest, istioca_server
from tests import test_istioca as support
from waypoint import model, names, pki
from waypoint.envoy import bootstrap
from waypoint.istioca import agent, client
from waypoint.local import echo
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import terminator as hbone_terminator
from waypoint.runtime import envoy_process, sds

PLAIN = names.authority("10.96.0.10", 80)
MESH = names.authority("10.96.0.11", 80)
LIFETIME = 20  # seconds: the component renews after about 10


def _destination(name: str, vip: str) -> tuple[model.Destination, str]:
    cluster = names.outbound_cluster(names.HostRef("svc", "ns1", name), 80)
    route = model.Route(
        name=names.route_name("HTTPRoute", "ns1", name, "all", 0),
        match=model.RouteMatch(path=model.PathMatch(model.MatchType.PREFIX, "/")),
        backends=(model.WeightedBackend(cluster, 1),),
    )
    kind, http = model.DestinationKind.SERVICE, model.Protocol.HTTP
    return model.Destination(kind, "ns1", name, 80, (vip,), http, cluster, (route,)), cluster


def _waypoint(plain_port: int, mesh_port: int) -> model.Waypoint:
    """``plain`` is reached directly; ``mesh`` (ambient) through HBONE with our certificate."""
    plain, plain_cluster = _destination("plain", PLAIN.split(":")[0])
    mesh, mesh_cluster = _destination("mesh", MESH.split(":")[0])
    mesh_endpoint = model.Endpoint("127.0.0.1", mesh_port, hbone=True, service_account="mesh")
    http = model.Protocol.HTTP
    clusters = (
        model.Cluster(mesh_cluster, http, (mesh_endpoint,), "ns1", "mesh", 80),
        model.Cluster(
            plain_cluster, http, (model.Endpoint("127.0.0.1", plain_port),), "ns1", "plain", 80
        ),
    )
    identity = model.WaypointIdentity(support.TD, "ns1", "waypoint")
    return model.Waypoint(
        "ns1",
        "waypoint",
        model.TrafficType.SERVICE,
        identity,
        None,
        (mesh, plain),
        tuple(sorted(clusters, key=lambda c: c.name)),
    )


def _mesh_identity(mesh: istioca_server.MeshCa, namespace: str, account: str) -> pki.Identity:
    """A workload of the same mesh (the waypoint's peers need certificates from its root)."""
    spiffe_id = names.spiffe_id(support.TD, namespace, account)
    key, _csr = client.new_key_and_csr(spiffe_id)
    leaf = mesh.sign(key.public_key(), spiffe_id, datetime.timedelta(hours=1))
    return pki.Identity(spiffe_id, leaf, key, (mesh.intermediate,), mesh.root.certificate)


def presented_certificate(mesh: istioca_server.MeshCa, port: int) -> x509.Certificate:
    """The certificate a waypoint Envoy on ``port`` presents to a mesh client (TLS + h2)."""
    context = _mesh_identity(mesh, "sleep", "sleep").ssl_context(server=False)
    with hbone_client.SyncHboneClient(("127.0.0.1", port), context, timeout=10.0) as hbone:
        hbone.connect()
        assert hbone.peer_certificate is not None
        return hbone.peer_certificate


def _probe(identity: pki.Identity, port: int, authority: str = PLAIN) -> x509.Certificate:
    """One fresh HBONE connection through the waypoint; the certificate Envoy presented."""
    with hbone_client.SyncHboneClient(
        ("127.0.0.1", port),
        identity.ssl_context(server=False),
        expected_server_id=support.SPIFFE_ID,
        timeout=10.0,
    ) as hbone:
        response = hbone.request(authority, path="/hello")
        assert response.status == 200, response.text
        assert hbone.peer_id == support.SPIFFE_ID
        assert hbone.peer_certificate is not None
        return hbone.peer_certificate


def test_envoy_presents_the_istio_ca_certificate_and_its_renewal(
    tmp_path: pathlib.Path, envoy: conftest.EnvoyStarter
) -> None:
    mesh = istioca_server.MeshCa(support.TD)
    plain = echo.EchoServer("plain", "ns1", http_ports=(0,))
    workload = echo.EchoServer("mesh", "ns1", http_ports=(0,))
    upstream_hbone_port = conftest.free_port()
    terminator = hbone_terminator.HboneTerminator(
        _mesh_identity(mesh, "ns1", "mesh").ssl_context(server=True),
        ("127.0.0.1", upstream_hbone_port),
    )
    servers = [plain, workload, terminator]
    for server in servers:
        server.start_background()
    with istioca_server.TestCaServer(mesh, {support.TOKEN: ("ns1", "waypoint")}) as ca:
        config = support.make_config(tmp_path, mesh, ca.address, validity_seconds=LIFETIME)
        worker = agent.Agent(config)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        try:
            first = worker.obtain(timeout=10)  # what the init container does
            opts = conftest.loopback_options(
                trust_domain=support.TD,
                cert_dir=config.cert_dir,
                sds_dir=str(tmp_path / "sds"),
                hbone_port=conftest.free_port(),
                upstream_hbone_port=upstream_hbone_port,
            )
            sds.write_files(opts)
            waypoint = _waypoint(plain.http_ports[0], workload.http_ports[0])
            text = bootstrap.to_yaml(bootstrap.build(waypoint, opts))
            envoy_process.validate_text(text)
            proxy = envoy(text, opts.admin_port)
            sleep = _mesh_identity(mesh, "sleep", "sleep")

            before = _probe(sleep, opts.hbone_port)
            assert before.serial_number == first.leaf.serial_number == ca.issued()[0].serial
            assert pki.spiffe_id_of(before) == support.SPIFFE_ID
            # Upstream too: the mesh workload's HBONE terminator authenticated our waypoint.
            _probe(sleep, opts.hbone_port, MESH)
            assert terminator.peers == [support.SPIFFE_ID]

            thread.start()  # the sidecar takes over and renews at half-life
            deadline = time.monotonic() + LIFETIME * 2
            after = before
            while after.serial_number == before.serial_number and time.monotonic() < deadline:
                time.sleep(0.2)
                after = _probe(sleep, opts.hbone_port)
            _probe(sleep, opts.hbone_port, MESH)
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(10)
            for server in reversed(servers):
                server.stop_background()
    issued = ca.issued()
    assert len(issued) >= 2, "the component did not renew"
    assert after.serial_number == issued[-1].serial != before.serial_number
    assert pki.spiffe_id_of(after) == support.SPIFFE_ID
    assert terminator.peers[-1] == support.SPIFFE_ID
    # Renewed near half-life: the first certificate was still valid for about half its life.
    renewed_left = before.not_valid_after_utc - after.not_valid_before_utc
    assert 0.4 * LIFETIME <= renewed_left.total_seconds() <= 0.6 * LIFETIME
    assert proxy.process.poll() is None  # the same Envoy: no restart
