"""Fixtures for the attack tests: the small PlanetLab-layout traces of the simulator tests."""

from __future__ import annotations

from tests.sim.conftest import write_day

__all__ = ["write_day"]
