"""The cluster commands (apply, delete, list, status, generate, controller) and their errors,
run against the fake API server through a kubeconfig, as a user would run them."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest
import yaml

from tests import conftest
from tests.fakekube import server, world
from waypoint import cli, version
from waypoint.controller import apiclient, manager, reconcile
from waypoint.kube import gateway
from waypoint.runtime import envoy_process

GW_API = "gateway.networking.k8s.io/v1"
PATIENCE = 30.0


@pytest.fixture
def kubeconfig(fake: server.FakeKube, tmp_path: pathlib.Path) -> str:
    return str(fake.write_kubeconfig(tmp_path / "kubeconfig"))


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(kubeconfig: str, capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*argv: str, connect: bool = True) -> tuple[int, str, str]:
        extra = ["--kubeconfig", kubeconfig] if connect else []
        code = cli.main([*argv, *extra])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


# --- generate --------------------------------------------------------------------------------


def test_generate_prints_the_gateway(run: Run) -> None:
    code, out, _ = run(
        "generate", "-n", "demo", "--for", "all", "--service-account", "reviews", connect=False
    )
    assert code == 0
    assert yaml.safe_load(out) == gateway.generate_gateway("demo", "waypoint", "all", "reviews")
    code, out, _ = run("generate", "-n", "demo", "--min-replicas", "2", "-o", "json", connect=False)
    assert json.loads(out)["metadata"]["annotations"] == {"waypoint.dev/min-replicas": "2"}


def test_generate_takes_apply_flags(run: Run) -> None:
    """--enroll-namespace prints the labelled Namespace too; --revision labels istio.io/rev."""
    code, out, _ = run(
        "generate", "-n", "demo", "--enroll-namespace", "--revision", "canary", connect=False
    )
    assert code == 0
    namespace, gw = yaml.safe_load_all(out)
    assert namespace == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "demo", "labels": {"istio.io/use-waypoint": "waypoint"}},
    }
    assert gw["metadata"]["labels"]["istio.io/rev"] == "canary"
    assert gw == gateway.generate_gateway("demo", revision="canary")


def test_generate_rejects_bad_flags(run: Run) -> None:
    code, _, err = run("generate", "--min-replicas", "3", "--max-replicas", "2", connect=False)
    assert code == 1
    assert "error: --max-replicas 2 is below --min-replicas 3" in err
    code, _, err = run("generate", "--name", "Not_Valid", connect=False)
    assert code == 1
    assert "DNS-1035" in err
    with pytest.raises(SystemExit) as info:
        run("generate", "--for", "everything", connect=False)
    assert info.value.code == 2


# --- apply -----------------------------------------------------------------------------------


def test_apply_creates_the_gateway_with_server_side_apply(run: Run, fake: server.FakeKube) -> None:
    code, out, err = run("apply", "-n", "demo", "--service-account", "reviews")
    # The only word on stderr: demo is not in ambient mode (tests/test_cli_istio.py).
    assert code == 0
    assert err.startswith("warning: namespace demo is not enrolled in ambient")
    assert out == "waypoint demo/waypoint applied\n"
    gw = fake.get(GW_API, "Gateway", "demo", "waypoint")
    assert gw is not None
    assert gw["spec"]["gatewayClassName"] == "waypoint"
    assert gw["metadata"]["annotations"]["istio.io/for-service-account"] == "reviews"
    assert [entry["manager"] for entry in gw["metadata"]["managedFields"]] == ["waypoint"]
    assert fake.writes[-1].verb == "PATCH"
    # Applying again is idempotent.
    assert run("apply", "-n", "demo", "--service-account", "reviews")[0] == 0


def test_apply_output_and_dry_run(run: Run, fake: server.FakeKube) -> None:
    code, out, _ = run("apply", "-n", "demo", "--dry-run", "-o", "yaml")
    assert code == 0
    assert yaml.safe_load(out)["spec"]["listeners"][0]["protocol"] == "HBONE"
    assert fake.get(GW_API, "Gateway", "demo", "waypoint") is None
    code, out, _ = run("apply", "-n", "demo", "--name", "east", "-o", "json")
    assert json.loads(out)["metadata"]["uid"]


def test_enroll_namespace_and_overwrite(run: Run, fake: server.FakeKube) -> None:
    code, out, _ = run("apply", "-n", "demo", "--enroll-namespace")
    assert code == 0
    assert "namespace demo labeled with istio.io/use-waypoint=waypoint" in out
    namespace = fake.get("v1", "Namespace", "", "demo")
    assert namespace is not None
    assert namespace["metadata"]["labels"]["istio.io/use-waypoint"] == "waypoint"

    code, _, err = run("apply", "-n", "demo", "--name", "other", "--enroll-namespace")
    assert code == 1
    assert "namespace demo already has istio.io/use-waypoint=waypoint; use --overwrite" in err
    assert fake.get(GW_API, "Gateway", "demo", "other") is None  # nothing half-done

    assert (
        run("apply", "-n", "demo", "--name", "other", "--enroll-namespace", "--overwrite")[0] == 0
    )
    namespace = fake.get("v1", "Namespace", "", "demo")
    assert namespace is not None
    assert namespace["metadata"]["labels"]["istio.io/use-waypoint"] == "other"


def test_apply_errors_name_the_object(run: Run, fake: server.FakeKube) -> None:
    code, _, err = run("apply", "-n", "nowhere")
    assert code == 1
    assert 'namespaces "nowhere" not found' in err
    theirs = gateway.generate_gateway("demo", "edge")
    theirs["spec"]["gatewayClassName"] = "istio"
    fake.seed([theirs])
    code, _, err = run("apply", "-n", "demo", "--name", "edge")
    assert code == 1
    assert "Gateway demo/edge already exists with gatewayClassName 'istio'" in err


def test_missing_gateway_api_crds_say_how_to_install(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.FakeKube(gateway_api=False) as bare:
        bare.seed([world.namespace("demo")])
        config = str(bare.write_kubeconfig(tmp_path / "kubeconfig"))
        for argv in (
            ["apply", "-n", "demo"],
            ["list", "-A"],
            ["delete", "--all", "-n", "demo"],
            ["status", "-n", "demo"],
        ):
            assert cli.main([*argv, "--kubeconfig", config]) == 1
            err = capsys.readouterr().err
            assert "does not serve Gateway (gateway.networking.k8s.io/v1)" in err
            assert "kubectl apply --server-side -f" in err


def test_unreachable_cluster_is_a_clear_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.FakeKube() as gone:
        config = str(gone.write_kubeconfig(tmp_path / "kubeconfig"))
    assert cli.main(["list", "-A", "--kubeconfig", config]) == 1
    assert "error: cannot reach the API server" in capsys.readouterr().err
    assert cli.main(["list", "--kubeconfig", str(tmp_path / "absent")]) == 1
    assert "error: cannot load cluster credentials" in capsys.readouterr().err


def test_apply_wait_until_programmed(
    run: Run, fake: server.FakeKube, tmp_path: pathlib.Path
) -> None:
    stop = threading.Event()
    api = world.connect(fake, tmp_path)
    controller = manager.Controller(api, watch_timeout=5)
    runner = threading.Thread(target=controller.run, args=(stop,))

    def kubelet() -> None:
        while not stop.is_set():
            deployment = fake.get("apps/v1", "Deployment", "demo", "waypoint")
            if deployment is not None:
                world.mark_ready(fake, "demo", "waypoint")
                return
            time.sleep(0.05)

    helper = threading.Thread(target=kubelet)
    runner.start()
    helper.start()
    try:
        code, _, err = run("apply", "-n", "demo", "--wait", "--timeout", "60s")
    finally:
        stop.set()
        helper.join(PATIENCE)
        runner.join(PATIENCE)
        api.close()
    assert code == 0, err
    assert "waypoint demo/waypoint is Programmed" in err


def test_apply_wait_times_out_with_the_reason(run: Run) -> None:
    code, _, err = run("apply", "-n", "demo", "--wait", "--timeout", "0.2s")
    assert code == 1
    assert "waiting for waypoint demo/waypoint: NoStatus: waiting for the controller" in err
    assert "not Programmed after 0.2s" in err


def test_apply_wait_names_what_the_pods_need(
    run: Run, fake: server.FakeKube, tmp_path: pathlib.Path
) -> None:
    """No ready replica (a missing Secret or image, as a kubelet would report): --wait gives
    up naming the Deployment, the image and the certificate Secret to look at."""
    fake.seed([gateway.generate_gateway("demo")])
    api = world.connect(fake, tmp_path)
    try:
        reconcile.Reconciler(api, lambda: reconcile.list_world(api)).reconcile_gateway(
            "demo", "waypoint"
        )
    finally:
        api.close()
    code, _, err = run("apply", "-n", "demo", "--wait", "--timeout", "0.5s")
    assert code == 1
    assert "Pending: waiting for a ready replica of Deployment demo/waypoint" in err
    assert f"image {version.default_image()}" in err
    assert "Secret demo/waypoint-spiffe (certSource secret)" in err


def _gateway_status(fake: server.FakeKube, generation: int, **programmed: str) -> None:
    """Play the controller: the Gateway's conditions, computed from its current labels and
    annotations at ``generation``."""
    live = fake.get(GW_API, "Gateway", "demo", "waypoint")
    assert live is not None
    condition = {"lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}
    accepted = {
        **condition,
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": f"waypoint accepted {gateway.observed_marker(live)}",
    }
    programmed = {**condition, "type": "Programmed", "message": "", **programmed}
    fake.set_status(GW_API, "Gateway", "demo", "waypoint", {"conditions": [accepted, programmed]})


def test_apply_wait_fails_at_once_on_programmed_false(run: Run, fake: server.FakeKube) -> None:
    fake.seed([gateway.generate_gateway("demo")])
    _gateway_status(
        fake,
        1,
        status="False",
        reason="Invalid",
        message="apply HorizontalPodAutoscaler.autoscaling demo/waypoint: 422 denied",
    )
    started = time.monotonic()
    code, _, err = run("apply", "-n", "demo", "--wait", "--timeout", "60s")
    assert code == 1
    assert time.monotonic() - started < PATIENCE  # no waiting out the timeout
    assert (
        "error: waypoint demo/waypoint is not Programmed: Invalid: apply "
        "HorizontalPodAutoscaler.autoscaling demo/waypoint: 422 denied"
    ) in err


def test_apply_wait_ignores_a_stale_programmed(
    run: Run, fake: server.FakeKube, api: apiclient.Cluster
) -> None:
    fake.seed([gateway.generate_gateway("demo")])
    _gateway_status(fake, 1, status="True", reason="Programmed")
    # An annotation-only change (generation stays 1): the status is of the Gateway before it.
    code, _, err = run("apply", "-n", "demo", "--min-replicas", "2", "--wait", "--timeout", "0.3s")
    assert code == 1
    assert "NoStatus: waiting for the controller to observe this version" in err
    assert "not Programmed after 0.3s" in err

    # The controller catches up; then someone changes the spec (generation 2).
    _gateway_status(fake, 1, status="True", reason="Programmed")
    assert run("apply", "-n", "demo", "--min-replicas", "2", "--wait", "--timeout", "5s")[0] == 0
    api.merge_patch(
        apiclient.GATEWAY,
        "demo",
        "waypoint",
        {"spec": {"infrastructure": {"labels": {"team": "a"}}}},
        "someone",
    )
    code, _, err = run("apply", "-n", "demo", "--min-replicas", "2", "--wait", "--timeout", "0.3s")
    assert code == 1
    assert "(generation 2, (metadata " in err
    assert "not Programmed after 0.3s" in err


# --- delete / list / status --------------------------------------------------------------------


def test_delete_only_touches_waypoints(run: Run, fake: server.FakeKube) -> None:
    theirs = gateway.generate_gateway("demo", "edge")
    theirs["spec"]["gatewayClassName"] = "istio"
    fake.seed(
        [theirs, gateway.generate_gateway("demo", "a"), gateway.generate_gateway("demo", "b")]
    )
    code, out, err = run("delete", "-n", "demo", "a", "edge", "missing")
    assert code == 1
    assert out == "waypoint demo/a deleted\n"
    assert "Gateway demo/edge has gatewayClassName 'istio', not a waypoint; left alone" in err
    assert "waypoint demo/missing not found" in err
    assert fake.get(GW_API, "Gateway", "demo", "edge") is not None
    code, out, _ = run("delete", "-n", "demo", "--all")
    assert (code, out) == (0, "waypoint demo/b deleted\n")
    assert fake.get(GW_API, "Gateway", "demo", "edge") is not None
    code, _, err = run("delete", "-n", "demo")
    assert code == 1
    assert "give waypoint NAMEs or --all" in err


def test_list_table(run: Run, fake: server.FakeKube) -> None:
    code, out, _ = run("list", "-n", "demo")
    assert (code, out) == (0, "no waypoints found in namespace demo\n")
    fake.seed([world.namespace("other")])
    run("apply", "-n", "demo", "--service-account", "reviews")
    run("apply", "-n", "other", "--name", "east", "--for", "workload")
    code, out, _ = run("list", "-A")
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "NAMESPACE",
        "FOR",
        "SERVICE-ACCOUNT",
        "REPLICAS",
        "PROGRAMMED",
        "AGE",
    ]
    assert lines[1].split()[:6] == ["waypoint", "demo", "service", "reviews", "0/0", "Unknown"]
    assert lines[2].split()[:6] == ["east", "other", "workload", "-", "0/0", "Unknown"]
    code, out, _ = run("list", "-n", "other")
    assert len(out.splitlines()) == 2


def test_status_shows_conditions_addresses_and_what_is_served(
    run: Run, fake: server.FakeKube, kubeconfig: str
) -> None:
    run("apply", "-n", "demo")
    code, out, _ = run("status", "-n", "demo")
    assert code == 0
    assert "no status yet: is the waypoint controller running?" in out
    with apiclient.Cluster.connect(kubeconfig) as api:
        reconciler = reconcile.Reconciler(api, lambda: reconcile.list_world(api))
        reconciler.reconcile_gateway("demo", "waypoint")
        world.mark_ready(fake, "demo", "waypoint")
        reconciler.reconcile_gateway("demo", "waypoint")
    code, out, _ = run("status", "-n", "demo")
    assert code == 0
    assert "waypoint demo/waypoint  for: service  service account: -" in out
    assert "Programmed  True   Programmed: 1 ready replica(s)" in out
    assert "addresses: 10.96.0." in out
    assert "replicas:  1/1 ready" in out
    assert "services:  demo/echo" in out
    assert "routes:    httproute demo/echo-route" in out


def test_status_says_why_a_scoped_waypoint_serves_nothing(
    run: Run, fake: server.FakeKube, api: apiclient.Cluster
) -> None:
    fake.seed(
        [world.namespace("shop"), world.service("shop", "reviews", "10.96.2.10", "reviews-wp")]
    )
    run("apply", "-n", "shop", "--name", "reviews-wp", "--service-account", "reviews")
    reconcile.Reconciler(api, lambda: reconcile.list_world(api)).reconcile_gateway(
        "shop", "reviews-wp"
    )
    code, out, _ = run("status", "-n", "shop")
    assert code == 0
    assert "service account: reviews" in out
    assert "waypoint.dev/Bound False  ServiceAccountUnknown: serves nothing" in out
    assert "services:  -" in out
    assert (
        "not bound: Service shop/reviews: ServiceAccountUnknown: waypoint shop/reviews-wp: "
        "serves only ServiceAccount reviews, and no pod of the Service is known"
    ) in out


# --- controller --------------------------------------------------------------------------------


def _start_controller(fake: server.FakeKube, kubeconfig: str, *extra: str) -> subprocess.Popen[str]:
    """``waypoint controller --leader-elect`` as a real process against the fake API server."""
    fake.seed([world.namespace("waypoint-system")])
    argv = [sys.executable, "-m", "waypoint", "controller", "--kubeconfig", kubeconfig]
    argv += ["--leader-elect", "--leader-elect-namespace", "waypoint-system", *extra]
    return subprocess.Popen(
        argv, cwd=conftest.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_controller_command_with_leader_election_and_metrics(
    fake: server.FakeKube, kubeconfig: str
) -> None:
    port = conftest.free_port()
    proc = _start_controller(fake, kubeconfig, "--metrics-listen", f"127.0.0.1:{port}")
    try:
        with apiclient.Cluster.connect(kubeconfig) as api:
            api.apply(gateway.generate_gateway("demo"), "waypoint")
        conftest.wait_for(
            lambda: fake.get("apps/v1", "Deployment", "demo", "waypoint") is not None,
            "the Deployment",
        )
        lease = fake.get(
            "coordination.k8s.io/v1", "Lease", "waypoint-system", "waypoint-controller"
        )
        assert lease is not None
        assert lease["spec"]["holderIdentity"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert "waypoint_controller_leader 1.0" in response.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, output
    lease = fake.get("coordination.k8s.io/v1", "Lease", "waypoint-system", "waypoint-controller")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == ""  # released on shutdown


def test_controller_command_serves_xds_and_writes_xds_bootstraps(
    fake: server.FakeKube, kubeconfig: str
) -> None:
    port = conftest.free_port()
    proc = _start_controller(fake, kubeconfig, "--xds-listen", f"127.0.0.1:{port}")
    try:
        with apiclient.Cluster.connect(kubeconfig) as api:
            api.apply(gateway.generate_gateway("demo"), "waypoint")
        conftest.wait_for(
            lambda: fake.get("v1", "ConfigMap", "demo", "waypoint-envoy-config") is not None,
            "the ConfigMap",
        )
        config_map = fake.get("v1", "ConfigMap", "demo", "waypoint-envoy-config")
        assert config_map is not None
        boot = yaml.safe_load(config_map["data"]["envoy.yaml"])
        (xds_cluster,) = boot["static_resources"]["clusters"]
        address = xds_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        # The default: the controller's xDS Service in its namespace, on the listen port.
        assert address["address"]["socket_address"] == {
            "address": "waypoint-controller-xds.waypoint-system.svc",
            "port_value": port,
        }
        assert boot["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
        envoy_process.validate_text(config_map["data"]["envoy.yaml"])
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, output
    assert f"serving xDS on 127.0.0.1:{port}" in output


def test_controller_command_rejects_a_bad_xds_listen_address(
    run: Run, fake: server.FakeKube
) -> None:
    code, _, err = run("controller", "--xds-listen", "nowhere")
    assert code == 1
    assert "--xds-listen nowhere" in err
