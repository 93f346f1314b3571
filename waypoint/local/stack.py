"""A whole ambient world on one machine: echo pods, HBONE terminators and a real Envoy waypoint.

``LocalStack`` does what a cluster, ztunnel and the waypoint controller would do for a list of
Kubernetes objects:

- a dev CA issues every identity (``waypoint.local.ca``): the waypoint's, each mesh pod's, clients';
- every endpoint address of the EndpointSlices gets an echo backend reporting its pod name and
  namespace, on the ports and protocols the slices name (``waypoint.local.workloads``);
- every mesh (ambient) pod also gets a destination-side HBONE terminator on
  ``<pod ip>:<upstream hbone port>`` presenting that pod's own SPIFFE ID, so the waypoint's
  upstream mTLS and SAN checks run for real;
- the waypoint's bootstrap is rendered by ``waypoint.pipeline.render`` and run by a real Envoy.

``reload`` swaps the world: backends are kept (only added or removed as the world's endpoints
change) and Envoy is restarted on the new bootstrap, which costs well under a second.
Nothing here knows about any particular world; endpoint addresses must be local
(127.0.0.0/8 on Linux) because backends bind them.
"""

from __future__ import annotations

import dataclasses
import errno
import pathlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from waypoint import model, names, pipeline, pki
from waypoint.envoy import options as options_mod
from waypoint.local import ca as dev_ca
from waypoint.local import echo, sidecar, workloads
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import loop
from waypoint.local.hbone import terminator as hbone_terminator
from waypoint.runtime import envoy_process, ports, sds

DEFAULT_TIMEOUT = 10.0
_PORT_ATTEMPTS = 5


class StackError(RuntimeError):
    """The local stack could not start, reload, or route a request."""


@dataclasses.dataclass(frozen=True)
class Ports:
    """The waypoint's ports; 0 picks a free one at start."""

    hbone: int = 0
    upstream_hbone: int = 0
    admin: int = 0
    readiness: int = 0
    stats: int = 0


free_port = ports.free_port


@dataclasses.dataclass
class Backend:
    """One workload's running echo server and, for a mesh pod, its HBONE terminator."""

    workload: workloads.Workload
    echo: echo.EchoServer
    terminator: hbone_terminator.HboneTerminator | None = None
    spiffe_id: str | None = None  # the terminator's identity: the pod's own


class LocalStack:
    """Run the waypoint ``namespace/name`` of ``objects`` locally; use as a context manager.

    The waypoint's certificate carries the identity the translation gives it
    (``spiffe://<trust domain>/ns/<gateway namespace>/sa/<gateway name>``); clients get
    identities from the same dev CA through :meth:`client` and :meth:`identity`.
    """

    def __init__(
        self,
        objects: Sequence[Mapping[str, Any]],
        namespace: str,
        name: str,
        *,
        trust_domain: str = "cluster.local",
        bind: str = "127.0.0.1",
        ports: Ports = Ports(),
        workdir: str | pathlib.Path | None = None,
        ready_timeout: float = 30.0,
        rego_modules: Sequence[str | pathlib.Path] = (),
        access_log: bool = True,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.trust_domain = trust_domain
        self.bind = bind
        self.ready_timeout = ready_timeout
        self._requested_ports = ports
        self._workdir_arg = pathlib.Path(workdir) if workdir is not None else None
        self._objects: tuple[Mapping[str, Any], ...] = tuple(objects)
        self._identities: dict[tuple[str, str], pki.Identity] = {}
        self._backends: dict[str, Backend] = {}
        self._generation = 0
        self._ca: dev_ca.CertificateAuthority | None = None
        self._runner: loop.LoopThread | None = None
        self._workdir: pathlib.Path | None = None
        self._options: options_mod.BootstrapOptions | None = None
        self._rendered: pipeline.Rendered | None = None
        self._proxy: envoy_process.EnvoyProcess | None = None
        self._waypoint_id: str | None = None
        self._rego_modules = tuple(rego_modules)
        self._access_log = access_log
        self._sidecar: sidecar.ExtAuthzSidecar | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalStack:
        """Start backends, terminators and Envoy; on any failure tear down what started."""
        if self._runner is not None:
            raise StackError("LocalStack is already started")
        try:
            self._workdir = self._make_workdir()
            self._ca = dev_ca.CertificateAuthority.create(self.trust_domain)
            self._runner = loop.LoopThread("local-stack")
            plan = workloads.plan(self._objects)
            self._options = self._bootstrap_options(self._start_backends(plan))
            self._sidecar = sidecar.ExtAuthzSidecar(
                self._options.extauthz_address,
                self._rego_modules,
                self._workdir / "extauthz-decisions.log",
            )
            self._apply(pipeline.render(self._objects, self.namespace, self.name, self.options))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Envoy, every backend and terminator; remove a workdir we created."""
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        if self._sidecar is not None:
            self._sidecar.stop()
            self._sidecar = None
        for address in sorted(self._backends):
            self._stop_backend(self._backends.pop(address))
        if self._runner is not None:
            self._runner.stop()
            self._runner = None
        if self._workdir is not None and self._workdir_arg is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        # A later start() begins afresh: new CA, ports, certificates and bootstrap.
        self._workdir = self._ca = self._options = self._rendered = self._waypoint_id = None
        self._identities.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reload(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """Serve a new world: keep unchanged backends, restart Envoy on the new bootstrap.

        A world that does not render raises (``pipeline.WaypointNotFound`` and friends) and
        leaves the running stack as it was.
        """
        if self._runner is None:
            raise StackError("LocalStack is not started")
        rendered = pipeline.render(objects, self.namespace, self.name, self.options)
        self._objects = tuple(objects)
        self._sync_backends(workloads.plan(self._objects))
        self._apply(rendered)

    # -- what is running -----------------------------------------------------------------

    @property
    def options(self) -> options_mod.BootstrapOptions:
        if self._options is None:
            raise StackError("LocalStack is not started")
        return self._options

    @property
    def rendered(self) -> pipeline.Rendered:
        if self._rendered is None:
            raise StackError("LocalStack is not started")
        return self._rendered

    @property
    def translation(self) -> model.Translation:
        return self.rendered.translation

    @property
    def waypoint(self) -> model.Waypoint:
        return self.rendered.waypoint

    @property
    def statuses(self) -> tuple[model.ResourceStatus, ...]:
        """The translation's verdict on every input object."""
        return self.translation.statuses

    def problems(self) -> tuple[model.ResourceStatus, ...]:
        """The statuses with any condition False (rejected objects, unresolved refs)."""
        return tuple(s for s in self.statuses if not s.ok)

    @property
    def extauthz_running(self) -> bool:
        """Whether the extauthz sidecar runs (only while some policy of the waypoint needs it)."""
        return self._sidecar is not None and self._sidecar.running

    @property
    def proxy(self) -> envoy_process.EnvoyProcess:
        if self._proxy is None:
            raise StackError("Envoy is not running")
        return self._proxy

    @property
    def ca(self) -> dev_ca.CertificateAuthority:
        if self._ca is None:
            raise StackError("LocalStack is not started")
        return self._ca

    @property
    def workdir(self) -> pathlib.Path:
        if self._workdir is None:
            raise StackError("LocalStack is not started")
        return self._workdir

    @property
    def backends(self) -> Mapping[str, Backend]:
        """Running backends by endpoint address."""
        return dict(self._backends)

    @property
    def waypoint_address(self) -> tuple[str, int]:
        return self.bind, self.options.hbone_port

    @property
    def waypoint_id(self) -> str:
        if self._waypoint_id is None:
            raise StackError("LocalStack is not started")
        return self._waypoint_id

    def envoy_log(self) -> str:
        return self._proxy.log() if self._proxy is not None else ""

    # -- addressing ----------------------------------------------------------------------

    def vip(self, namespace: str, service: str) -> str:
        """The ClusterIP of a Service of the current world."""
        for obj in self._objects:
            meta = obj.get("metadata") or {}
            if (obj.get("kind"), meta.get("namespace") or "default", meta.get("name")) == (
                "Service",
                namespace,
                service,
            ):
                spec = obj.get("spec") or {}
                vip = spec.get("clusterIP") or next(iter(spec.get("clusterIPs") or []), None)
                if not vip or vip == "None":
                    raise StackError(f"Service {namespace}/{service} has no clusterIP")
                return str(vip)
        raise StackError(f"no Service {namespace}/{service} in the world")

    def authority(self, namespace: str, service: str, port: int) -> str:
        """The CONNECT authority a ztunnel sends for ``service:port``: ``VIP:port``."""
        return names.authority(self.vip(namespace, service), port)

    def pod_address(self, namespace: str, name: str) -> str:
        for backend in self._backends.values():
            if (backend.workload.namespace, backend.workload.name) == (namespace, name):
                return backend.workload.address
        raise StackError(f"no running backend for pod {namespace}/{name}")

    def hop(self, authority: str) -> tuple[tuple[str, int], str]:
        """Where a source ztunnel sends a tunnel for ``authority``, and who must answer.

        A destination the waypoint serves (a Service VIP port, or a workload it captures)
        goes to the waypoint; any other mesh pod address goes straight to that pod's HBONE
        terminator, as ztunnel does when no waypoint applies.
        """
        host, port = names.parse_authority(authority)
        for dest in self.waypoint.destinations:
            if dest.port == port and host in dest.addresses:
                return self.waypoint_address, self.waypoint_id
        backend = self._backends.get(host)
        if backend is not None and backend.terminator is not None:
            assert backend.spiffe_id is not None
            return (host, self.options.upstream_hbone_port), backend.spiffe_id
        raise StackError(
            f"{authority} is neither served by waypoint {self.namespace}/{self.name} "
            "nor a mesh pod of the world"
        )

    # -- clients -------------------------------------------------------------------------

    def identity(self, namespace: str, service_account: str = "default") -> pki.Identity:
        """A workload identity from the stack's CA (cached per namespace and account)."""
        key = (namespace, service_account)
        if key not in self._identities:
            self._identities[key] = self.ca.issue_workload(namespace, service_account)
        return self._identities[key]

    def client(
        self,
        namespace: str = "default",
        service_account: str = "default",
        *,
        destination: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> hbone_client.SyncHboneClient:
        """A blocking HBONE client running as ``namespace/service_account``.

        It talks to the waypoint, or, given ``destination`` (an authority), to wherever
        :meth:`hop` sends it; the server's SPIFFE ID is checked either way.
        """
        address, server_id = self._target(destination)
        return hbone_client.SyncHboneClient(
            address,
            self.identity(namespace, service_account).ssl_context(server=False),
            expected_server_id=server_id,
            expected_trust_domain=self.trust_domain,
            timeout=timeout,
        )

    def async_client(
        self,
        namespace: str = "default",
        service_account: str = "default",
        *,
        destination: str | None = None,
    ) -> hbone_client.HboneClient:
        """The asyncio counterpart of :meth:`client` (connects on first use)."""
        address, server_id = self._target(destination)
        return hbone_client.HboneClient(
            address,
            self.identity(namespace, service_account).ssl_context(server=False),
            expected_server_id=server_id,
            expected_trust_domain=self.trust_domain,
        )

    def _target(self, destination: str | None) -> tuple[tuple[str, int], str]:
        if destination is None:
            return self.waypoint_address, self.waypoint_id
        return self.hop(destination)

    # -- internals -----------------------------------------------------------------------

    def _make_workdir(self) -> pathlib.Path:
        if self._workdir_arg is None:
            return pathlib.Path(tempfile.mkdtemp(prefix="waypoint-local-"))
        self._workdir_arg.mkdir(parents=True, exist_ok=True)
        return self._workdir_arg

    def _bootstrap_options(self, upstream_hbone_port: int) -> options_mod.BootstrapOptions:
        ports = self._requested_ports
        return options_mod.BootstrapOptions(
            trust_domain=self.trust_domain,
            cert_dir=str(self.workdir / "certs"),
            sds_dir=str(self.workdir / "sds"),
            bind=self.bind,
            hbone_port=ports.hbone or free_port(self.bind),
            upstream_hbone_port=upstream_hbone_port,
            admin_port=ports.admin or free_port(),
            readiness_port=ports.readiness or free_port(self.bind),
            stats_port=ports.stats or free_port(self.bind),
            extauthz_address=f"127.0.0.1:{free_port()}",
            access_log=self._access_log,
        )

    def _apply(self, rendered: pipeline.Rendered) -> None:
        """Make Envoy run ``rendered``: write certs if the identity changed, then restart."""
        identity = rendered.waypoint.identity
        spiffe = names.spiffe_id(
            identity.trust_domain, identity.namespace, identity.service_account
        )
        if spiffe != self._waypoint_id:
            self.ca.issue(spiffe).write(self.options.cert_dir)
            sds.write_files(self.options)
            self._waypoint_id = spiffe
        same = (
            self._rendered is not None and self._rendered.bootstrap_yaml == rendered.bootstrap_yaml
        )
        self._rendered = rendered
        if self._sidecar is not None:
            self._sidecar.apply(rendered.waypoint)
        if same and self._proxy is not None and self._proxy.process.poll() is None:
            return
        self._restart_envoy(rendered.bootstrap_yaml)

    def _restart_envoy(self, bootstrap_yaml: str) -> None:
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        self._generation += 1
        config = self.workdir / f"envoy-{self._generation}.yaml"
        config.write_text(bootstrap_yaml)
        log = self.workdir / f"envoy-{self._generation}.log"
        proxy = envoy_process.start(config, self.options.admin_port, log)
        try:
            proxy.wait_ready(self.ready_timeout)
        except BaseException:
            proxy.stop()
            raise
        self._proxy = proxy

    # -- backends ------------------------------------------------------------------------

    def _start_backends(self, plan: Sequence[workloads.Workload]) -> int:
        """Start every backend; return the upstream HBONE port the terminators bound.

        Echo ports come from the world and cannot move; the terminators' shared port can,
        so a port taken on some pod address is retried with another.
        """
        for workload in plan:
            self._backends[workload.address] = Backend(workload, self._start_echo(workload))
        requested = self._requested_ports.upstream_hbone
        for _attempt in range(1 if requested else _PORT_ATTEMPTS):
            port = requested or free_port()
            try:
                for backend in self._backends.values():
                    self._start_terminator(backend, port)
                return port
            except OSError as exc:
                for backend in self._backends.values():
                    self._stop_terminator(backend)
                if requested or exc.errno != errno.EADDRINUSE:
                    raise
        raise StackError(f"no free upstream HBONE port for {len(plan)} terminators")

    def _sync_backends(self, plan: Sequence[workloads.Workload]) -> None:
        wanted = {w.address: w for w in plan}
        for address in sorted(self._backends):
            if wanted.get(address) != self._backends[address].workload:
                self._stop_backend(self._backends.pop(address))
        for address, workload in sorted(wanted.items()):
            if address not in self._backends:
                self._backends[address] = self._start_backend(
                    workload, self.options.upstream_hbone_port
                )

    def _start_backend(self, workload: workloads.Workload, hbone_port: int) -> Backend:
        backend = Backend(workload, self._start_echo(workload))
        try:
            self._start_terminator(backend, hbone_port)
        except BaseException:
            backend.echo.stop_background()
            raise
        return backend

    def _start_echo(self, workload: workloads.Workload) -> echo.EchoServer:
        server = echo.EchoServer(
            workload.name,
            workload.namespace,
            workload.address,
            http_ports=workload.ports_of(model.Protocol.HTTP),
            grpc_ports=workload.ports_of(model.Protocol.HTTP2),
            tcp_ports=workload.ports_of(model.Protocol.TCP),
            version=workload.version,
        )
        return server.start_background(self._runner)

    def _start_terminator(self, backend: Backend, hbone_port: int) -> None:
        """A mesh pod answers HBONE on its own address, as its pod's SPIFFE identity."""
        workload = backend.workload
        if not workload.mesh:
            return
        ident = self.ca.issue_workload(workload.namespace, workload.service_account)
        terminator = hbone_terminator.HboneTerminator(
            ident.ssl_context(server=True),
            (workload.address, hbone_port),
            allowed_trust_domain=self.trust_domain,
        )
        terminator.start_background(self._runner)
        backend.terminator, backend.spiffe_id = terminator, ident.spiffe_id

    @staticmethod
    def _stop_terminator(backend: Backend) -> None:
        if backend.terminator is not None:
            backend.terminator.stop_background()
        backend.terminator = backend.spiffe_id = None

    @classmethod
    def _stop_backend(cls, backend: Backend) -> None:
        cls._stop_terminator(backend)
        backend.echo.stop_background()
