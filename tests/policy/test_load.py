"""Loading one policy document: safe YAML, located errors, contradictions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rebalancerd.adapters.policy_files import load_policy_file
from rebalancerd.policy.issues import PolicyError, PolicyIssue
from rebalancerd.policy.parse import MAX_FILE_BYTES, load_policy_text, parse_policy_text
from rebalancerd.policy.schema import Mode, default_policy

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))


def problems(text: str | bytes) -> list[PolicyIssue]:
    parsed = parse_policy_text(text, "p.yaml")
    assert parsed.policy is None, "expected the document to be rejected"
    assert parsed.problems
    return parsed.problems


def only(text: str | bytes) -> PolicyIssue:
    ps = problems(text)
    assert len(ps) == 1, ps
    return ps[0]


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "balance.yaml",
        "consolidate-nightly.yaml",
        "maintenance.yaml",
        "anti-affinity.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_validates(path: Path) -> None:
    policy = load_policy_file(path)
    assert policy.name == path.stem


def test_three_line_policy_is_the_default_with_its_mode() -> None:
    p = load_policy_text(HEAD + "mode: consolidate\n")
    assert p.mode is Mode.CONSOLIDATE
    assert p.model_copy(update={"mode": Mode.BALANCE}) == default_policy()


def test_unknown_key_is_located_with_a_suggestion() -> None:
    p = only(HEAD + "limits:\n  max_concurent: 3\n")
    assert (p.file, p.line, p.column) == ("p.yaml", 4, 3)
    assert "unknown key 'max_concurent'" in p.message
    assert "did you mean 'max_concurrent'?" in p.message
    assert str(p).startswith("p.yaml:4:3: ")


def test_key_at_the_wrong_level_says_where_it_belongs() -> None:
    p = only(HEAD + "hysteresis: 0.1\n")
    assert (p.line, p.column) == (3, 1)
    assert "targets.hysteresis" in p.message


def test_wrong_type_and_range_point_at_the_value() -> None:
    ps = problems(HEAD + "limits:\n  max_concurrent: -1\n  cooldown_s: soon\n")
    assert [(p.line, p.column) for p in ps] == [(4, 19), (5, 15)]
    assert "limits.max_concurrent" in ps[0].message and "greater than or equal" in ps[0].message
    assert "limits.cooldown_s" in ps[1].message and "'soon'" in ps[1].message


def test_enum_value_typo_gets_a_suggestion() -> None:
    p = only(HEAD + "mode: balnce\n")
    assert (p.line, p.column) == (3, 7)
    assert "did you mean 'balance'?" in p.message


def test_missing_header_is_reported() -> None:
    ps = problems("mode: balance\n")
    msgs = " ".join(p.message for p in ps)
    assert "apiVersion: required key missing" in msgs and "kind: required key missing" in msgs


def test_wrong_api_version() -> None:
    p = only("apiVersion: rebalancerd/v2\nkind: Policy\n")
    assert (p.line, p.column) == (1, 13) and "rebalancerd/v1" in p.message


def test_model_level_error_points_at_the_section() -> None:
    p = only(HEAD + "targets:\n  low_watermark: 0.9\n  high_watermark: 0.5\n")
    assert p.line == 4 and "low_watermark (0.9) must be below high_watermark (0.5)" in p.message


def test_duplicate_keys_are_rejected() -> None:
    p = only(HEAD + "limits:\n  max_concurrent: 1\n  max_concurrent: 9\n")
    assert (p.line, p.column) == (5, 3)
    assert "duplicate key 'max_concurrent' (first at line 4)" in p.message


def test_duplicate_top_level_key() -> None:
    p = only(HEAD + "mode: drain\nmode: balance\n")
    assert p.line == 4 and "duplicate key 'mode'" in p.message


def test_yaml_11_booleans_and_sexagesimals_are_not_guessed() -> None:
    # 'yes' is not a boolean and 12:30 is not the integer 750.
    p = load_policy_text(HEAD + "limits:\n  windows:\n  - {start: 12:30, end: 23:00}\n")
    assert p.limits.windows[0].start == "12:30"
    bad = only(HEAD + "dry_run: maybe\n")
    assert "dry_run" in bad.message
    # 'on' stays the string 'on' and is not a valid boolean for pydantic either way
    assert load_policy_text(HEAD + "dry_run: true\n").dry_run is True


def test_timestamps_stay_strings() -> None:
    p = load_policy_text(HEAD + "rules:\n  maintenance:\n  - {host: h1, start: 2026-01-01}\n")
    assert p.rules.maintenance[0].start == "2026-01-01"


def test_syntax_error_is_located() -> None:
    p = only(HEAD + "limits: [1, 2\nmode: x\n")
    assert p.file == "p.yaml" and p.line >= 3


def test_python_tags_are_refused() -> None:
    p = only("apiVersion: !!python/object/apply:os.system [echo hi]\nkind: Policy\n")
    assert "unsupported YAML tag" in p.message and p.line == 1


def test_explicit_tag_with_wrong_value() -> None:
    p = only(HEAD + "priority: !!int ten\n")
    assert "is not a valid int" in p.message and (p.line, p.column) == (3, 11)


def test_merge_keys_are_refused() -> None:
    p = only(HEAD + "x: &base {max_concurrent: 1}\nlimits:\n  <<: *base\n")
    assert "merge keys" in p.message and p.line == 5


def test_non_scalar_key() -> None:
    p = only(HEAD + "? [a, b]\n: 1\n")
    assert "keys must be plain strings" in p.message


def test_two_documents_in_one_file() -> None:
    p = only(HEAD + "---\n" + HEAD)
    assert "one YAML document" in p.message


def test_top_level_must_be_a_mapping() -> None:
    assert "mapping" in only("- a\n- b\n").message
    assert "empty" in only("").message
    assert "empty" in only("# only a comment\n").message


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    t0 = time.perf_counter()
    p = only("\n".join(lines) + "\n")
    assert "alias bomb" in p.message or "aliases" in p.message
    assert time.perf_counter() - t0 < 30  # generous: it must not expand 9**9 nodes


def test_many_aliases_are_refused() -> None:
    doc = HEAD + "x: &x 1\ny: [" + ", ".join(["*x"] * 100) + "]\n"
    assert "more than 64 aliases" in only(doc).message


def test_recursive_alias_is_refused() -> None:
    assert "recursive" in only(HEAD + "x: &x [*x]\n").message


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    p = only("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested deeper" in p.message
    p = only("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60)))
    assert "nested deeper" in p.message


def test_oversized_document_is_refused() -> None:
    p = only(HEAD + "name: x\n" + "#" * (MAX_FILE_BYTES + 1) + "\n")
    assert "too large" in p.message


def test_huge_numbers() -> None:
    assert "too large" in only(HEAD + "priority: " + "9" * 5000 + "\n").message
    assert "finite" in only(HEAD + "targets:\n  hysteresis: 1e999\n").message
    assert "finite" in only(HEAD + "targets:\n  hysteresis: .nan\n").message
    assert "less than or equal" in only(HEAD + "priority: " + "9" * 40 + "\n").message


def test_unicode_is_fine_and_bad_bytes_are_located() -> None:
    p = load_policy_text(HEAD + "name: équilibre-数据\n")
    assert p.name == "équilibre-数据"
    bad = only(HEAD.encode() + b"name: caf\xe9\n")
    assert "UTF-8" in bad.message and bad.line == 3
    ctrl = only(HEAD + "name: a\x07b\n")
    assert "unacceptable character" in ctrl.message and ctrl.line == 3


def test_invalid_timezone_and_times() -> None:
    assert "unknown time zone" in only(HEAD + "limits: {timezone: Mars/Olympus}\n").message
    assert "unknown time zone" in only(HEAD + "limits: {timezone: ../../etc/passwd}\n").message
    assert "HH:MM" in only(HEAD + "limits:\n  windows: [{start: '25:00'}]\n").message
    assert (
        "empty" in only(HEAD + "limits:\n  blackouts: [{start: '10:00', end: '10:00'}]\n").message
    )


def test_maintenance_window_end_before_start() -> None:
    p = only(
        HEAD + "rules:\n  maintenance:\n  - host: h1\n"
        "    start: '2026-02-01T10:00:00'\n    end: '2026-02-01T09:00:00'\n"
    )
    assert "not after start" in p.message and p.line == 5
    assert (
        "ISO 8601" in only(HEAD + "rules:\n  maintenance:\n  - {host: h1, end: tomorrow}\n").message
    )


def test_power_hooks_are_argument_lists_never_shell() -> None:
    on = "  power_on: [/usr/bin/wake, '{host}']\n"
    assert (
        "argument list"
        in only(HEAD + "energy:\n  power_off: ['ipmitool -H {host} power off']\n" + on).message
    )
    assert (
        "never a shell"
        in only(HEAD + "energy:\n  power_off: [/bin/sh, -c, 'poweroff {host}']\n" + on).message
    )
    assert "power_on" in only(HEAD + "energy:\n  power_off: [/usr/bin/off, '{host}']\n").message
    ok = load_policy_text(HEAD + "energy:\n  power_off: [/usr/bin/off, '{host}']\n" + on)
    assert ok.energy.power_off == ["/usr/bin/off", "{host}"]


def test_postcopy_after_the_budget_is_contradictory() -> None:
    p = only(HEAD + "migration:\n  default: {postcopy_after_s: 400, time_budget_s: 300}\n")
    assert "post-copy never starts" in p.message


# -- contradictions --------------------------------------------------------------------------


def rules(body: str) -> str:
    return HEAD + "rules:\n" + body


def test_affinity_and_anti_affinity_with_the_same_vms() -> None:
    p = only(
        rules(
            "  affinity:\n  - {name: together, vms: [a, b]}\n"
            "  anti_affinity:\n  - {name: apart, vms: [a, b]}\n"
        )
    )
    assert (p.line, p.column) == (7, 28)
    assert "'a' and 'b'" in p.message and "'together'" in p.message


def test_affinity_is_transitive() -> None:
    p = only(
        rules(
            "  affinity:\n  - {name: g1, vms: [a, b]}\n  - {name: g2, vms: [b, c]}\n"
            "  anti_affinity:\n  - {name: apart, vms: [a, x, c]}\n"
        )
    )
    assert "'a' and 'c'" in p.message and "'g1', 'g2'" in p.message


def test_unrelated_affinity_and_anti_affinity_are_fine() -> None:
    load_policy_text(
        rules(
            "  affinity:\n  - {name: g1, vms: [a, b]}\n"
            "  anti_affinity:\n  - {name: apart, vms: [a, c]}\n"
        )
    )


def test_hard_pins_to_disjoint_hosts() -> None:
    p = only(rules("  pins:\n  - {vm: a, hosts: [h1, h2]}\n  - {vm: a, hosts: [h3]}\n"))
    assert p.line == 6 and "disjoint" in p.message
    # soft or overlapping pins are fine
    load_policy_text(rules("  pins:\n  - {vm: a, hosts: [h1, h2]}\n  - {vm: a, hosts: [h2]}\n"))
    load_policy_text(
        rules("  pins:\n  - {vm: a, hosts: [h1]}\n  - {vm: a, hosts: [h3], hard: false}\n")
    )


def test_pin_to_zero_hosts() -> None:
    assert "at least 1" in only(rules("  pins:\n  - {vm: a, hosts: []}\n")).message


def test_pin_to_host_in_maintenance_forever() -> None:
    p = only(rules("  pins:\n  - {vm: a, hosts: [h1]}\n  maintenance:\n  - host: 'h*'\n"))
    assert "in maintenance with no end" in p.message and p.line == 5
    # a scheduled maintenance ends: fine
    load_policy_text(
        rules(
            "  pins:\n  - {vm: a, hosts: [h1]}\n  maintenance:\n"
            "  - {host: h1, start: '2026-01-01T00:00:00', end: '2026-01-02T00:00:00'}\n"
        )
    )
    # another host of the pin is usable: fine
    load_policy_text(rules("  pins:\n  - {vm: a, hosts: [h1, h2]}\n  maintenance:\n  - host: h1\n"))


def test_pin_outside_the_scope() -> None:
    p = only(
        HEAD
        + "scope: {hosts: ['rack1-*']}\n"
        + rules("  pins:\n  - {vm: a, hosts: [h9]}\n")[len(HEAD) :]
    )
    assert "outside this policy's scope" in p.message


def test_anti_affine_vms_pinned_to_their_only_host() -> None:
    p = only(
        rules(
            "  anti_affinity:\n  - {name: apart, vms: [a, b, c]}\n"
            "  pins:\n  - {vm: a, hosts: [h1]}\n  - {vm: b, hosts: [h1]}\n"
        )
    )
    assert "must be apart" in p.message and (p.line, p.column) == (5, 24)
    # three anti-affine VMs on two hosts cannot work either
    p = only(
        rules(
            "  anti_affinity:\n  - {name: apart, vms: [a, b, c]}\n"
            "  pins:\n  - {vm: a, hosts: [h1, h2]}\n  - {vm: b, hosts: [h1, h2]}\n"
            "  - {vm: c, hosts: [h2, h1]}\n"
        )
    )
    assert "only 2 host(s)" in p.message
    # two hosts for two VMs is fine
    load_policy_text(
        rules(
            "  anti_affinity:\n  - {name: apart, vms: [a, b]}\n"
            "  pins:\n  - {vm: a, hosts: [h1, h2]}\n  - {vm: b, hosts: [h1, h2]}\n"
        )
    )


def test_affine_vms_pinned_apart() -> None:
    p = only(
        rules(
            "  affinity:\n  - {name: together, vms: [a, b]}\n"
            "  pins:\n  - {vm: a, hosts: [h1]}\n  - {vm: b, hosts: [h2]}\n"
        )
    )
    assert "no host in common" in p.message


def test_group_listing_a_vm_twice() -> None:
    p = only(rules("  anti_affinity:\n  - {name: g, vms: [a, a]}\n"))
    assert "lists 'a' twice" in p.message


def test_policy_error_lists_every_problem(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(HEAD + "limits:\n  max_concurent: 1\nmode: nope\n")
    with pytest.raises(PolicyError) as ei:
        load_policy_file(f)
    lines = str(ei.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{f}:") for line in lines)
    assert len(ei.value.problems) == 2


def test_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file"):
        load_policy_file(tmp_path / "nope.yaml")
