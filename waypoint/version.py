"""The installed package's version and the one container image that carries it.

One image, ``waypoint-mesh``, holds the controller, the waypoint's Envoy and the extauthz
sidecar; the container's command picks the role. Its default tag is the package version, so a
controller puts the image it was released with into the waypoints it generates.
"""

from __future__ import annotations

import importlib.metadata

DISTRIBUTION = "waypoint-mesh"
IMAGE_NAME = "waypoint-mesh"


def package_version() -> str:
    """The installed distribution's version; ``dev`` when running from an uninstalled tree."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def default_image() -> str:
    """``waypoint-mesh:<version>``, named without a registry: set yours with ``--image``."""
    return f"{IMAGE_NAME}:{package_version()}"
