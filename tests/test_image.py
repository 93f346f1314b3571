"""The waypoint-mesh image under a real container runtime (podman), not a simulation.

- The image builds from the Containerfile on a local Debian base, runs read-only as a
  non-root user, and every role's command answers ``--version``.
- The Deployment and ConfigMaps the controller generates for ``examples/local/world.yaml``,
  with the certificate Secret a cert-manager Certificate would write for it, run under
  ``podman kube play --network host`` (changed only where podman differs, see
  ``for_podman``): the Envoy
  answers its readiness port, the extauthz sidecar reports SERVING on grpc.health.v1, and
  HBONE requests through the pod reach echo backends on the host (and the pod's extauthz
  decides them).
- The controller runs from the image with in-cluster configuration against the fake API
  server over TLS, and programs the Gateway that ``waypoint apply --enroll-namespace --wait``
  creates (the CLI on the host, over TLS too).

If podman cannot run, these tests fail and say why; they never skip. Select or deselect them
with ``-m podman`` / ``-m 'not podman'``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import pathlib
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import podman
from tests.fakekube import server, world
from tests.fakekube import tls as fake_tls
from waypoint import pki, version, wellknown
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, render, settings
from waypoint.local import stack as stack_mod
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import errors as hbone_errors
from waypoint.runtime import ports

pytestmark = [pytest.mark.podman, pytest.mark.timeout(1500)]

REPO = podman.REPO
EXAMPLES = REPO / "examples"
PATIENCE = 60.0  # a deadline for progress on a busy 2-core machine, not a speed check
NS, GATEWAY = "demo", "waypoint"
# How the generated certificate volume projects a cert-manager Secret to Envoy's file names.
SECRET_ITEMS = [
    {"key": "tls.crt", "path": "cert-chain.pem"},
    {"key": "tls.key", "path": "key.pem"},
    {"key": "ca.crt", "path": "root-cert.pem"},
]


def wait_for(check: Callable[[], bool], what: str, logs: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def image() -> str:
    """The image of this checkout (built once per source change, then cached)."""
    why = podman.unavailable()
    if why is not None:
        pytest.fail(f"the container tests need a working podman: {why}")
    try:
        return podman.image()
    except podman.PodmanError as exc:
        pytest.fail(f"building the waypoint-mesh image failed: {exc}")


# --- the image ------------------------------------------------------------------------------


def test_image_runs_each_role_read_only_as_non_root(image: str) -> None:
    config = json.loads(podman.podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "65532:65532"
    expected = {
        ("waypoint", "--version"): f"waypoint {version.package_version()}",
        ("extauthz", "--version"): f"extauthz {version.package_version()}",
        ("envoy", "--version"): "/1.40.",
    }
    for command, output in expected.items():
        proc = podman.podman(
            "run", "--rm", "--read-only", "--network", "none", image, *command, timeout=120
        )
        assert output in proc.stdout, (command, proc.stdout, proc.stderr)


# --- the generated pod under podman kube play ------------------------------------------------


def _world() -> list[dict[str, Any]]:
    """examples/local with its policies and the Rego ConfigMap the ExtAuthzPolicy needs.

    The endpoint addresses move to a loopback /24 of their own so that echo backends bound
    here never meet those of another test running ``waypoint up`` on the same machine.
    """
    octet = 100 + ports.free_port() % 150
    text = (EXAMPLES / "local" / "world.yaml").read_text().replace("127.0.10.", f"127.0.{octet}.")
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    objects += [
        doc for doc in yaml.safe_load_all((EXAMPLES / "local" / "policies.yaml").read_text()) if doc
    ]
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{GATEWAY}-extauthz-policy", "namespace": NS},
            "data": {"policy.rego": (EXAMPLES / "extauthz" / "policy.rego").read_text()},
        }
    )
    return objects


def for_podman(generated: list[dict[str, Any]], secret: dict[str, Any]) -> list[dict[str, Any]]:
    """The controller's Deployment and ConfigMaps plus the certificate Secret, changed only
    where podman 4.3's ``kube play`` differs from a kubelet:

    - it refuses containerPorts together with host networking: they are dropped;
    - it cannot mount a Secret volume: without ``optional`` it crashes, with it the Secret is
      ignored even when it exists (containers/podman#16636, fixed in 4.4). The Secret is
      played as a ConfigMap of the same name and files, and the volume reads that;
    - it mounts a ConfigMap whole, ignoring ``items`` (one named volume per ConfigMap): the
      certificate files are keyed by the names the Secret volume's items project them to;
    - it runs no Service, ServiceAccount, autoscaler or disruption budget: those are left out.
    """
    kept = [copy.deepcopy(o) for o in generated if o["kind"] in ("ConfigMap", "Deployment")]
    for obj in kept:
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod["containers"]:
            container.pop("ports", None)
        for volume in pod["volumes"]:
            if "secret" in volume:
                source = volume.pop("secret")
                volume["configMap"] = {"name": source["secretName"]}
    files = {
        item["path"]: base64.b64decode(secret["data"][item["key"]]).decode()
        for item in SECRET_ITEMS
    }
    as_config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": dict(secret["metadata"]),
        "data": files,
    }
    return [as_config_map, *kept]


def spiffe_secret(name: str, identity: pki.Identity) -> dict[str, Any]:
    """The certificate Secret as a cert-manager Certificate writes it (tls.crt, tls.key, ca.crt)."""
    pem = {
        "tls.crt": identity.cert_chain_pem,
        "tls.key": identity.key_pem,
        "ca.crt": identity.root_pem,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": "kubernetes.io/tls",
        "data": {key: base64.b64encode(value).decode() for key, value in pem.items()},
    }


@pytest.fixture
def host_ports(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Free loopback ports for what the pod would bind in its own network namespace.

    Under ``--network host`` the pod shares the host's ports, so the extauthz ports the
    controller fixes (one pod, one netns, in Kubernetes) are moved to free ones; everything
    binds 127.0.0.1.
    """
    chosen = {
        name: ports.free_port()
        for name in ("hbone", "admin", "readiness", "stats", "extauthz", "extauthz_health")
    }
    monkeypatch.setattr(constants, "EXTAUTHZ_LISTEN", f"127.0.0.1:{chosen['extauthz']}")
    monkeypatch.setattr(constants, "EXTAUTHZ_HEALTH_PORT", chosen["extauthz_health"])
    return chosen


@pytest.fixture
def played(tmp_path: pathlib.Path) -> Iterator[Callable[[list[dict[str, Any]]], str]]:
    """``podman kube play --network host`` of some objects; torn down (pods, volumes) after."""
    manifests: list[pathlib.Path] = []

    def play(objects: list[dict[str, Any]]) -> str:
        path = tmp_path / f"play-{len(manifests)}.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        _play_down(path)  # what an interrupted earlier run left
        manifests.append(path)
        podman.podman("kube", "play", "--network", "host", str(path), timeout=300)
        return str(path)

    yield play
    for path in manifests:
        _play_down(path)


def _play_down(path: pathlib.Path) -> None:
    """Remove what ``kube play`` made: pods, then the volumes and secrets ``kube down``
    leaves behind in podman 4.3 (a named volume per ConfigMap and emptyDir)."""
    podman.podman("kube", "down", str(path), check=False, timeout=120)
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc["kind"] == "ConfigMap":
            podman.podman("volume", "rm", "--force", doc["metadata"]["name"], check=False)
        elif doc["kind"] == "Deployment":
            for volume in doc["spec"]["template"]["spec"]["volumes"]:
                if "emptyDir" in volume:
                    podman.podman("volume", "rm", "--force", volume["name"], check=False)


def pod_containers(deployment: str) -> list[str]:
    """The containers of the Deployment's pod; kube play names the pod <deployment>-pod-<i>."""
    listing = podman.podman(
        "ps", "--all", "--pod", "--format", "{{.Names}} {{.PodName}}", check=False
    )
    names = []
    for line in listing.stdout.splitlines():
        name, _, pod = line.partition(" ")
        if pod.startswith(f"{deployment}-pod") and not name.endswith("-infra"):
            names.append(name)
    return names


def pod_logs(deployment: str) -> Callable[[], str]:
    def logs() -> str:
        text = []
        for name in pod_containers(deployment):
            proc = podman.podman("logs", "--tail", "40", name, check=False)
            text.append(f"--- {name}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        return "\n".join(text)

    return logs


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_generated_pod_runs_under_podman(
    image: str,
    host_ports: dict[str, int],
    played: Callable[[list[dict[str, Any]]], str],
) -> None:
    world = _world()
    rego = EXAMPLES / "extauthz" / "policy.rego"
    with stack_mod.LocalStack(world, NS, GATEWAY, rego_modules=[rego]) as stack:
        # The local stack gives the echo backends, their HBONE terminators and the dev CA;
        # the waypoint under test is the pod, on ports of its own.
        options = envoy_options.BootstrapOptions(
            trust_domain=stack.trust_domain,
            bind="127.0.0.1",
            hbone_port=host_ports["hbone"],
            upstream_hbone_port=stack.options.upstream_hbone_port,
            admin_port=host_ports["admin"],
            readiness_port=host_ports["readiness"],
            stats_port=host_ports["stats"],
        )
        defaults = settings.Settings(envoy_image=image, extauthz_image=image)
        generated = render.render_kubernetes(world, options, defaults=defaults)
        kinds = sorted({o["kind"] for o in generated})
        assert "Deployment" in kinds, kinds
        (deployment,) = [o for o in generated if o["kind"] == "Deployment"]
        pod = deployment["spec"]["template"]["spec"]
        assert [c["image"] for c in pod["containers"]] == [image, image]
        (cert_volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert cert_volume["secret"]["items"] == SECRET_ITEMS
        secret = spiffe_secret(
            cert_volume["secret"]["secretName"], stack.ca.issue(stack.waypoint_id)
        )
        logs = pod_logs(deployment["metadata"]["name"])
        for obj in generated:
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-extauthz"):
                # Its health port listens on all interfaces for the kubelet; here, loopback.
                text = obj["data"][constants.EXTAUTHZ_CONFIG_KEY]
                obj["data"][constants.EXTAUTHZ_CONFIG_KEY] = text.replace("0.0.0.0:", "127.0.0.1:")
        # The user's Rego ConfigMap is theirs, not generated: it is played beside the rest.
        rego_config_map = [o for o in world if o["kind"] == "ConfigMap"]
        played(for_podman(generated, secret) + rego_config_map)

        ready = f"http://127.0.0.1:{host_ports['readiness']}/healthz/ready"
        wait_for(lambda: _http_ok(ready), f"the pod's Envoy to answer {ready}", logs)
        extauthz = f"127.0.0.1:{host_ports['extauthz']}"
        wait_for(lambda: _serving(extauthz), f"extauthz SERVING on {extauthz}", logs)
        # Both containers run as the generated securityContext says: uid 1337, read-only root.
        names = pod_containers(deployment["metadata"]["name"])
        assert len(names) == 2, names
        for name in names:
            inspected = json.loads(podman.podman("inspect", name).stdout)[0]
            assert inspected["HostConfig"]["ReadonlyRootfs"] is True, name
            assert inspected["Config"]["User"].split(":")[0] == "1337", name

        client = stack.identity("client", "sleep").ssl_context(server=False)
        with _hbone(stack, client, host_ports["hbone"]) as hbone, _explained(logs):
            plain = hbone.request(stack.authority(NS, "echo-v2", 80), path="/hello", host="echo")
            assert plain.status == 200, (plain.status, plain.text, logs())
            assert "echo-v2" in plain.text
            # echo-v1 is behind the ExtAuthzPolicy: the pod's extauthz runs the Rego.
            public = hbone.request(stack.authority(NS, "echo-v1", 80), path="/public/x")
            assert public.status == 200, (public.status, public.text, logs())
            denied = hbone.request(stack.authority(NS, "echo-v1", 80), path="/private")
            assert denied.status == 403, (denied.status, denied.text, logs())
        # The requests show in the waypoint's Prometheus stats, as docs/install.md says.
        url = f"http://127.0.0.1:{host_ports['stats']}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as response:
            stats = response.read().decode()
        # Envoy's default tag extraction files the cluster outbound|80||echo-v2.demo.svc.
        # cluster.local as envoy_cluster_demo_svc_cluster_local_*{envoy_cluster_name=...}.
        wanted = 'upstream_rq_total{envoy_cluster_name="outbound|80||echo-v2"}'
        counted = [line for line in stats.splitlines() if wanted in line]
        assert len(counted) == 1, "\n".join(x for x in stats.splitlines() if "upstream_rq" in x)
        assert float(counted[0].rsplit(" ", 1)[1]) >= 1, counted


@contextlib.contextmanager
def _explained(logs: Callable[[], str]) -> Iterator[None]:
    """A failed HBONE exchange fails the test with the pod's logs attached."""
    try:
        yield
    except hbone_errors.HboneError as exc:
        pytest.fail(f"HBONE through the pod failed: {exc}\n{logs()}")


def _hbone(
    stack: stack_mod.LocalStack, context: ssl.SSLContext, port: int
) -> hbone_client.SyncHboneClient:
    """An HBONE client to the pod's Envoy, checking it presents the waypoint's SPIFFE ID."""
    return hbone_client.SyncHboneClient(
        ("127.0.0.1", port),
        context,
        expected_server_id=stack.waypoint_id,
        expected_trust_domain=stack.trust_domain,
    )


# --- the controller from the image, in-cluster ----------------------------------------------


@pytest.fixture
def tls_fake(tmp_path: pathlib.Path) -> Iterator[tuple[server.FakeKube, fake_tls.Served]]:
    """The fake API server on TLS, seeded with the GatewayClass and a mesh namespace."""
    fake = server.FakeKube(bookmark_interval=0.2)
    served = fake_tls.enable(fake, tmp_path / "apiserver")
    with fake:
        # What `kubectl apply -k manifests/base` creates and the controller needs to exist.
        fake.seed([world.namespace("waypoint-system"), world.gateway_class(), *world.mesh(NS)])
        yield fake, served


@pytest.fixture
def container(image: str) -> Iterator[Callable[..., str]]:
    """``podman run -d`` with the image; every container started is removed after the test."""
    started: list[str] = []

    def run(*args: str) -> str:
        name = f"waypoint-test-{ports.free_port()}"
        started.append(name)
        podman.podman("run", "--detach", "--rm", "--name", name, *args, timeout=120)
        return name

    yield run
    for name in started:
        podman.podman("rm", "--force", "--time", "2", name, check=False, timeout=300)


def _programmed(fake: server.FakeKube) -> bool:
    gw = fake.get(world.GW_API, "Gateway", NS, GATEWAY) or {}
    conditions = (gw.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in conditions)


def test_controller_runs_in_cluster_from_the_image(
    image: str,
    tmp_path: pathlib.Path,
    tls_fake: tuple[server.FakeKube, fake_tls.Served],
    container: Callable[..., str],
) -> None:
    fake, served = tls_fake
    account = fake_tls.service_account_dir(served, tmp_path / "serviceaccount", "waypoint-system")
    tmp_path.chmod(0o755)  # the container's non-root user reads the mount below it
    metrics = ports.free_port()
    name = container(
        "--network", "host",
        "--read-only",
        "--user", "65532:65532",
        "--volume", f"{account}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
        "--env", f"KUBERNETES_SERVICE_HOST={served.host}",
        "--env", f"KUBERNETES_SERVICE_PORT={served.port}",
        "--env", "POD_NAMESPACE=waypoint-system",
        image,
        "waypoint", "controller",
        "--leader-elect",
        f"--metrics-listen=127.0.0.1:{metrics}",
        f"--image={image}",
    )  # fmt: skip

    def logs() -> str:
        proc = podman.podman("logs", "--tail", "60", name, check=False)
        return proc.stdout[-4000:] + proc.stderr[-4000:]

    # As docs/install.md step 5: the CLI, over TLS with a kubeconfig, waits for Programmed.
    kubeconfig = fake_tls.write_kubeconfig(served, tmp_path / "kubeconfig")
    apply = subprocess.Popen(
        [sys.executable, "-m", "waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait",
         "--timeout", "90s", "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    deployment = ("apps/v1", "Deployment", NS, GATEWAY)
    try:
        wait_for(lambda: fake.get(*deployment) is not None, "the waypoint Deployment", logs)
    except BaseException:
        apply.kill()
        raise
    live = fake.get(*deployment)
    assert live is not None
    images = [c["image"] for c in live["spec"]["template"]["spec"]["containers"]]
    assert images == [image]
    assert fake.get("v1", "ConfigMap", NS, f"{GATEWAY}-envoy-config") is not None
    assert fake.get("coordination.k8s.io/v1", "Lease", "waypoint-system", "waypoint-controller")
    # Play the kubelet: one replica ready, so the controller marks the Gateway Programmed.
    world.mark_ready(fake, NS, GATEWAY)
    wait_for(lambda: _programmed(fake), "the Gateway to be Programmed", logs)
    output, _ = apply.communicate(timeout=PATIENCE)
    assert apply.returncode == 0, output
    namespace = fake.get("v1", "Namespace", "", NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"][wellknown.USE_WAYPOINT] == GATEWAY
    assert _http_ok(f"http://127.0.0.1:{metrics}/metrics")
