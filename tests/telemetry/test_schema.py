"""Wire schema: the shipped JSON Schema matches the models; topics; inventory validation."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from rebalancerd.telemetry.inventory import InventoryError, inventory_from_mapping, load_inventory
from rebalancerd.telemetry.schema import (
    Rejection,
    RejectReason,
    TelemetryV1,
    decode_report,
    json_schema,
    parse_topic,
    status_topic,
    telemetry_topic,
)

from .helpers import report, vm


def test_shipped_json_schema_is_current() -> None:
    shipped = json.loads(
        resources.files("rebalancerd").joinpath("schemas/telemetry-v2.json").read_text()
    )
    assert shipped == json.loads(json.dumps(json_schema())), (
        "regenerate rebalancerd/schemas/telemetry-v2.json from telemetry.schema.json_schema()"
    )
    report = shipped["$defs"][shipped["$ref"].rsplit("/", 1)[1]]
    assert report["properties"]["v"]["enum"] == [1, 2]
    assert set(report["required"]) >= {"v", "cluster", "host", "boot", "seq", "ts", "host_stats"}


def test_roundtrip_decode() -> None:
    doc = report("h1", 3, 1_767_225_600.0, [vm("a"), vm("b", state="paused")])
    r = decode_report(json.dumps(doc).encode())
    assert isinstance(r, TelemetryV1)
    assert (r.host, r.seq, [v.name for v in r.vms]) == ("h1", 3, ["a", "b"])
    assert r.vms[1].state == "paused"
    assert r.host_stats.pressure.cpu_some == 0.5


def test_unknown_extra_fields_are_ignored_for_forward_compatibility() -> None:
    doc = report("h1", 3, 1_767_225_600.0, future_field={"x": 1})
    assert isinstance(decode_report(json.dumps(doc)), TelemetryV1)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff\xfe", b"null", b"1e999999", b'{"v":1}' * 3, b"[" * 100_000, b'"' + b"a" * 10],
)
def test_garbage_never_raises(payload: bytes) -> None:
    r = decode_report(payload)
    assert isinstance(r, Rejection)
    assert isinstance(r.reason, RejectReason) and r.detail


def test_topics() -> None:
    assert telemetry_topic("c1", "h1") == "rebalancer/v1/c1/hosts/h1/telemetry"
    assert parse_topic(telemetry_topic("c1", "h1")) == ("c1", "h1", "telemetry")
    assert parse_topic(status_topic("c1", "h1")) == ("c1", "h1", "status")
    for bad in ["", "rebalancer/v2/c/hosts/h/telemetry", "rebalancer/v1/c/hosts/h", "a/b/c/d/e/f"]:
        assert parse_topic(bad) is None


def test_inventory_validation(tmp_path: Path) -> None:
    inv = inventory_from_mapping(
        [{"name": "hv1", "libvirt_uri": "qemu+tls://hv1/system", "cores": 8, "memory_mib": 1024}]
    )
    assert "hv1" in inv and inv["hv1"].cores == 8 and inv.get("nope") is None
    assert inv["hv1"].to_host().cpu_capacity_mc == 8000
    bad = [
        {"name": "hv;1", "libvirt_uri": "qemu:///system", "cores": 1, "memory_mib": 1},
        {"name": "hv1", "libvirt_uri": "http://x/", "cores": 1, "memory_mib": 1},
        {"name": "hv1", "libvirt_uri": "qemu+ssh://x/system;reboot", "cores": 1, "memory_mib": 1},
        {"name": "hv1", "libvirt_uri": "qemu:///system", "cores": 0, "memory_mib": 1},
        {"name": "hv1", "libvirt_uri": "qemu:///system", "cores": 1, "memory_mib": 1, "x": 1},
    ]
    for host in bad:
        with pytest.raises(InventoryError):
            inventory_from_mapping([host])
    dup = {"name": "a", "libvirt_uri": "qemu:///system", "cores": 1, "memory_mib": 1}
    with pytest.raises(InventoryError, match="twice"):
        inventory_from_mapping([dup, dup])
    f = tmp_path / "inv.yaml"
    f.write_text("hosts:\n  - {name: a, libvirt_uri: 'test:///default', cores: 2, memory_mib: 8}\n")
    assert load_inventory(f).names == ["a"]
    f.write_text("hosts: [\n")
    with pytest.raises(InventoryError, match="YAML"):
        load_inventory(f)
    with pytest.raises(InventoryError):
        load_inventory(tmp_path / "missing.yaml")


def test_telemetry_package_cannot_reach_the_network() -> None:
    """The decoding/collector layer has no way to contact an address or run a command: it
    imports no socket, MQTT, libvirt, subprocess or HTTP module (the MQTT edge is adapters/)."""
    import ast

    forbidden = {"socket", "aiomqtt", "paho", "libvirt", "subprocess", "urllib", "http", "os"}
    pkg = Path(__file__).resolve().parents[2] / "rebalancerd" / "telemetry"
    files = sorted(pkg.glob("*.py"))
    assert len(files) >= 4
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{f.name} imports {n}"
