"""Fixtures shared by the fault tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory under /tmp for one test's daemon (config, policies, state, logs).
    Kept after the run when REBALANCERD_KEEP_FAULT_DIRS is set."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    d = Path(tempfile.mkdtemp(prefix=f"rbd-fault-{module}-", dir="/tmp"))
    yield d
    if not os.environ.get("REBALANCERD_KEEP_FAULT_DIRS"):
        shutil.rmtree(d, ignore_errors=True)
