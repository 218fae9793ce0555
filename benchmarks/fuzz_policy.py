"""Fuzz the policy loader: >= 100,000 generated inputs, zero crashes, every rejection counted.

Inputs (seeded, reproducible):
- mutations of the example policies (character/line edits, typos in keys, hostile values:
  huge integers, .inf/.nan, unicode, control characters, wrong types, duplicated lines);
- random YAML documents (random keys from the schema and random strings, random nesting and
  scalar types), dumped as block or flow YAML or JSON;
- valid random policies (should be accepted unless they contradict themselves);
- alias bombs, deep nesting, many aliases, recursive aliases, oversized documents;
- hostile documents: deep flow/block/JSON nesting inside a valid policy, huge and tiny numbers
  in every numeric field, bools and strings where numbers go, binary with a BOM, NUL bytes;
- random bytes and random unicode text;
- special files, through the file loader (``adapters.policy_files``) and the daemon config
  loader: a FIFO, /dev/zero, a directory, a symlink loop, a dangling symlink, an oversized
  file, binary; each must be refused in one located line within a second, never read or hang.

A crash is any exception escaping the loader, or a rejection without a located problem
(line/column inside the document, the right file name). Every rejection is counted by the kind of
its first problem.

The baseline, run in the same process on a sample of the same inputs, is PyYAML's own
``yaml.compose`` with ``yaml.SafeLoader`` (parsing only, no limits, no validation): the ratio says
what the limits, the located validation and the contradiction checks cost on top of parsing.

    .venv/bin/python benchmarks/fuzz_policy.py [--inputs 100000] [--seed 1] [--workers 2]

Last line: JSON with inputs, crashes, rejected, accepted, inputs_per_s (and more).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import random
import string
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rebalancerd.policy.parse import _FIELD_PATHS, parse_policy_text  # noqa: E402

EXAMPLES = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "policies").glob("*.yaml"))]
KEYS = sorted(_FIELD_PATHS)
HOSTILE = [
    "9" * 5000,
    "-" + "9" * 50,
    "1e999",
    "-.inf",
    ".nan",
    "0x1F",
    "0o17",
    "1_000",
    "12:30:00",
    "yes",
    "off",
    "~",
    "null",
    "''",
    '"\\u0000"',
    "!!binary aGVsbG8=",
    "!!python/object/apply:os.system ['id']",
    "!!timestamp 2001-12-14",
    "!!set {a, b}",
    "&a [*a]",
    "*undefined",
    "[1, [2, [3, [4]]]]",
    "{a: 1, a: 2}",
    "|\n  block",
    "'😀💥'",
    "\u202e\u0301",
    "\x00",
    "\x07",
    "\ufeff",
    "? [a]\n: b",
    "<<: {x: 1}",
    "%YAML 1.1",
    "---",
    "...",
    "- - - -",
    "@reserved",
    "`tick",
]
UNICODE = "aé数据🙂\u0301\u200b\u202e\t\\\"'#:-[]{}&*!|>%@`,?\n "


def yaml_lines(text: str | bytes) -> int:
    """An upper bound of the line count as YAML counts lines (CR, LF, NEL, LS and PS break)."""
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return sum(s.count(c) for c in ("\n", "\r", "\x85", "\u2028", "\u2029")) + 2


def _rand_text(rng: random.Random, n: int) -> str:
    alphabet = rng.choice([string.printable, UNICODE, string.ascii_letters + ":-[]{} \n#&*"])
    return "".join(rng.choice(alphabet) for _ in range(n))


def _rand_scalar(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.2:
        return rng.randint(-(10**6), 10**6)
    if r < 0.25:
        return rng.choice([10**30, -(10**30), 2**63, 10**300])
    if r < 0.4:
        return rng.choice([0.0, 0.5, 1.0, -0.1, 1e308, float("inf"), float("nan"), 1e-320])
    if r < 0.5:
        return rng.choice([True, False, None])
    if r < 0.75:
        return rng.choice(
            ["balance", "drain", "consolidate", "advisory", "rebalancerd/v1", "Policy"]
        )
    return _rand_text(rng, rng.randint(0, 12))


def _rand_value(rng: random.Random, depth: int) -> Any:
    r = rng.random()
    if depth > 4 or r < 0.55:
        return _rand_scalar(rng)
    if r < 0.75:
        return [_rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return _rand_mapping(rng, depth + 1)


def _rand_key(rng: random.Random) -> str:
    if rng.random() < 0.8:
        k = rng.choice(KEYS)
        if rng.random() < 0.15:  # typo
            i = rng.randrange(len(k))
            k = k[:i] + rng.choice(string.ascii_lowercase) + k[i + 1 :]
        return k
    return _rand_text(rng, rng.randint(1, 10))


def _rand_mapping(rng: random.Random, depth: int) -> dict[str, Any]:
    return {_rand_key(rng): _rand_value(rng, depth) for _ in range(rng.randint(0, 6))}


def _dump(rng: random.Random, data: Any) -> str:
    r = rng.random()
    try:
        if r < 0.3:
            return json.dumps(data, ensure_ascii=rng.random() < 0.5)
        return yaml.safe_dump(data, default_flow_style=r < 0.5, allow_unicode=True, sort_keys=False)
    except (ValueError, yaml.YAMLError):
        return repr(data)


def _valid_policy(rng: random.Random) -> dict[str, Any]:
    vms = [f"vm{i}" for i in range(rng.randint(2, 8))]
    hosts = [f"h{i}" for i in range(rng.randint(1, 5))]
    low = rng.uniform(0, 0.5)
    doc: dict[str, Any] = {
        "apiVersion": "rebalancerd/v1",
        "kind": "Policy",
        "name": rng.choice(["a", "nightly", "équilibre", "p-" + str(rng.randint(0, 999))]),
        "priority": rng.randint(-1000, 1000),
        "mode": rng.choice(["balance", "consolidate", "drain", "advisory"]),
        "targets": {
            "low_watermark": round(low, 3),
            "high_watermark": round(rng.uniform(low + 0.01, 1.0), 3),
            "hysteresis": round(rng.uniform(0, 1), 3),
        },
        "limits": {
            "max_concurrent": rng.randint(0, 1000),
            "max_per_cycle": rng.randint(0, 100_000),
            "cooldown_s": rng.randint(0, 86400),
            "windows": [
                {
                    "days": rng.sample(["mon", "tue", "wed", "sun"], 2),
                    "start": "22:00",
                    "end": "06:00",
                }
            ],
        },
        "rules": {
            "anti_affinity": [{"name": "g", "vms": rng.sample(vms, 2)}],
            "pins": [
                {"vm": rng.choice(vms), "hosts": rng.sample(hosts, rng.randint(1, len(hosts)))}
            ],
            "maintenance": [{"host": rng.choice(hosts), "end": "2030-01-01T00:00:00"}],
        },
    }
    if rng.random() < 0.5:
        doc["rules"]["affinity"] = [{"name": "t", "vms": rng.sample(vms, 2), "hard": False}]
    return doc


def _bomb(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:  # billion laughs
        fan, depth = rng.randint(2, 12), rng.randint(2, 10)
        lines = ["a0: &a0 [" + ",".join(["lol"] * fan) + "]"]
        for i in range(1, depth):
            lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]")
        return "\n".join(lines) + "\n"
    if kind == 1:  # deep nesting, flow or block
        d = rng.randint(10, 3000)
        if rng.random() < 0.5:
            return "a: " + "[" * d + "]" * d
        return "".join("  " * i + f"k{i}:\n" for i in range(min(d, 300)))
    if kind == 2:  # many aliases
        return "x: &x 1\ny: [" + ", ".join(["*x"] * rng.randint(1, 500)) + "]\n"
    if kind == 3:  # recursion
        return rng.choice(["a: &a [*a]\n", "a: &a {b: *a}\n", "&a [*a, *a]\n"])
    return "apiVersion: rebalancerd/v1\nkind: Policy\nname: " + "x" * rng.randint(100, 300_000)


def _mutate(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        i = rng.randrange(len(lines))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])  # duplicate a line (keys!)
        elif op == 2 and ":" in lines[i]:
            k, _, _v = lines[i].partition(":")
            lines[i] = f"{k}: {rng.choice(HOSTILE)}"
        elif op == 3 and lines[i]:
            j = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:j] + rng.choice(UNICODE) + lines[i][j + 1 :]
        elif op == 4:
            lines[i] = " " * rng.randint(0, 6) + lines[i].lstrip()
        elif op == 5 and ":" in lines[i]:
            k, sep, v = lines[i].partition(":")
            lines[i] = k.replace(k.strip(), _rand_key(rng)) + sep + v
        elif op == 6:
            lines.insert(i, f"{_rand_key(rng)}: {_dump(rng, _rand_value(rng, 3)).strip()}")
        else:
            j, k = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[j], lines[k] = lines[k], lines[j]
    return "\n".join(lines)


NUMERIC_FIELDS = [
    "priority: {}",
    "limits: {{max_concurrent: {}}}",
    "limits: {{max_mib_per_hour: {}}}",
    "targets: {{headroom: {}}}",
    "targets: {{weights: {{cpu: {}}}}}",
    "targets: {{prediction: {{window: {}}}}}",
    "migration: {{default: {{max_downtime_ms: {}}}}}",
    "energy: {{min_active_hosts: {}}}",
]
HUGE = ["9" * 400, "-" + "9" * 400, "1e308", "1e309", "-1e309", "2e-324", "true", "'3'", "1.0"]


def _hostile(rng: random.Random) -> str | bytes:
    head = "apiVersion: rebalancerd/v1\nkind: Policy\n"
    kind = rng.randrange(5)
    if kind == 0:  # a number field with a huge, tiny or wrongly typed value
        return head + rng.choice(NUMERIC_FIELDS).format(rng.choice(HUGE)) + "\n"
    if kind == 1:  # deep nesting where a list or mapping is expected
        d = rng.randint(50, 5000)
        return head + "rules: {exclusions: " + "[" * d + "]" * d + "}\n"
    if kind == 2:  # JSON, deeply nested objects
        d = rng.randint(50, 2000)
        return (
            '{"apiVersion": "rebalancerd/v1", "kind": "Policy", "x": '
            + '{"a": ' * d
            + ("1" + "}" * d + "}")
        )
    if kind == 3:  # binary after a BOM / NUL bytes in a valid document
        return b"\xef\xbb\xbf" + bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    return head.encode() + b"name: a\x00b\n"


def generate(rng: random.Random) -> tuple[str, str | bytes]:
    r = rng.random()
    if r < 0.06:
        return "hostile", _hostile(rng)
    if r < 0.35:
        return "mutated_example", _mutate(rng, rng.choice(EXAMPLES))
    if r < 0.60:
        doc: Any = _rand_mapping(rng, 0)
        if rng.random() < 0.5:
            doc = {"apiVersion": "rebalancerd/v1", "kind": "Policy", **doc}
        return "random_document", _dump(rng, doc)
    if r < 0.75:
        return "valid_policy", _dump(rng, _valid_policy(rng))
    if r < 0.85:
        return "bomb", _bomb(rng)
    if r < 0.93:
        return "random_text", _rand_text(rng, rng.randint(0, 200))
    return "random_bytes", bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


def classify(message: str) -> str:
    m = message
    for needle, kind in (
        ("duplicate key", "duplicate_key"),
        ("unknown key", "unknown_key"),
        ("required key missing", "missing_key"),
        ("alias", "alias_limit"),
        ("nested deeper", "depth_limit"),
        ("too large", "size_limit"),
        ("unsupported YAML tag", "tag"),
        ("merge keys", "merge_key"),
        ("UTF-8", "encoding"),
        ("unacceptable character", "encoding"),
        ("empty policy", "empty"),
        ("must be a mapping", "not_a_mapping"),
        ("one YAML document", "multi_document"),
        ("keys must be plain", "bad_key"),
        ("is not a valid", "bad_scalar"),
        ("anti-affinity", "contradiction"),
        ("hard-pinned", "contradiction"),
        ("twice", "contradiction"),
        ("power_off without", "contradiction"),
        ("never starts", "contradiction"),
        ("ISO 8601", "value"),
        ("not allowed here", "yaml_syntax"),
        ("Input should", "type_or_range"),
        ("List should", "type_or_range"),
        ("String should", "type_or_range"),
        ("must be", "value"),
    ):
        if needle in m:
            return kind
    if any(
        w in m for w in ("expected", "found", "while scanning", "while parsing", "mapping values")
    ):
        return "yaml_syntax"
    return "other"


def run_chunk(args: tuple[int, int, int]) -> dict[str, Any]:
    seed, start, count = args
    accepted = 0
    rejected: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    crashes: list[str] = []
    worst = 0.0
    t0 = time.perf_counter()
    for i in range(start, start + count):
        rng = random.Random(f"{seed}/{i}")
        source, text = generate(rng)
        by_source[source] += 1
        t = time.perf_counter()
        try:
            parsed = parse_policy_text(text, f"in{i}.yaml")
        except BaseException as e:
            crashes.append(f"input {i} ({source}): {type(e).__name__}: {e}")
            if len(crashes) == 1:
                traceback.print_exc()
            continue
        worst = max(worst, time.perf_counter() - t)
        if parsed.policy is not None:
            if parsed.problems:
                crashes.append(f"input {i}: accepted with problems")
            accepted += 1
            continue
        n_lines = yaml_lines(text)
        bad = [
            p
            for p in parsed.problems
            if p.file != f"in{i}.yaml" or not (1 <= p.line <= n_lines) or p.column < 1
        ]
        if not parsed.problems or bad:
            crashes.append(f"input {i} ({source}): unlocated rejection {parsed.problems[:1]}")
            continue
        rejected[classify(parsed.problems[0].message)] += 1
    return {
        "accepted": accepted,
        "rejected": dict(rejected),
        "by_source": dict(by_source),
        "crashes": crashes,
        "wall_s": time.perf_counter() - t0,
        "worst_s": worst,
    }


def special_files() -> dict[str, Any]:
    """The file loaders on special files: each must be refused with one located line, fast."""
    import os
    import tempfile

    from rebalancerd.adapters.policy_files import parse_policy_dir, parse_policy_file
    from rebalancerd.daemon.config import ConfigError, load_config

    crashes: list[str] = []
    cases = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-special-") as tmp:
        d = Path(tmp)
        os.mkfifo(d / "fifo.yaml")
        (d / "zero.yaml").symlink_to("/dev/zero")
        (d / "dir.yaml").mkdir()
        (d / "loop.yaml").symlink_to(d / "loop.yaml")
        (d / "dangling.yaml").symlink_to(d / "nowhere")
        (d / "huge.yaml").write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
        (d / "binary.yaml").write_bytes(bytes(range(256)) * 16)
        names = ["fifo", "zero", "dir", "loop", "dangling", "huge", "binary"]
        for name in names:
            path = d / f"{name}.yaml"
            for what in ("policy", "config"):
                cases += 1
                t0 = time.perf_counter()
                try:
                    if what == "policy":
                        parsed = parse_policy_file(path)
                        ok = parsed.policy is None and len(parsed.problems) == 1
                        msg = str(parsed.problems[0]) if parsed.problems else ""
                    else:
                        try:
                            load_config(path)
                            ok, msg = False, "accepted"
                        except ConfigError as e:
                            ok, msg = True, str(e)
                except BaseException as e:
                    crashes.append(f"special {name} ({what}): {type(e).__name__}: {e}")
                    continue
                took = time.perf_counter() - t0
                if not ok or "\n" in msg or took > 1.0:
                    crashes.append(f"special {name} ({what}): {msg!r} in {took:.2f}s")
        cases += 1
        t0 = time.perf_counter()
        _parsed, problems = parse_policy_dir(d)  # the whole directory: one issue per file
        if len(problems) < len(names) - 1 or time.perf_counter() - t0 > 2.0:
            crashes.append(f"special directory: {len(problems)} problems {problems[:2]}")
    return {"cases": cases, "crashes": crashes}


def baseline(seed: int, n: int) -> tuple[float, float]:
    """(inputs/s of yaml.compose with SafeLoader, inputs/s of our loader) on the same sample."""
    sample = [generate(random.Random(f"{seed}/{i}"))[1] for i in range(n)]
    t0 = time.perf_counter()
    for text in sample:
        with contextlib.suppress(yaml.YAMLError, RecursionError, ValueError):
            yaml.compose(text, Loader=yaml.SafeLoader)
    base = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i, text in enumerate(sample):
        parse_policy_text(text, f"in{i}.yaml")
    ours = n / (time.perf_counter() - t0)
    return base, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="processes (the machine is shared)")
    ap.add_argument("--baseline-sample", type=int, default=2000)
    a = ap.parse_args()

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    base_rate, our_rate = baseline(a.seed + 1, a.baseline_sample)
    print(
        f"baseline on {a.baseline_sample} inputs: yaml.compose(SafeLoader) {base_rate:,.0f}/s, "
        f"rebalancerd loader {our_rate:,.0f}/s, ratio {our_rate / base_rate:.2f}"
    )

    chunks = max(1, a.workers) * 8
    size = -(-a.inputs // chunks)
    jobs = [(a.seed, s, min(size, a.inputs - s)) for s in range(0, a.inputs, size)]
    t0 = time.perf_counter()
    if a.workers > 1:
        with mp.get_context("fork").Pool(a.workers) as pool:
            results = pool.map(run_chunk, jobs)
    else:
        results = [run_chunk(j) for j in jobs]
    wall = time.perf_counter() - t0

    accepted = sum(r["accepted"] for r in results)
    rejected: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    crashes: list[str] = []
    for r in results:
        rejected.update(r["rejected"])
        sources.update(r["by_source"])
        crashes += r["crashes"]
    worst = max(r["worst_s"] for r in results)
    n = accepted + sum(rejected.values()) + len(crashes)
    special = special_files()
    crashes += special["crashes"]
    print(f"inputs by generator: {dict(sorted(sources.items()))}")
    print(f"rejections by kind:  {dict(rejected.most_common())}")
    for c in crashes[:20]:
        print(f"CRASH {c}")
    print(
        f"{n:,} inputs in {wall:.1f}s ({n / wall:,.0f}/s with {a.workers} worker(s)); "
        f"accepted {accepted:,}, rejected {sum(rejected.values()):,}, crashes {len(crashes)}; "
        f"slowest input {worst * 1000:.1f} ms"
    )
    print(
        json.dumps(
            {
                "inputs": n,
                "crashes": len(crashes),
                "special_file_cases": special["cases"],
                "rejected": sum(rejected.values()),
                "accepted": accepted,
                "inputs_per_s": round(n / wall, 1),
                "workers": a.workers,
                "slowest_input_ms": round(worst * 1000, 2),
                "rejected_by_kind": dict(rejected.most_common()),
                "baseline_compose_per_s": round(base_rate, 1),
                "loader_per_s_same_sample": round(our_rate, 1),
                "loader_vs_compose_ratio": round(our_rate / base_rate, 3),
                "seed": a.seed,
            }
        )
    )
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
