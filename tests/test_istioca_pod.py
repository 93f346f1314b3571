"""The generated certSource-``istio`` pod runs as rendered: its init container's and sidecar's
exact args (only the CA address and the pod's mount roots moved to loopback and a temp dir)
obtain the certificate from the test CA, and the rendered Envoy starts on it and presents it.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from tests import conftest, istioca_server
from tests import test_istioca_envoy as envoy_test
from tests.fakekube import world
from waypoint import names, pki
from waypoint.kube import gateway, render
from waypoint.runtime import envoy_process

TOKEN = "projected-token-of-the-waypoint-pod"


def _moved(path: str, root: pathlib.Path) -> str:
    """A pod path inside ``root`` (paths already inside it stay)."""
    target = pathlib.Path(path)
    return str(target if target.is_relative_to(root) else root / path.lstrip("/"))


def _runnable(container: dict[str, Any], root: pathlib.Path, ca_address: str) -> list[str]:
    """The container's args, with the CA on loopback and pod paths under ``root``."""
    args = list(container["args"])
    for flag in ("--root-cert", "--token", "--cert-dir"):
        index = args.index(flag) + 1
        args[index] = _moved(args[index], root)
    args[args.index("--ca-address") + 1] = ca_address
    # Reached by IP now, so name the host istiod's certificate must carry.
    return [*args, "--ca-server-name", istioca_server.ISTIOD_DNS]


def _pod_env(pod: dict[str, Any]) -> dict[str, str]:
    """The downward-API env the kubelet would give the istio-certs containers."""
    return {
        **os.environ,
        "POD_NAMESPACE": "demo",
        "SERVICE_ACCOUNT": pod["serviceAccountName"],
    }


def _mount_config(pod: dict[str, Any], config_map: dict[str, Any], root: pathlib.Path) -> str:
    """Lay out the Envoy container's ConfigMap volumes; return its -c path."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    envoy = pod["containers"][0]
    for mount in envoy["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        target = pathlib.Path(_moved(mount["mountPath"], root))
        target.mkdir(parents=True, exist_ok=True)
        for item in volume["configMap"]["items"]:
            (target / item["path"]).write_text(config_map["data"][item["key"]])
    return _moved(envoy["args"][envoy["args"].index("-c") + 1], root)


def test_rendered_istio_pod_gets_its_certificate_and_serves_it(tmp_path: pathlib.Path) -> None:
    options = conftest.loopback_options(
        cert_dir=str(tmp_path / "var/run/secrets/workload-spiffe-credentials"),
        hbone_port=conftest.free_port(),
    )
    waypoint_gateway = gateway.generate_gateway("demo")
    waypoint_gateway["metadata"]["annotations"] = {"waypoint.dev/cert-source": "istio"}
    objs = render.render_kubernetes([*world.mesh("demo"), waypoint_gateway], options)
    by_kind = {obj["kind"]: obj for obj in objs}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "istio-certs")
    expected_id = names.spiffe_id("cluster.local", "demo", pod["serviceAccountName"])

    mesh = istioca_server.MeshCa("cluster.local")
    # What the kubelet mounts: the projected token and the istio-ca-root-cert ConfigMap.
    token = pathlib.Path(_moved(init["args"][init["args"].index("--token") + 1], tmp_path))
    token.parent.mkdir(parents=True)
    token.write_text(TOKEN)
    root = pathlib.Path(_moved(init["args"][init["args"].index("--root-cert") + 1], tmp_path))
    root.parent.mkdir(parents=True)
    root.write_bytes(mesh.root_pem)

    tokens = {TOKEN: ("demo", pod["serviceAccountName"])}
    with istioca_server.TestCaServer(mesh, tokens) as ca:
        waypoint_cli = [sys.executable, "-m", "waypoint"]
        done = subprocess.run(
            [*waypoint_cli, *_runnable(init, tmp_path, ca.address)],
            env=_pod_env(pod),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert pki.load_identity(options.cert_dir).spiffe_id == expected_id

        config_path = _mount_config(pod, by_kind["ConfigMap"], tmp_path)
        with envoy_process.running(config_path, options.admin_port, tmp_path / "envoy.log"):
            probe = pod["containers"][0]["readinessProbe"]["httpGet"]
            url = f"http://127.0.0.1:{probe['port']}{probe['path']}"
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
            served = envoy_test.presented_certificate(mesh, options.hbone_port)
        assert pki.spiffe_id_of(served) == expected_id
        assert served.serial_number == ca.issued()[0].serial

        # The sidecar, as rendered: reuses the init container's certificate, serves metrics.
        metrics_port = conftest.free_port()
        args = _runnable(sidecar, tmp_path, ca.address)
        args[args.index("--metrics-port") + 1] = str(metrics_port)
        proc = subprocess.Popen(
            [*waypoint_cli, *args],
            env=_pod_env(pod),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            expiry = _scrape_expiry(metrics_port)
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert len(ca.issued()) == 1  # not due: nothing asked again
        assert expiry == served.not_valid_after_utc.timestamp()


def _scrape_expiry(port: int) -> float:
    """The sidecar's certificate-expiry gauge, once its metrics server answers."""
    name = "waypoint_istio_ca_cert_expiry_timestamp_seconds "
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                text: str = resp.read().decode()
            for line in text.splitlines():
                if line.startswith(name):
                    return float(line.split()[1])
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no expiry gauge on port {port}")
        time.sleep(0.2)
