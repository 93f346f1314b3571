"""The hop benchmark's processes: five Envoys on loopback, no Python in the data path.

``loadtests/hop-world.yaml`` holds one Service (a VIP), one ambient pod and one waypoint.
The rig gives the pod a free loopback address (127.0.30.x) and runs:

- ``backend``: the pod itself, an Envoy answering 200 from a ``direct_response`` on
  ``<pod>:8080`` (:mod:`loadtests.envoyconf`);
- ``proxy``: a plain Envoy HTTP proxy hop to the pod (the baseline hop);
- ``client-ztunnel``: the source side stand-in (:mod:`loadtests.hop_envoys`), with two
  tunnels: ``l4`` (HBONE straight to the pod, authority ``<pod>:8080``) and ``waypoint``
  (HBONE to the waypoint, authority ``VIP:80``), presenting the client's SPIFFE ID;
- ``server-ztunnel``: the destination side stand-in on ``<pod>:15008`` (another port when
  that one is taken), presenting the pod's SPIFFE ID;
- ``waypoint``: our waypoint, its bootstrap rendered by :func:`waypoint.pipeline.render`
  from the world, certificates from :mod:`waypoint.local.ca` through file SDS, exactly as the
  local stack runs it.

Every Envoy runs with ``--concurrency`` (default 1) so the machine is not oversubscribed.
:meth:`HopRig.write` renders every config without starting anything (for ``envoy --mode
validate``); :meth:`HopRig.start` starts and waits for all; :meth:`HopRig.stop` always ends them.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from loadtests import envoyconf, hop_envoys, procs
from waypoint import names, pipeline
from waypoint.envoy import filters, routes
from waypoint.envoy import options as options_mod
from waypoint.local import ca as dev_ca
from waypoint.runtime import envoy_process, inputs, sds

WORLD = pathlib.Path(__file__).resolve().parent / "hop-world.yaml"
NAMESPACE, WAYPOINT, SERVICE, SERVICE_PORT = "hop", "waypoint", "backend", 80
POD, POD_PORT, POD_ACCOUNT = "backend-0", 8080, "backend"
CLIENT_ACCOUNT = "client"
TRUST_DOMAIN = "cluster.local"
HBONE_PORT = 15008
POD_NETWORK = "127.0.30."
PATH = "/hop/bench"
TOKEN = "hop-bench"  # the route matches ``authorization: Bearer hop-bench``
PROOF_HEADER = "x-hop-waypoint"  # added to responses by the route's ResponseHeaderModifier
PATHS = ("direct", "envoy", "l4", "waypoint")
ROLES = ("backend", "proxy", "client-ztunnel", "server-ztunnel", "waypoint")
# HopRig.counters: requests the backend answered 2xx (every path ends there); L7 requests the
# waypoint answered 2xx on the Service port; HBONE tunnels (CONNECT streams) the waypoint
# accepted; HBONE tunnels the pod's server side accepted.
COUNTERS = ("backend_2xx", "waypoint_2xx", "waypoint_tunnels", "pod_tunnels")


class HopRigError(RuntimeError):
    """The hop world could not be laid out or started."""


def pick_pod_address() -> tuple[str, int]:
    """A 127.0.30.x where the pod port is free, and its HBONE port (15008 when free)."""
    for host in range(1, 255):
        address = f"{POD_NETWORK}{host}"
        if not procs.bindable(address, POD_PORT):
            continue
        if procs.bindable(address, HBONE_PORT):
            return address, HBONE_PORT
        return address, procs.free_port(address)
    raise HopRigError(f"no {POD_NETWORK}x address with port {POD_PORT} free")


def world_pod_address(objects: list[dict[str, Any]]) -> str:
    for obj in objects:
        meta = obj.get("metadata") or {}
        if obj.get("kind") == "Pod" and meta.get("name") == POD:
            address = (obj.get("status") or {}).get("podIP")
            if address:
                return str(address)
    raise HopRigError(f"{WORLD}: no Pod {NAMESPACE}/{POD} with status.podIP")


def load_world(pod_address: str, world: pathlib.Path = WORLD) -> list[dict[str, Any]]:
    """The world's objects with the pod (its Pod and EndpointSlice entries) at ``pod_address``."""
    objects = inputs.load_objects([world])
    old = world_pod_address(objects)
    moved = []
    for obj in objects:
        obj = copy.deepcopy(obj)
        if obj.get("kind") == "Pod" and obj["metadata"].get("name") == POD:
            obj["status"] = {**obj["status"], "podIP": pod_address, "podIPs": [{"ip": pod_address}]}
        if obj.get("kind") == "EndpointSlice":
            for endpoint in obj.get("endpoints") or []:
                endpoint["addresses"] = [
                    pod_address if a == old else a for a in endpoint.get("addresses") or []
                ]
        moved.append(obj)
    return moved


@dataclasses.dataclass(frozen=True)
class Layout:
    """Every address and port of one rig."""

    pod: str
    hbone: int  # the server stand-in's port on the pod address (the waypoint's upstream HBONE)
    proxy: int
    l4: int
    waypoint_in: int  # the client stand-in's listener for the waypoint tunnel
    admin: Mapping[str, int]

    @classmethod
    def pick(cls) -> Layout:
        pod, hbone = pick_pod_address()
        admin = {role: procs.free_port() for role in ROLES}
        return cls(pod, hbone, procs.free_port(), procs.free_port(), procs.free_port(), admin)

    def urls(self) -> dict[str, str]:
        return {
            "direct": f"http://{self.pod}:{POD_PORT}{PATH}",
            "envoy": f"http://127.0.0.1:{self.proxy}{PATH}",
            "l4": f"http://127.0.0.1:{self.l4}{PATH}",
            "waypoint": f"http://127.0.0.1:{self.waypoint_in}{PATH}",
        }


@dataclasses.dataclass(frozen=True)
class Probe:
    """One request down a path: its status and whether the waypoint's header came back."""

    path: str
    status: int
    crossed_waypoint: bool
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.crossed_waypoint == (self.path == "waypoint")


def probe(path: str, url: str) -> Probe:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5.0) as reply:
            return Probe(path, reply.status, reply.headers.get(PROOF_HEADER) == "crossed")
    except urllib.error.HTTPError as exc:
        return Probe(path, exc.code, exc.headers.get(PROOF_HEADER) == "crossed", str(exc))
    except OSError as exc:
        return Probe(path, 0, False, str(exc))


class HopRig:
    """Lay out, write, start and stop the five Envoys of the hop benchmark."""

    def __init__(
        self,
        workdir: pathlib.Path,
        concurrency: int = 1,
        log: Callable[[str], None] = print,
        layout: Layout | None = None,
        *,
        access_log: bool = True,
    ) -> None:
        self.workdir = workdir
        self.access_log = access_log  # the waypoint's; no other Envoy of the rig logs
        self.concurrency = concurrency
        self.log = log
        self.layout = layout or Layout.pick()
        self.configs: dict[str, pathlib.Path] = {}
        self.proxies: dict[str, envoy_process.EnvoyProcess] = {}
        self.rendered: pipeline.Rendered | None = None
        self.waypoint_id = ""
        self.ids: dict[str, str] = {}

    # -- configs ------------------------------------------------------------------------

    def write(self) -> dict[str, pathlib.Path]:
        """Issue certificates and write every Envoy config; return them by role."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = dev_ca.CertificateAuthority.create(TRUST_DOMAIN)
        client = self._issue(ca, "client", names.spiffe_id(TRUST_DOMAIN, NAMESPACE, CLIENT_ACCOUNT))
        pod = self._issue(ca, "pod", names.spiffe_id(TRUST_DOMAIN, NAMESPACE, POD_ACCOUNT))
        # The client's tunnel to the waypoint needs the waypoint's port and identity.
        self.configs["waypoint"], waypoint_port = self._waypoint(ca)
        docs = {
            "backend": self._backend(),
            "proxy": self._proxy(),
            "client-ztunnel": self._client(client, waypoint_port),
            "server-ztunnel": self._server(pod),
        }
        for role, doc in docs.items():
            self.configs[role] = self._dump(role, yaml.safe_dump(doc, sort_keys=False))
        return {role: self.configs[role] for role in ROLES}

    def _issue(
        self, ca: dev_ca.CertificateAuthority, name: str, spiffe: str
    ) -> hop_envoys.CertFiles:
        directory = self.workdir / "certs" / name
        ca.issue(spiffe).write(directory)
        self.ids[name] = spiffe
        return hop_envoys.CertFiles(directory)

    def _dump(self, role: str, text: str) -> pathlib.Path:
        path = self.workdir / f"{role}-envoy.yaml"
        path.write_text(text)
        return path

    def _backend(self) -> dict[str, Any]:
        hop = envoyconf.Hop("backend", POD_PORT, None, bind=self.layout.pod)
        return envoyconf.bootstrap([hop], self.layout.admin["backend"])

    def _proxy(self) -> dict[str, Any]:
        hop = envoyconf.Hop("proxy", self.layout.proxy, (self.layout.pod, POD_PORT))
        return envoyconf.bootstrap([hop], self.layout.admin["proxy"])

    def _waypoint_options(self) -> options_mod.BootstrapOptions:
        home = self.workdir / "waypoint"
        return options_mod.BootstrapOptions(
            trust_domain=TRUST_DOMAIN,
            cert_dir=str(home / "certs"),
            sds_dir=str(home / "sds"),
            bind="127.0.0.1",
            hbone_port=procs.free_port(),
            upstream_hbone_port=self.layout.hbone,
            admin_port=self.layout.admin["waypoint"],
            readiness_port=procs.free_port(),
            stats_port=procs.free_port(),
            extauthz_address=f"127.0.0.1:{procs.free_port()}",
            access_log=self.access_log,
        )

    def _world(self) -> tuple[str, list[dict[str, Any]]]:
        """The waypoint's world: what to call it in an error, and its objects."""
        return str(WORLD), load_world(self.layout.pod)

    def _waypoint(self, ca: dev_ca.CertificateAuthority) -> tuple[pathlib.Path, int]:
        """Render our waypoint from the world; write its certificates and SDS files."""
        options = self._waypoint_options()
        label, objects = self._world()
        rendered = pipeline.render(objects, NAMESPACE, WAYPOINT, options)
        problems = [s for s in rendered.translation.statuses if not s.ok]
        if problems:
            raise HopRigError(f"{label} does not translate cleanly: {problems}")
        ident = rendered.waypoint.identity
        self.waypoint_id = names.spiffe_id(
            ident.trust_domain, ident.namespace, ident.service_account
        )
        ca.issue(self.waypoint_id).write(options.cert_dir)
        sds.write_files(options)
        self.rendered = rendered
        return self._dump("waypoint", rendered.bootstrap_yaml), options.hbone_port

    def _client(self, certs: hop_envoys.CertFiles, waypoint_port: int) -> dict[str, Any]:
        pod_authority = names.authority(self.layout.pod, POD_PORT)
        tunnels = [
            hop_envoys.Tunnel(
                "l4",
                ("127.0.0.1", self.layout.l4),
                (self.layout.pod, self.layout.hbone),
                pod_authority,
                names.spiffe_id(TRUST_DOMAIN, NAMESPACE, POD_ACCOUNT),
            ),
            hop_envoys.Tunnel(
                "waypoint",
                ("127.0.0.1", self.layout.waypoint_in),
                ("127.0.0.1", waypoint_port),
                names.authority(self._vip(), SERVICE_PORT),
                self.waypoint_id,
            ),
        ]
        return hop_envoys.client_ztunnel(tunnels, certs, self.layout.admin["client-ztunnel"])

    def _server(self, certs: hop_envoys.CertFiles) -> dict[str, Any]:
        authority = names.authority(self.layout.pod, POD_PORT)
        return hop_envoys.server_ztunnel(
            (self.layout.pod, self.layout.hbone),
            certs,
            TRUST_DOMAIN,
            {authority: (self.layout.pod, POD_PORT)},
            self.layout.admin["server-ztunnel"],
        )

    def _vip(self) -> str:
        for obj in load_world(self.layout.pod):
            if obj.get("kind") == "Service" and obj["metadata"].get("name") == SERVICE:
                return str(obj["spec"]["clusterIP"])
        raise HopRigError(f"{WORLD}: no Service {NAMESPACE}/{SERVICE}")

    # -- processes ----------------------------------------------------------------------

    def start(self) -> None:
        """Start every Envoy (backend first) and wait until all are ready; undo on failure."""
        if not self.configs:
            self.write()
        try:
            for role in ROLES:
                self.log(f"  starting {role} Envoy (--concurrency {self.concurrency})")
                self.proxies[role] = envoy_process.start(
                    self.configs[role],
                    self.layout.admin[role],
                    self.workdir / f"{role}-envoy.log",
                    ("--concurrency", str(self.concurrency)),
                )
            for proxy in self.proxies.values():
                proxy.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for role in reversed(ROLES):
            proxy = self.proxies.pop(role, None)
            if proxy is not None:
                proxy.stop()

    def __enter__(self) -> HopRig:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def pid(self, role: str) -> int:
        return self.proxies[role].process.pid

    def usage(self) -> dict[str, procs.Usage]:
        return {role: procs.usage(proxy.process.pid) for role, proxy in self.proxies.items()}

    def counters(self) -> dict[str, int]:
        """What the Envoys have counted so far (see :data:`COUNTERS`)."""
        if self.rendered is None:
            raise HopRigError("the waypoint is not rendered")
        answered = 0
        for dest in self.rendered.waypoint.destinations:
            prefix = filters.stat_prefix(routes.inbound_name(dest))
            answered += self.stat("waypoint", f"http.{prefix}.downstream_rq_2xx")
        terminate = filters.stat_prefix(names.CONNECT_TERMINATE)
        return {
            "backend_2xx": self.stat("backend", "http.backend.downstream_rq_2xx"),
            "waypoint_2xx": answered,
            "waypoint_tunnels": self.stat("waypoint", f"http.{terminate}.downstream_rq_total"),
            "pod_tunnels": self.stat("server-ztunnel", "http.hbone.downstream_rq_total"),
        }

    def stat(self, role: str, name: str) -> int:
        """One counter of one Envoy's admin /stats (0 until first used)."""
        return procs.envoy_counter(self.proxies[role], name)
