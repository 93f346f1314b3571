"""The local world the harness loads, path by path, with no cluster and on loopback only.

One :class:`~waypoint.local.stack.LocalStack` runs ``examples/local/world.yaml``: echo pods on
127.0.10.x, an HBONE terminator per mesh pod, and a real Envoy waypoint rendered from the YAML.
For the authorization paths a second waypoint Envoy is rendered by the same pipeline from
that world plus ``loadtests/authz-world.yaml`` (an ExtAuthzPolicy on the waypoint and a
RequestAuthentication for the demo issuer). It shares the stack's certificates and
terminators, has its own ports, and its extauthz address points at a server process of ours,
swapped per path: extauthz on the embedded engine, extauthz on the OPA REST path (against the
OPA test double), or the allow-all floor. The stack itself keeps the world without policies,
so its in-process extauthz sidecar never starts: ours must be a process of its own, to be
metered and to keep it off the backends' event loop. A plain Envoy HTTP proxy hop to the same pod is the baseline the waypoint hop
is compared with. Every measured server is its own process.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from loadtests import authz, envoyconf, procs
from waypoint import pipeline, policy
from waypoint.envoy import options as options_mod
from waypoint.local import stack as stack_mod
from waypoint.runtime import envoy_process, inputs

REPO = authz.REPO
WORLD = REPO / "examples" / "local" / "world.yaml"
AUTHZ_WORLD = pathlib.Path(__file__).resolve().parent / "authz-world.yaml"
NAMESPACE, WAYPOINT, SERVICE, SERVICE_PORT = "demo", "waypoint", "echo", 80
POD_V1 = "echo-v1-5d8f7c9b4-x2k7q"
CLIENT = (NAMESPACE, "loadgen")  # the load generator's workload identity


@dataclasses.dataclass(frozen=True)
class PathDef:
    """One measured path: how locust reaches it and what sits behind."""

    name: str
    title: str
    user: str  # DirectUser | HboneUser | GrpcUser
    authz: str = ""  # "" | "embedded" | "opa" | "floor": the server behind the waypoint
    routed: bool = False


PATHS: dict[str, PathDef] = {
    p.name: p
    for p in (
        PathDef("direct", "1. direct to the backend (HTTP/1.1)", "DirectUser"),
        PathDef("l4", "HBONE to the pod's terminator, no waypoint (ambient L4)", "HboneUser"),
        PathDef("envoy", "plain Envoy HTTP proxy hop (baseline)", "DirectUser"),
        PathDef(
            "waypoint", "2. waypoint: HBONE in, L7 routes, HBONE out", "HboneUser", routed=True
        ),
        PathDef(
            "waypoint-floor",
            "waypoint + allow-all Python gRPC ext_authz (floor)",
            "HboneUser",
            authz="floor",
            routed=True,
        ),
        PathDef(
            "waypoint-authz",
            "3. waypoint + extauthz (RS256 JWT + embedded Rego)",
            "HboneUser",
            authz="embedded",
            routed=True,
        ),
        PathDef(
            "waypoint-opa",
            "4. waypoint + extauthz on the OPA REST path (OPA test double)",
            "HboneUser",
            authz="opa",
            routed=True,
        ),
        PathDef("authz-grpc", "extauthz Check over gRPC, no Envoy", "GrpcUser", authz="embedded"),
    )
}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where locust sends one path's load, and which processes to meter meanwhile."""

    path: PathDef
    target: str
    authority: str = ""
    server_id: str = ""
    metered: Mapping[str, int] = dataclasses.field(default_factory=dict)  # role -> pid


class RigError(RuntimeError):
    """The world could not be set up for a path."""


def _objects(with_authz: bool) -> list[Mapping[str, Any]]:
    files = [WORLD, AUTHZ_WORLD] if with_authz else [WORLD]
    return list(inputs.load_objects(files))


class Rig:
    """Start once, then :meth:`prepare` each path in turn; :meth:`stop` always."""

    def __init__(self, workdir: pathlib.Path, log: Callable[[str], None] = print) -> None:
        self.workdir = workdir
        self.log = log
        self.stack: stack_mod.LocalStack | None = None
        self.proxy: envoy_process.EnvoyProcess | None = None
        self.proxy_port = 0
        self.authz_kind = ""
        self.authz_children: list[procs.Child] = []
        self.authz_rendered: pipeline.Rendered | None = None
        self.authz_options: options_mod.BootstrapOptions | None = None
        self.authz_proxy: envoy_process.EnvoyProcess | None = None
        self.cert_dir = workdir / "client-cert"
        self.extauthz_address = f"127.0.0.1:{procs.free_port()}"

    def start(self, need_proxy: bool) -> None:
        self.log("starting the local world: echo pods, HBONE terminators, Envoy waypoint")
        self.stack = stack_mod.LocalStack(
            _objects(False), NAMESPACE, WAYPOINT, workdir=self.workdir / "stack"
        ).start()
        self.stack.identity(*CLIENT).write(self.cert_dir)
        if need_proxy:
            self._start_proxy()

    def _start_proxy(self) -> None:
        upstream = (self.running.pod_address(NAMESPACE, POD_V1), 8080)
        self.proxy_port = procs.free_port()
        admin = procs.free_port()
        doc = envoyconf.bootstrap([envoyconf.Hop("proxy", self.proxy_port, upstream)], admin)
        config = self.workdir / "proxy-envoy.yaml"
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.proxy = _run_envoy(config, admin, self.workdir / "proxy-envoy.log")

    @property
    def running(self) -> stack_mod.LocalStack:
        if self.stack is None:
            raise RigError("the rig is not started")
        return self.stack

    def stop(self) -> None:
        self._stop_authz()
        for proxy in (self.authz_proxy, self.proxy):
            if proxy is not None:
                proxy.stop()
        self.authz_proxy = self.proxy = None
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    # -- per path ----------------------------------------------------------------------

    def prepare(self, path: PathDef) -> Target:
        stack = self.running
        self._authz(path.authz)
        metered = {f"authz:{c.name}": c.pid for c in self.authz_children}
        if path.name == "direct":
            return Target(path, f"http://{stack.pod_address(NAMESPACE, POD_V1)}:8080")
        if path.name == "envoy":
            if self.proxy is None:
                raise RigError("the envoy path needs the plain proxy: start(need_proxy=True)")
            return Target(
                path,
                f"http://127.0.0.1:{self.proxy_port}",
                metered={"envoy": self.proxy.process.pid},
            )
        if path.name == "l4":
            authority = f"{stack.pod_address(NAMESPACE, POD_V1)}:8080"
            (host, port), server_id = stack.hop(authority)
            return Target(path, f"{host}:{port}", authority, server_id)
        if path.user == "GrpcUser":
            return Target(path, self.extauthz_address, metered=metered)
        proxy, port = stack.proxy, stack.options.hbone_port
        if path.authz:
            proxy, port = self._authz_proxy()
        return Target(
            path,
            f"{stack.bind}:{port}",
            stack.authority(NAMESPACE, SERVICE, SERVICE_PORT),
            stack.waypoint_id,
            metered={"envoy": proxy.process.pid, **metered},
        )

    def _authz_world(self) -> pipeline.Rendered:
        """The waypoint of the world with policies, on ports of its own."""
        if self.authz_rendered is None:
            stack = self.running
            options = dataclasses.replace(
                stack.options,
                hbone_port=procs.free_port(stack.bind),
                admin_port=procs.free_port(),
                readiness_port=procs.free_port(stack.bind),
                stats_port=procs.free_port(stack.bind),
                extauthz_address=self.extauthz_address,
            )
            rendered = pipeline.render(_objects(True), NAMESPACE, WAYPOINT, options)
            if not rendered.waypoint.needs_extauthz:
                raise RigError(f"{AUTHZ_WORLD} did not attach ext_authz to the waypoint")
            self.authz_rendered, self.authz_options = rendered, options
        return self.authz_rendered

    def _authz_proxy(self) -> tuple[envoy_process.EnvoyProcess, int]:
        """A second waypoint Envoy beside the stack's, serving the world with policies."""
        rendered = self._authz_world()
        options = self.authz_options
        assert options is not None
        if self.authz_proxy is None:
            self.log("starting the waypoint of the world with ExtAuthzPolicy (a second Envoy)")
            config = self.workdir / "waypoint-authz-envoy.yaml"
            config.write_text(rendered.bootstrap_yaml)
            log = self.workdir / "waypoint-authz-envoy.log"
            self.authz_proxy = _run_envoy(config, options.admin_port, log)
        return self.authz_proxy, options.hbone_port

    def _authz(self, kind: str) -> None:
        if kind == self.authz_kind:
            return
        self._stop_authz()
        if not kind:
            return
        self.log(f"starting the authorization server: {kind}")
        if kind == "floor":
            port = int(self.extauthz_address.rpartition(":")[2])
            self.authz_children = [authz.start_floor(self.workdir, port)]
        else:
            self.authz_children = self._start_extauthz(kind)
        self.authz_kind = kind

    def _start_extauthz(self, kind: str) -> list[procs.Child]:
        doc = policy.extauthz_config(
            self._authz_world().waypoint,
            listen=self.extauthz_address,
            modules=(str(authz.POLICY),),
            metrics_listen=None,
        )
        if kind == "embedded":
            return [authz.start_extauthz("extauthz-embedded", self.workdir, doc)]
        opa_port = procs.free_port()
        double = authz.start_opa_double(self.workdir, opa_port)
        try:
            server = authz.start_extauthz(
                "extauthz-opa", self.workdir, authz.use_opa(doc, f"http://127.0.0.1:{opa_port}")
            )
        except BaseException:
            double.stop()
            raise
        return [server, double]

    def _stop_authz(self) -> None:
        for child in self.authz_children:
            child.stop()
        self.authz_children = []
        self.authz_kind = ""


def _run_envoy(
    config: pathlib.Path, admin_port: int, log: pathlib.Path
) -> envoy_process.EnvoyProcess:
    proxy = envoy_process.start(config, admin_port, log)
    try:
        proxy.wait_ready()
    except BaseException:
        proxy.stop()
        raise
    return proxy
