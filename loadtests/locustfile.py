"""The locustfile the harness runs: the users, plus the exact-latency recorder.

Run by :mod:`loadtests.harness` as ``python -m locust -f loadtests/locustfile.py --headless
<UserClass> ...`` with ``$LOADTEST_SPEC`` naming a :class:`loadtests.scenarios.RunSpec` JSON
file. Standalone use works the same way: write a spec and point the variable at it.
"""

from __future__ import annotations

from typing import Any

import grpc.experimental.gevent as grpc_gevent  # type: ignore[import-not-found,unused-ignore]
import locust

from loadtests import recorder, users

# gRPC's core must cooperate with gevent's hub before any channel exists (GrpcUser).
grpc_gevent.init_gevent()

DirectUser = users.DirectUser
PlainHttpUser = users.PlainHttpUser
HboneUser = users.HboneUser
GrpcUser = users.GrpcUser

_recorder: recorder.Recorder | None = None


def _start(environment: Any, **_kwargs: Any) -> None:
    global _recorder
    _recorder = recorder.Recorder(users.spec().warmup_seconds)
    environment.events.request.add_listener(_recorder.on_request)


def _write(environment: Any, **_kwargs: Any) -> None:
    if _recorder is not None:
        _recorder.write(users.spec().samples_file)
    users.close_shared()


locust.events.test_start.add_listener(_start)  # type: ignore[no-untyped-call,unused-ignore]
locust.events.quitting.add_listener(_write)  # type: ignore[no-untyped-call,unused-ignore]
