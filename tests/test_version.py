"""``waypoint --version`` and ``extauthz --version`` print the installed package's version,
and the default image the controller generates is tagged with it."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence

import pytest

from extauthz import cli as extauthz_cli
from waypoint import cli as waypoint_cli
from waypoint import version
from waypoint.kube import settings


@pytest.mark.parametrize(
    ("main", "prog"), [(waypoint_cli.main, "waypoint"), (extauthz_cli.main, "extauthz")]
)
def test_version_flag(
    main: Callable[[Sequence[str] | None], int], prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    expected = importlib.metadata.version("waypoint-mesh")
    assert capsys.readouterr().out == f"{prog} {expected}\n"


def test_default_image_is_the_one_image_at_this_version() -> None:
    expected = f"waypoint-mesh:{importlib.metadata.version('waypoint-mesh')}"
    assert version.default_image() == expected
    defaults = settings.Settings()
    assert defaults.envoy_image == defaults.extauthz_image == defaults.istio_certs_image == expected
