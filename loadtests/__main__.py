"""``python -m loadtests``: the load-test harness (see :mod:`loadtests.harness`)."""

from __future__ import annotations

import sys

from loadtests import harness

sys.exit(harness.main())
