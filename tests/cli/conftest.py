"""Fixtures for the command-line tests."""

from __future__ import annotations

# `rebalancerd simulate` replays the small PlanetLab-layout traces the simulator tests write
# (one definition of the fixture, shared rather than copied).
from tests.sim.conftest import write_day

__all__ = ["write_day"]
