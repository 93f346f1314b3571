"""The generated waypoint pod runs: its ConfigMap volumes and certificate volume, laid out as the
kubelet would mount them, start a real Envoy that reports ready on the readiness probe."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time
import urllib.request
from typing import Any

from tests import conftest
from tests.fakekube import world
from waypoint.envoy import options as envoy_options
from waypoint.kube import gateway, render
from waypoint.local import ca as dev_ca
from waypoint.runtime import envoy_process


def _mount(volume: dict[str, Any], config_map: dict[str, Any], target: pathlib.Path) -> None:
    """Write a configMap volume's items into ``target``, as the kubelet does."""
    target.mkdir(parents=True, exist_ok=True)
    items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in config_map["data"]]
    for item in items:
        (target / item["path"]).write_text(config_map["data"][item["key"]])


def test_generated_pod_layout_starts_a_ready_envoy(tmp_path: pathlib.Path) -> None:
    cert_dir = tmp_path / "var/run/secrets/workload-spiffe-credentials"
    options = conftest.loopback_options(
        cert_dir=str(cert_dir),
        hbone_port=conftest.free_port(),
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
    authority = dev_ca.CertificateAuthority.create("cluster.local")
    authority.issue_workload("demo", "waypoint").write(paths["spiffe-credentials"])

    config_arg = envoy["args"][envoy["args"].index("-c") + 1]
    config_path = paths["config"] / pathlib.Path(config_arg).name
    with envoy_process.running(config_path, options.admin_port, tmp_path / "envoy.log"):
        probe = envoy["readinessProbe"]["httpGet"]
        url = f"http://127.0.0.1:{probe['port']}{probe['path']}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200


REGO = """package envoy.authz

import rego.v1

default allow := false

allow if input.source_principal != ""
"""


def test_generated_extauthz_sidecar_starts_and_reports_ready(tmp_path: pathlib.Path) -> None:
    """With an ExtAuthzPolicy the pod gains the extauthz container: its generated config and
    the user's Rego, mounted as the kubelet would, start the real extauthz, whose readiness
    probe answers. Only addresses move to loopback ports and paths under ``tmp_path``."""
    policy = {
        "apiVersion": "policy.waypoint.dev/v1alpha1",
        "kind": "ExtAuthzPolicy",
        "metadata": {"name": "echo-authz", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "decision": "envoy/authz/allow",
        },
    }
    rego = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "waypoint-extauthz-policy", "namespace": "demo"},
        "data": {"policy.rego": REGO},
    }
    objs = render.render_kubernetes(
        [*world.mesh("demo"), gateway.generate_gateway("demo"), policy, rego],
        envoy_options.BootstrapOptions(),
    )
    config_maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    config_maps[rego["metadata"]["name"]] = rego  # type: ignore[index]
    pod = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    sidecar = next(c for c in pod["containers"] if c["name"] == "extauthz")
    for mount in sidecar["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            target = tmp_path / mount["mountPath"].lstrip("/")
            _mount(volume, config_maps[volume["configMap"]["name"]], target)
    config_arg = sidecar["args"][sidecar["args"].index("--config") + 1]
    config_path = tmp_path / config_arg.lstrip("/")
    probe = sidecar["readinessProbe"]["httpGet"]
    health = conftest.free_port()
    text = config_path.read_text()
    text = text.replace("/etc/", f"{tmp_path}/etc/")
    text = text.replace(f"0.0.0.0:{probe['port']}", f"127.0.0.1:{health}")
    text = text.replace("127.0.0.1:9191", f"127.0.0.1:{conftest.free_port()}")
    config_path.write_text(text)

    log = (tmp_path / "extauthz.log").open("w")
    command = [str(pathlib.Path(sys.executable).parent / sidecar["command"][0]), *sidecar["args"]]
    command[command.index(config_arg)] = str(config_path)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30  # start-up deadline on a busy machine
        while True:
            try:
                url = f"http://127.0.0.1:{health}{probe['path']}"
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "extauthz.log").read_text()
                assert time.monotonic() < deadline, "extauthz never became ready"
                time.sleep(0.1)
        live = sidecar["livenessProbe"]["httpGet"]["path"]
        with urllib.request.urlopen(f"http://127.0.0.1:{health}{live}", timeout=5) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
