"""The generated waypoint pod runs: its ConfigMap volumes and certificate volume, laid out as the
kubelet would mount them, start a real Envoy that reports ready on the readiness probe."""

from __future__ import annotations

import pathlib
import urllib.request
from typing import Any

from tests import conftest
from tests.fakekube import world
from waypoint import pki
from waypoint.envoy import options as envoy_options
from waypoint.kube import gateway, render
from waypoint.runtime import envoy_process


def _mount(volume: dict[str, Any], config_map: dict[str, Any], target: pathlib.Path) -> None:
    """Write a configMap volume's items into ``target``, as the kubelet does."""
    target.mkdir(parents=True, exist_ok=True)
    items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in config_map["data"]]
    for item in items:
        (target / item["path"]).write_text(config_map["data"][item["key"]])


def test_generated_pod_layout_starts_a_ready_envoy(tmp_path: pathlib.Path) -> None:
    cert_dir = tmp_path / "var/run/secrets/workload-spiffe-credentials"
    options = envoy_options.BootstrapOptions(
        cert_dir=str(cert_dir),
        bind="127.0.0.1",
        hbone_port=conftest.free_port(),
        admin_port=conftest.free_port(),
        readiness_port=conftest.free_port(),
        stats_port=conftest.free_port(),
    )
    objs = render.render_kubernetes(
        [*world.mesh("demo"), gateway.generate_gateway("demo")], options
    )
    by_kind = {obj["kind"]: obj for obj in objs}
    config_map = by_kind["ConfigMap"]
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    envoy = pod["containers"][0]
    paths: dict[str, pathlib.Path] = {}
    for mount in envoy["volumeMounts"]:
        volume = volumes[mount["name"]]
        # Mount paths under the cert dir are already inside tmp_path; others move there.
        target = pathlib.Path(mount["mountPath"])
        if not target.is_relative_to(tmp_path):
            target = tmp_path / mount["mountPath"].lstrip("/")
        paths[mount["name"]] = target
        if "configMap" in volume:
            _mount(volume, config_map, target)
    # The certificate volume (csi-driver-spiffe in a cluster) holds the pod's SVID.
    authority = pki.CertificateAuthority.create("cluster.local")
    authority.issue_workload("demo", "waypoint").write(paths["spiffe-credentials"])

    config_arg = envoy["args"][envoy["args"].index("-c") + 1]
    config_path = paths["config"] / pathlib.Path(config_arg).name
    with envoy_process.running(config_path, options.admin_port, tmp_path / "envoy.log"):
        probe = envoy["readinessProbe"]["httpGet"]
        url = f"http://127.0.0.1:{probe['port']}{probe['path']}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
