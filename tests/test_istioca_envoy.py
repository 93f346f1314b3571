"""A real Envoy serving the certificate ``waypoint istio-certs`` obtained from the test CA.

The waypoint bootstrap reads its certificate through file SDS from the component's
``--cert-dir``. Our HBONE client connects before and after the component renews at
half-life, and sees the same Envoy process present the new certificate: same SPIFFE ID,
new serial, each one the CA issued, each valid and chained to the mesh root.
"""

from __future__ import annotations

import datetime
import pathlib
import threading
import time

from cryptography import x509

from tests import conftest, istioca_server
from tests import test_istioca as support
from waypoint import echo, model, names, pki
from waypoint.envoy import bootstrap, options, secrets
from waypoint.hbone import client as hbone_client
from waypoint.istioca import agent, client
from waypoint.runtime import envoy_process

VIP = "10.96.0.10"
AUTHORITY = names.authority(VIP, 80)
LIFETIME = 20  # seconds: the component renews after about 10


def _waypoint(backend_port: int) -> model.Waypoint:
    cluster = names.outbound_cluster(names.HostRef("svc", "ns1", "echo"), 80)
    route = model.Route(
        name=names.route_name("HTTPRoute", "ns1", "echo", "all", 0),
        match=model.RouteMatch(path=model.PathMatch(model.MatchType.PREFIX, "/")),
        backends=(model.WeightedBackend(cluster, 1),),
    )
    destination = model.Destination(
        model.DestinationKind.SERVICE,
        "ns1",
        "echo",
        80,
        (VIP,),
        model.Protocol.HTTP,
        cluster,
        (route,),
    )
    backend = model.Cluster(
        cluster,
        model.Protocol.HTTP,
        (model.Endpoint("127.0.0.1", backend_port),),
        "ns1",
        "echo",
        80,
    )
    return model.Waypoint(
        "ns1",
        "waypoint",
        model.TrafficType.SERVICE,
        model.WaypointIdentity(support.TD, "ns1", "waypoint"),
        None,
        (destination,),
        (backend,),
    )


def _client_identity(mesh: istioca_server.MeshCa) -> pki.Identity:
    """A client in the same mesh (Envoy requires a client certificate from its root)."""
    sleep = pki.spiffe_id(support.TD, "sleep", "sleep")
    key, _csr = client.new_key_and_csr(sleep)
    leaf = mesh.sign(key.public_key(), sleep, datetime.timedelta(hours=1))
    return pki.Identity(sleep, leaf, key, (mesh.intermediate,), mesh.root.certificate)


def presented_certificate(mesh: istioca_server.MeshCa, port: int) -> x509.Certificate:
    """The certificate a waypoint Envoy on ``port`` presents to a mesh client (TLS + h2)."""
    with hbone_client.SyncHboneClient(
        ("127.0.0.1", port), _client_identity(mesh).ssl_context(server=False), timeout=10.0
    ) as hbone:
        hbone.connect()
        assert hbone.peer_certificate is not None
        return hbone.peer_certificate


def _probe(identity: pki.Identity, port: int) -> x509.Certificate:
    """One fresh HBONE connection through the waypoint; the certificate Envoy presented."""
    with hbone_client.SyncHboneClient(
        ("127.0.0.1", port),
        identity.ssl_context(server=False),
        expected_server_id=support.SPIFFE_ID,
        timeout=10.0,
    ) as hbone:
        response = hbone.request(AUTHORITY, path="/hello")
        assert response.status == 200, response.text
        assert echo.parse_echo(response.body).hostname == "echo"
        assert hbone.peer_id == support.SPIFFE_ID
        assert hbone.peer_certificate is not None
        return hbone.peer_certificate


def test_envoy_presents_the_istio_ca_certificate_and_its_renewal(
    tmp_path: pathlib.Path, envoy: conftest.EnvoyStarter
) -> None:
    mesh = istioca_server.MeshCa(support.TD)
    backend = echo.EchoServer("echo", "ns1", http_ports=(0,))
    backend.start_background()
    with istioca_server.TestCaServer(mesh, {support.TOKEN: ("ns1", "waypoint")}) as ca:
        config = support.make_config(tmp_path, mesh, ca.address, validity_seconds=LIFETIME)
        worker = agent.Agent(config)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        try:
            first = worker.obtain(timeout=10)  # what the init container does
            opts = options.BootstrapOptions(
                trust_domain=support.TD,
                cert_dir=config.cert_dir,
                sds_dir=str(tmp_path / "sds"),
                bind="127.0.0.1",
                hbone_port=conftest.free_port(),
                admin_port=conftest.free_port(),
                readiness_port=conftest.free_port(),
                stats_port=conftest.free_port(),
            )
            secrets.write_sds_files(opts)
            text = bootstrap.to_yaml(bootstrap.build(_waypoint(backend.http_ports[0]), opts))
            envoy_process.validate_text(text)
            proxy = envoy(text, opts.admin_port)
            identity = _client_identity(mesh)

            before = _probe(identity, opts.hbone_port)
            assert before.serial_number == first.leaf.serial_number == ca.issued()[0].serial
            assert pki.spiffe_id_of(before) == support.SPIFFE_ID

            thread.start()  # the sidecar takes over and renews at half-life
            deadline = time.monotonic() + LIFETIME * 2
            after = before
            while after.serial_number == before.serial_number and time.monotonic() < deadline:
                time.sleep(0.2)
                after = _probe(identity, opts.hbone_port)
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(10)
            backend.stop_background()
    issued = ca.issued()
    assert len(issued) >= 2, "the component did not renew"
    assert after.serial_number == issued[-1].serial != before.serial_number
    assert pki.spiffe_id_of(after) == support.SPIFFE_ID
    # Renewed near half-life: the first certificate was still valid for about half its life.
    renewed_left = before.not_valid_after_utc - after.not_valid_before_utc
    assert 0.4 * LIFETIME <= renewed_left.total_seconds() <= 0.6 * LIFETIME
    assert proxy.process.poll() is None  # the same Envoy: no restart
