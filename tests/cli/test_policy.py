"""`rebalancerd validate`, `policy schema`, `policy show`, and the pieces of `policy diff`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rebalancerd.cli.main import main
from rebalancerd.domain.plan import (
    Migration,
    MigrationPlan,
    PlanStats,
    PlanStep,
    Reason,
    ReasonKind,
)
from rebalancerd.policy.reference import reference_markdown
from rebalancerd.policy.schema import policy_json_schema_text
from rebalancerd.policy.whatif import diff_plans, net_moves

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"


def test_committed_schema_is_in_sync() -> None:
    committed = (ROOT / "policies" / "schema.json").read_text(encoding="utf-8")
    assert committed == policy_json_schema_text(), (
        "policies/schema.json is out of date: "
        "run `rebalancerd policy schema > policies/schema.json`"
    )


def test_docs_reference_is_in_sync() -> None:
    docs = (ROOT / "docs" / "policies.md").read_text(encoding="utf-8")
    assert reference_markdown() in docs, (
        "docs/policies.md reference is out of date: paste `rebalancerd policy schema --markdown`"
    )


def test_every_field_has_a_description_and_default_in_the_schema() -> None:
    schema = json.loads(policy_json_schema_text())
    defs = schema["$defs"] | {"Policy": schema}
    for name, d in defs.items():
        for field, spec in d.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field} has no description"
            required = field in d.get("required", [])
            assert required or "default" in spec, f"{name}.{field} has no default"


def test_schema_check_detects_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "schema.json"
    stale.write_text(policy_json_schema_text().replace("Default: 0.85", "Default: 0.9"))
    assert main(["policy", "schema", "--check", str(stale)]) == 1
    assert main(["policy", "schema", "--check", str(ROOT / "policies" / "schema.json")]) == 0


def test_validate_prints_located_problems_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "limits:\n  max_concurent: 3\nmode: drian\n")
    good = tmp_path / "good.yaml"
    good.write_text(HEAD + "mode: drain\n")
    assert main(["validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{bad}:4:3: unknown key 'max_concurent' in limits (did you mean 'max_concurrent'?)",
        f"{bad}:5:7: mode: Input should be 'balance', 'consolidate', 'drain' or 'advisory' "
        "(got 'drian') (did you mean 'drain'?)",
    ]
    assert main(["validate", str(good)]) == 0


def test_validate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "kind: Policy\n")
    assert main(["validate", "--json", str(bad)]) == 1
    probs = json.loads(capsys.readouterr().out)
    assert probs == [
        {
            "file": str(bad),
            "line": 3,
            "column": 1,
            "message": "duplicate key 'kind' (first at line 2)",
        }
    ]
    good = tmp_path / "good.yaml"
    good.write_text(HEAD)
    assert main(["validate", "--json", str(good)]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_validate_directory_checks_the_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(HEAD + "name: x\n")
    (tmp_path / "b.yaml").write_text(HEAD + "name: x\n")
    # each file alone is fine, the directory is not
    assert main(["validate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]) == 0
    assert main(["validate", str(tmp_path)]) == 1
    assert "also used by" in capsys.readouterr().out


def test_validate_examples() -> None:
    examples = sorted(str(p) for p in (ROOT / "policies").glob("*.yaml"))
    assert len(examples) >= 4
    assert main(["validate", *examples, str(ROOT / "policies")]) == 0


def test_show_effective_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(HEAD + "name: a\npriority: 2\nmode: drain\n")
    (tmp_path / "b.yaml").write_text(HEAD + "name: b\nlimits: {max_concurrent: 1}\n")
    assert main(["policy", "show", "--json", str(tmp_path)]) == 0
    eff = json.loads(capsys.readouterr().out)
    assert (eff["name"], eff["mode"], eff["limits"]["max_concurrent"]) == ("a+b", "drain", 1)


def test_diff_with_invalid_policy_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "mode: [\n")
    snap = tmp_path / "s.json"
    snap.write_text('{"version": 1, "hosts": [{"name": "h", "cores": 1, "memory_mib": 1}]}')
    rc = main(["policy", "diff", "--old", str(bad), "--new", str(bad), "--snapshot", str(snap)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rebalancerd: error: invalid policy: {bad}:")


def mig(vm: str, src: str, dst: str, kind: ReasonKind = ReasonKind.BALANCE) -> Migration:
    return Migration(vm, src, dst, Reason(kind, "x"), memory_mib=1024)


def plan(*migs: Migration, imb: tuple[float, float] = (0.5, 0.1)) -> MigrationPlan:
    return MigrationPlan(
        steps=tuple(PlanStep((m,)) for m in migs),
        stats=PlanStats(status="OPTIMAL", imbalance_before=imb[0], imbalance_after=imb[1]),
    )


def test_net_moves_fold_temporary_hops() -> None:
    p = plan(
        mig("a", "h1", "h3", ReasonKind.TEMPORARY),
        mig("b", "h2", "h1"),
        mig("a", "h3", "h2"),
        mig("c", "h1", "h2", ReasonKind.TEMPORARY),
        mig("c", "h2", "h1"),
    )
    moves = net_moves(p)
    assert {v: (m.source, m.target) for v, m in moves.items()} == {
        "a": ("h1", "h2"),
        "b": ("h2", "h1"),
    }


def test_diff_plans_added_removed_changed() -> None:
    old = plan(mig("a", "h1", "h2"), mig("b", "h1", "h3"), mig("c", "h1", "h2"), imb=(0.6, 0.3))
    new = plan(mig("b", "h1", "h4"), mig("c", "h1", "h2"), mig("d", "h3", "h2"), imb=(0.6, 0.1))
    d = diff_plans(old, new)
    assert [m.vm for m in d.added] == ["d"]
    assert [m.vm for m in d.removed] == ["a"]
    assert [(c.old.target, c.new.target) for c in d.changed] == [("h3", "h4")]
    assert [m.vm for m in d.unchanged] == ["c"]
    assert (d.old["imbalance_after"], d.new["imbalance_after"]) == (0.3, 0.1)
    assert (d.old["migrations"], d.new["memory_mib"]) == (3, 3072)
    text = "\n".join(d.lines())
    assert "+ d h3 -> h2" in text and "- a h1 -> h2" in text and "~ b h1 -> h4" in text
    assert "1 added, 1 removed, 1 changed, 1 unchanged" in text
    assert json.loads(json.dumps(d.to_dict()))["same"] is False
    assert diff_plans(old, old).same


def test_policy_diff_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rebalancerd import snapshot as codec
    from rebalancerd.domain.model import ClusterSnapshot, Host, Vm

    hosts = tuple(Host(f"hv0{i}", 16, 65536) for i in range(1, 4))
    vms = (
        Vm("db-1", "hv01", 2, 8192, cpu_used_mc=1000),
        Vm("db-2", "hv01", 2, 8192, cpu_used_mc=1000),
        Vm("a", "hv02", 2, 8192, cpu_used_mc=1000),
        Vm("b", "hv02", 2, 8192, cpu_used_mc=1000),
        Vm("c", "hv03", 2, 8192, cpu_used_mc=1000),
        Vm("d", "hv03", 2, 8192, cpu_used_mc=1000),
    )
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(codec.to_dict(ClusterSnapshot(hosts, vms, taken_at=1.8e9))))
    old = tmp_path / "old"
    old.mkdir()
    (old / "p.yaml").write_text(HEAD + "name: plain\n")
    new = tmp_path / "new"
    new.mkdir()
    (new / "p.yaml").write_text(HEAD + "name: plain\n")
    (new / "aa.yaml").write_text(
        HEAD + "name: aa\nrules:\n  anti_affinity: [{name: db, vms: [db-1, db-2]}]\n"
    )
    args = ["policy", "diff", "--old", str(old), "--new", str(new), "--snapshot", str(snap)]
    assert main([*args, "--time-limit", "1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["removed"] == [] and d["changed"] == []
    db = [m for m in d["added"] if m["vm"] in ("db-1", "db-2")]
    assert len(db) == 1, d["added"]  # one replica leaves hv01 (others may move to make room)
    assert db[0]["source"] == "hv01" and db[0]["reason"].startswith("rule")
    assert d["old"]["migrations"] == 0 and d["new"]["migrations"] >= 1
    assert d["new"]["policy"] in ("aa+plain", "")  # PlanStats.policy, if the planner sets it
    assert main([*args, "--time-limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "\n+ db-" in out and f"{len(d['added'])} added, 0 removed, 0 changed" in out
    # same policy on both sides: nothing changes
    assert (
        main(
            [
                "policy",
                "diff",
                "--old",
                str(old),
                "--new",
                str(old),
                "--snapshot",
                str(snap),
                "--time-limit",
                "1",
                "--now",
                "2027-01-01T00:00:00",
            ]
        )
        == 0
    )
    assert "same moves under both policies" in capsys.readouterr().out


def test_show_at_a_time_applies_schedules(capsys: pytest.CaptureFixture[str]) -> None:
    examples = str(ROOT / "policies")
    assert main(["policy", "show", "--json", examples, "--at", "2026-12-02T23:30:00+01:00"]) == 0
    night = json.loads(capsys.readouterr().out)
    assert (night["mode"], night["at"]) == ("consolidate", 1796250600.0)
    assert main(["policy", "show", "--json", examples, "--at", "1796212800"]) == 0  # 12:00Z
    assert json.loads(capsys.readouterr().out)["mode"] == "balance"
    for bad in ("tomorrow", "nan", "1e300"):
        assert main(["policy", "show", examples, "--at", bad]) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--at" in err
