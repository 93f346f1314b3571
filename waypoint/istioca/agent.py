"""Keep the waypoint's certificate directory fresh from istiod's CA.

The schedule is Istio's agent's (security/pkg/nodeagent/cache/secretcache.go ``rotateTime``):
renew when ``(ratio ± jitter) × lifetime`` is left, 0.5 ± 0.01 by default, so about at
half-life. A failed call is retried with exponential backoff; the files on disk (the last
good certificate) are never touched until a new certificate has passed every check. Files
are written with one atomic ``..data`` symlink swap (:func:`waypoint.pki.write_cert_dir`),
which is what Envoy's file SDS ``watched_directory`` reloads on.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import pathlib
import random
import threading
import time
from collections.abc import Callable

import prometheus_client
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from waypoint import pki
from waypoint.istioca import client

log = logging.getLogger("waypoint.istioca")

REQUESTS = prometheus_client.Counter(
    "waypoint_istio_ca_requests",
    "CreateCertificate calls to istiod's CA, by result (issued, unavailable, rejected, unwritable)",
    ["result"],
)
EXPIRY = prometheus_client.Gauge(
    "waypoint_istio_ca_cert_expiry_timestamp_seconds",
    "Expiry (Unix time) of the certificate currently in the certificate directory",
)
FAILURES = prometheus_client.Gauge(
    "waypoint_istio_ca_consecutive_failures",
    "Failed CreateCertificate calls since the last success",
)

Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    ca: client.CaConfig
    spiffe_id: str
    cert_dir: str
    grace_ratio: float = 0.5  # Istio's SECRET_GRACE_PERIOD_RATIO
    grace_jitter: float = 0.01  # Istio's SECRET_GRACE_PERIOD_RATIO_JITTER
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    # How often the sidecar looks at the root file (the kubelet updates a ConfigMap volume
    # within about a minute), so a trust-bundle change reaches Envoy between renewals.
    root_check_interval: float = 30.0


def renew_at(
    created: datetime.datetime, not_after: datetime.datetime, grace_ratio: float
) -> datetime.datetime:
    """When to renew: ``grace_ratio`` of the lifetime before expiry (0.5: at half-life)."""
    ratio = min(1.0, max(0.0, grace_ratio))
    return not_after - (not_after - created) * ratio


def backoff(failures: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling, capped."""
    return float(min(maximum, initial * 2 ** max(0, failures - 1)))


class Agent:
    """Obtains, checks, writes and renews one SPIFFE certificate."""

    def __init__(
        self, config: AgentConfig, *, clock: Clock = _utcnow, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.current: client.Issued | None = None
        self.renew_time: datetime.datetime | None = None
        self.failures = 0
        self.last_error = ""

    def load_existing(self) -> client.Issued | None:
        """The certificate already in ``cert_dir`` (an init container's), if still usable."""
        directory = pathlib.Path(self.config.cert_dir)
        try:
            chain = (directory / pki.CERT_CHAIN_FILE).read_text()
            key = serialization.load_pem_private_key(
                (directory / pki.KEY_FILE).read_bytes(), password=None
            )
            roots_pem = pathlib.Path(self.config.ca.root_cert_path).read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            return None
        try:
            roots = client.load_roots(roots_pem, self.config.ca.root_cert_path)
            issued = client.verify_response([chain], key, roots, roots_pem, self.config.spiffe_id)
        except client.CaError as exc:
            log.info("not reusing the certificate in %s: %s", directory, exc)
            return None
        self._accept(issued, issued.not_before)
        return issued

    def refresh(self) -> client.Issued:
        """One CreateCertificate call; on success the files are replaced, else left alone."""
        try:
            issued = client.request_certificate(self.config.ca, self.config.spiffe_id)
        except client.CaError as exc:
            result = "rejected" if isinstance(exc, client.CertificateRejected) else "unavailable"
            raise self._failed(exc, result) from None
        try:
            pki.write_cert_dir(self.config.cert_dir, issued.files())
        except OSError as exc:
            error = client.CaError(f"cannot write {self.config.cert_dir}: {exc}")
            raise self._failed(error, "unwritable") from None
        REQUESTS.labels(result="issued").inc()
        self.failures = 0
        self.last_error = ""
        FAILURES.set(0)
        self._accept(issued, self.clock())
        log.info(
            "istiod CA issued %s serial %x, valid until %s, renewing at %s",
            issued.spiffe_id,
            issued.leaf.serial_number,
            issued.not_after.isoformat(),
            self.renew_time.isoformat() if self.renew_time else "-",
        )
        return issued

    def _failed(self, exc: client.CaError, result: str) -> client.CaError:
        self.failures += 1
        self.last_error = str(exc)
        FAILURES.set(self.failures)
        REQUESTS.labels(result=result).inc()
        kept = "keeping the current certificate" if self.current else "no certificate yet"
        log.error("istiod CA: %s (failure %d, %s)", exc, self.failures, kept)
        return exc

    def _accept(self, issued: client.Issued, created: datetime.datetime) -> None:
        # Like Istio's agent, the lifetime counts from when we got the certificate (a CA
        # may backdate notBefore for clock skew); a reloaded one counts from notBefore.
        self.current = issued
        jitter = self.rng.uniform(-self.config.grace_jitter, self.config.grace_jitter)
        self.renew_time = renew_at(
            min(created, issued.not_after), issued.not_after, self.config.grace_ratio + jitter
        )
        EXPIRY.set(issued.not_after.timestamp())

    def due(self) -> bool:
        return self.renew_time is None or self.clock() >= self.renew_time

    def step(self) -> float:
        """Renew if due; return the seconds until the next step. Never raises: whatever
        goes wrong, the last good certificate stays and the next try is backed off."""
        try:
            self.check_roots()
            if self.due():
                self.refresh()
        except client.CaError:
            return self._backoff()
        except Exception as exc:  # a bug or a surprise must not end the renewals
            log.exception("istiod CA: unexpected error")
            self._failed(client.CaError(f"unexpected error: {exc!r}"), "unavailable")
            return self._backoff()
        if self.renew_time is None:
            return self._backoff()
        until_renewal = (self.renew_time - self.clock()).total_seconds()
        return max(0.0, min(until_renewal, self.config.root_check_interval))

    def check_roots(self) -> None:
        """Follow a change of the root file (istio-ca-root-cert): publish the new bundle if
        the current certificate still chains to it (a root rotation adds the new root
        first), else make the certificate due for renewal now."""
        current = self.current
        if current is None:
            return
        try:
            roots_pem = pathlib.Path(self.config.ca.root_cert_path).read_bytes()
        except OSError:
            return  # a missing file is reported by the next CA call; keep what works
        if roots_pem == current.roots_pem:
            return
        chain = current.files()[pki.CERT_CHAIN_FILE].decode()
        try:
            roots = client.load_roots(roots_pem, self.config.ca.root_cert_path)
            updated = client.verify_response(
                [chain], current.key, roots, roots_pem, self.config.spiffe_id
            )
        except client.CaError as exc:
            log.info("istiod CA: the roots changed and %s; renewing now", exc)
            self.renew_time = None
            return
        try:
            pki.write_cert_dir(self.config.cert_dir, updated.files())
        except OSError as exc:
            error = client.CaError(f"cannot write {self.config.cert_dir}: {exc}")
            raise self._failed(error, "unwritable") from None
        self.current = updated
        log.info(
            "istiod CA: published the changed trust bundle of %s", self.config.ca.root_cert_path
        )

    def _backoff(self) -> float:
        return backoff(self.failures, self.config.initial_backoff, self.config.max_backoff)

    def obtain(self, timeout: float) -> client.Issued:
        """For an init container: a usable certificate in ``cert_dir`` within ``timeout``
        seconds (the existing one if not yet due), retrying with backoff; else CaError."""
        existing = self.load_existing()
        if existing is not None and not self.due():
            return existing
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.refresh()
            except client.CaError:
                wait = self._backoff()
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)

    def run(self, stop: threading.Event) -> None:
        """For a sidecar: keep renewing until ``stop`` is set."""
        if self.current is None:
            self.load_existing()
        while True:
            delay = self.step()
            if stop.wait(delay):
                return
