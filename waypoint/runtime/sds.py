"""Writing the SDS files a rendered config reads, for an Envoy started from a file.

The files' content is pure (``waypoint.envoy.secrets.sds_files``); this is the step that puts
it on disk, beside the certificates, for ``waypoint render``, ``waypoint up`` and the tests.
"""

from __future__ import annotations

import pathlib

from waypoint.envoy import options as options_mod
from waypoint.envoy import secrets


def write_files(options: options_mod.BootstrapOptions) -> list[pathlib.Path]:
    """Write ``secrets.sds_files`` into ``secrets.sds_dir`` (atomically, one file at a time):
    Envoy watches the directory, so it must never read a half-written file."""
    directory = pathlib.Path(secrets.sds_dir(options))
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in secrets.sds_files(options).items():
        target = directory / name
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(target)
        written.append(target)
    return written
