"""Small PlanetLab-layout traces written to a temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

WriteDay = Callable[[Mapping[str, Sequence[int]]], Path]


@pytest.fixture
def write_day(tmp_path: Path) -> WriteDay:
    def write(vms: Mapping[str, Sequence[int]], name: str = "20110303") -> Path:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        for vm, samples in vms.items():
            (d / vm).write_text("".join(f"{s}\n" for s in samples))
        return d

    return write
