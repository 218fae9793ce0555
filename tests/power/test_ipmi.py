"""The IPMI driver against a real BMC simulator (ipmi_sim) over lanplus on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebalancerd.adapters.power_config import driver_for, parse_power_spec
from rebalancerd.ports import PowerError, PowerState
from tests.fixtures.ipmi import Bmc, free_udp_port, require_ipmi


@pytest.fixture(scope="module")
def bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bmc]:
    require_ipmi()
    b = Bmc(tmp_path_factory.mktemp("bmc")).start()
    yield b
    b.stop()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_status_off_on_through_the_bmc(bmc: Bmc) -> None:
    d = driver_for("hv1", parse_power_spec("hv1", bmc.spec()))
    assert run(d.power_state("hv1")) is PowerState.ON
    run(d.power_off("hv1"))  # soft
    assert not bmc.powered
    assert bmc.actions()[-1] == "shutdown 1"
    assert run(d.power_state("hv1")) is PowerState.OFF
    run(d.power_on("hv1"))
    assert bmc.powered
    assert run(d.power_state("hv1")) is PowerState.ON
    run(d.power_off("hv1", hard=True))
    assert bmc.actions()[-1] == "power 0"
    assert run(d.power_state("hv1")) is PowerState.OFF
    run(d.power_on("hv1"))


def test_wrong_password_is_a_one_line_power_error(bmc: Bmc, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("not-the-password\n")
    d = driver_for("hv1", parse_power_spec("hv1", bmc.spec(password_file=str(bad))))
    with pytest.raises(PowerError) as e:
        run(d.power_state("hv1"))
    assert "\n" not in str(e.value) and "hv1" in str(e.value)
    was = bmc.powered
    with pytest.raises(PowerError):
        run(d.power_off("hv1"))
    assert bmc.powered == was


def test_a_bmc_that_does_not_answer_is_a_power_error_within_the_timeout(tmp_path: Path) -> None:
    require_ipmi()
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    spec = {
        "driver": "ipmi",
        "address": "127.0.0.1",
        "port": free_udp_port(),
        "username": "admin",
        "password_file": str(pw),
        "timeout_s": 3.0,
        "retries": 0,
        "attempt_timeout_s": 1,
    }
    d = driver_for("hv9", parse_power_spec("hv9", spec))
    with pytest.raises(PowerError) as e:
        run(d.power_on("hv9"))
    assert "hv9" in str(e.value) and "\n" not in str(e.value)


def test_missing_password_file_is_a_power_error(tmp_path: Path) -> None:
    spec = {
        "driver": "ipmi",
        "address": "127.0.0.1",
        "username": "admin",
        "password_file": str(tmp_path / "absent"),
    }
    d = driver_for("hv1", parse_power_spec("hv1", spec))
    with pytest.raises(PowerError, match="password file"):
        run(d.power_state("hv1"))
