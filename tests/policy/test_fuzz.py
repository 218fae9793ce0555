"""Hypothesis: whatever the document, the loader returns a Policy or located problems, never
raises; valid policies load faithfully; duplicate keys and alias bombs are always refused."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rebalancerd.policy.document import Parsed
from rebalancerd.policy.parse import _FIELD_PATHS, parse_policy_text
from rebalancerd.policy.safe_yaml import MAX_NODES
from rebalancerd.policy.schema import Policy

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = sorted(_FIELD_PATHS)


def yaml_lines(text: str | bytes) -> int:
    """An upper bound of the line count as YAML counts lines (CR, LF, NEL, LS and PS break)."""
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return sum(s.count(c) for c in ("\n", "\r", "\x85", "\u2028", "\u2029")) + 2


def check_outcome(parsed: Parsed, text: str | bytes) -> None:
    """The loader's contract: exactly one of policy / problems, problems located in the text."""
    if parsed.policy is not None:
        assert parsed.problems == []
        return
    assert parsed.problems, "rejected without a problem"
    n_lines = yaml_lines(text)
    for p in parsed.problems:
        assert p.file == "f.yaml"
        assert 1 <= p.line <= n_lines, p
        assert p.column >= 1
        assert p.message and "\n" not in p.message.strip(), p
        assert str(p).startswith(f"f.yaml:{p.line}:{p.column}: ")


scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.sampled_from(["balance", "drain", "rebalancerd/v1", "Policy", "22:00", "yes", "on", "~"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=30,
)


class QuotingDumper(yaml.SafeDumper):
    """PyYAML writes YAML 1.1: it leaves strings such as '0E0' bare, which the loader reads the
    YAML 1.2 way (a float). Quote every string so a dump means the same under both."""


QuotingDumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style='"')
)


def dump(data: Any, style: int) -> str:
    if style == 0:
        return json.dumps(data, allow_nan=True)
    return yaml.dump(data, Dumper=QuotingDumper, default_flow_style=style == 1, allow_unicode=True)


@SETTINGS
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_arbitrary_text_never_crashes(text: str | bytes) -> None:
    check_outcome(parse_policy_text(text, "f.yaml"), text)


@SETTINGS
@given(documents, st.booleans(), st.integers(0, 2))
def test_random_documents_load_or_are_located(doc: Any, header: bool, style: int) -> None:
    if header and isinstance(doc, dict):
        doc = {"apiVersion": "rebalancerd/v1", "kind": "Policy", **doc}
    text = dump(doc, style)
    parsed = parse_policy_text(text, "f.yaml")
    check_outcome(parsed, text)
    if parsed.policy is not None:
        # accepted means the models accept what the file says
        assert Policy.model_validate(doc) == parsed.policy


# PyYAML's dumper writes NEL / LS / PS raw inside quoted scalars, where YAML folds them into a
# space on reading (any YAML reader, PyYAML's own too): keep them out of the round trip.
names = st.text(
    st.characters(blacklist_characters="\x85\u2028\u2029", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=30,
)

policies = st.fixed_dictionaries(
    {
        "apiVersion": st.just("rebalancerd/v1"),
        "kind": st.just("Policy"),
    },
    optional={
        "name": names.map(str.strip).filter(bool),
        "priority": st.integers(-1000, 1000),
        "mode": st.sampled_from(["balance", "consolidate", "drain", "advisory"]),
        "dry_run": st.booleans(),
        "scope": st.fixed_dictionaries(
            {}, optional={"vms": st.lists(st.sampled_from(["web-*", "db-1", "x"]), max_size=3)}
        ),
        "targets": st.fixed_dictionaries(
            {},
            optional={
                "hysteresis": st.floats(0, 1),
                "headroom": st.floats(0, 0.9),
                "prediction": st.fixed_dictionaries(
                    {"window": st.integers(1, 10_000), "percentile": st.floats(1, 100)}
                ),
            },
        ),
        "limits": st.fixed_dictionaries(
            {},
            optional={
                "max_concurrent": st.integers(0, 1000),
                "max_mib_per_hour": st.none() | st.integers(0, 10**12),
                "cooldown_s": st.floats(0, 30 * 86400),
                "timezone": st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]),
                "windows": st.lists(
                    st.fixed_dictionaries(
                        {
                            "start": st.sampled_from(["00:00", "06:30", "22:00"]),
                            "end": st.sampled_from(["05:00", "12:00", "24:00"]),
                        }
                    ),
                    max_size=2,
                ),
            },
        ),
        "rules": st.fixed_dictionaries(
            {},
            optional={
                "anti_affinity": st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.sampled_from(["g1", "g2"]),
                            "vms": st.lists(
                                st.sampled_from(["a", "b", "c", "d"]),
                                min_size=2,
                                max_size=3,
                                unique=True,
                            ),
                        }
                    ),
                    max_size=2,
                ),
                "exclusions": st.lists(
                    st.text(min_size=1, max_size=10).map(str.strip).filter(bool)
                ),
            },
        ),
    },
)


@SETTINGS
@given(policies, st.integers(0, 2))
def test_valid_policies_load_faithfully(doc: dict[str, Any], style: int) -> None:
    text = dump(doc, style)
    parsed = parse_policy_text(text, "f.yaml")
    assert parsed.policy is not None, parsed.problems
    assert parsed.policy == Policy.model_validate(doc)
    # and what we load we can write back and load again
    again = dump(parsed.policy.model_dump(mode="json"), 2)
    assert parse_policy_text(again, "f.yaml").policy == parsed.policy


@SETTINGS
@given(policies, st.data())
def test_a_duplicated_key_is_always_refused(doc: dict[str, Any], data: st.DataObject) -> None:
    text = yaml.safe_dump(doc, default_flow_style=False, allow_unicode=True, width=10**6)
    lines = text.splitlines()
    top = [i for i, line in enumerate(lines) if line and not line[0].isspace()]
    i = data.draw(st.sampled_from(top))
    key = lines[i].split(":")[0]
    dup = f"{key}: x"
    text2 = "\n".join([*lines, dup]) + "\n"
    parsed = parse_policy_text(text2, "f.yaml")
    check_outcome(parsed, text2)
    assert parsed.policy is None
    assert any(
        f"duplicate key {key!r}" in p.message and p.line == len(lines) + 1 for p in parsed.problems
    ), parsed.problems


@SETTINGS
@given(st.integers(2, 12), st.integers(2, 9), st.booleans())
def test_alias_bombs_are_refused_or_small(fan: int, depth: int, flow: bool) -> None:
    lines = ["a0: &a0 [" + ",".join(["lol"] * fan) + "]"]
    for i in range(1, depth):
        refs = [f"*a{i - 1}"] * fan
        lines.append(f"a{i}: &a{i} [" + ",".join(refs) + "]" if flow else f"a{i}: &a{i}")
        if not flow:
            lines += [f"  - {r}" for r in refs]
    text = "apiVersion: rebalancerd/v1\nkind: Policy\n" + "\n".join(lines) + "\n"
    parsed = parse_policy_text(text, "f.yaml")
    check_outcome(parsed, text)
    assert parsed.policy is None  # a0.. are unknown keys anyway; the point is how it is refused
    expanded = sum(fan**k for k in range(1, depth + 1)) + depth
    aliases = fan * (depth - 1)
    limited = any("alias" in p.message for p in parsed.problems)
    if expanded > MAX_NODES or aliases > 64:
        assert limited, parsed.problems
    else:
        assert not limited and any("unknown key 'a0'" in p.message for p in parsed.problems)


@SETTINGS
@given(st.integers(1, 4000), st.sampled_from(["[", "{a: ", "- "]))
def test_any_nesting_depth_is_handled(depth: int, opener: str) -> None:
    if opener == "- ":
        text = "".join("  " * i + "- \n" for i in range(min(depth, 400)))
    else:
        closer = "]" if opener == "[" else "}"
        text = "a: " + opener * depth + "1" + closer * depth + "\n"
    parsed = parse_policy_text(text, "f.yaml")
    check_outcome(parsed, text)


@SETTINGS
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**4200), 10**4200))
def test_hostile_numbers_are_refused_with_a_location(x: float | int) -> None:
    value = repr(x) if isinstance(x, float) else str(x)
    value = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}.get(value, value)
    text = f"apiVersion: rebalancerd/v1\nkind: Policy\ntargets:\n  hysteresis: {value}\n"
    parsed = parse_policy_text(text, "f.yaml")
    check_outcome(parsed, text)
    ok = isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))
    if ok and 0 <= x <= 1:
        assume(not (isinstance(x, float) and x != 0 and abs(x) < 1e-300))  # denormal repr noise
        assert parsed.policy is not None and parsed.policy.targets.hysteresis == float(x)
    else:
        assert parsed.policy is None
        assert parsed.problems[0].line == 4
