"""Fuzz the telemetry decoder + collector with hypothesis over >= 100,000 generated inputs.

    .venv/bin/python benchmarks/fuzz_telemetry.py [--inputs 100000] [--batch 20]

Every input is a (topic, payload) pair from tests/telemetry/strategies.py: mutated valid reports,
truncated JSON, NaN/Infinity, hostile names, arbitrary bytes and topics, bogus status messages,
JSON nested up to 40,000 deep, huge numbers (1e300, 2^63, 400-digit integers) and ownership
claims (several hosts listing the same VMs, running or paused).
Checks: zero exceptions escape ``Collector.ingest``, every input is either accepted or counted
under exactly one reject reason (metrics agree; VM claims refused inside accepted reports are
counted apart, under ``vm_owned_elsewhere``), the ingest safety net never fires, every VM of the
model is on exactly one host, state stays bounded. Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebalancerd.observability import MemoryMetrics
from rebalancerd.telemetry.collector import Collector, CollectorSettings
from tests.telemetry.helpers import CLUSTER, ManualClock, inventory
from tests.telemetry.strategies import hostile_message


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=20)
    args = ap.parse_args()

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    clock = ManualClock()
    metrics = MemoryMetrics()
    collector = Collector(inventory(3), clock, metrics, CollectorSettings(cluster=CLUSTER))
    outcomes: Counter[str] = Counter()
    crashes: list[str] = []
    seq = [0]
    inputs = [0]
    max_vms = [0]

    examples = -(-args.inputs // args.batch)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[__import__("hypothesis").Phase.generate],
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        for _ in range(args.batch):
            seq[0] += 1
            topic, payload = data.draw(hostile_message(clock.now(), seq[0]))
            inputs[0] += 1
            try:
                r = collector.ingest(topic, payload)
            except Exception:
                crashes.append(traceback.format_exc(limit=3))
                continue
            outcomes["accepted" if r is None else r.value] += 1
            clock.advance(0.5)
        max_vms[0] = max(max_vms[0], collector.vm_count())

    t0 = time.perf_counter()
    while inputs[0] < args.inputs:  # hypothesis may stop a run early: keep going
        run()
    elapsed = time.perf_counter() - t0
    snap = collector.current()

    accepted = outcomes.pop("accepted", 0)
    rejected = sum(outcomes.values())
    claims = collector.owners.claims_refused
    claims_counted = metrics.total("telemetry_rejected_total", reason="vm_owned_elsewhere")
    counted = metrics.total("telemetry_rejected_total") - claims_counted
    one_host_each = len({v.name for v in snap.vms}) == len(snap.vms)
    per_reason_ok = all(
        metrics.total("telemetry_rejected_total", reason=k) == v for k, v in outcomes.items()
    )
    safety_net = metrics.total("errors_total")
    print(f"inputs            {inputs[0]}")
    print(
        f"elapsed           {elapsed:.1f} s ({inputs[0] / elapsed:.0f} inputs/s incl. generation)"
    )
    print(f"accepted          {accepted}")
    print(f"rejected          {rejected} (metric total {counted:.0f})")
    for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<18} {v}")
    print(f"claims refused    {claims} (metric {claims_counted:.0f})")
    print(f"crashes           {len(crashes)}")
    print(f"safety-net errors {safety_net:.0f}")
    print(f"max VMs held      {max_vms[0]} (hosts {len(snap.hosts)})")
    for c in crashes[:3]:
        print(c)
    ok = (
        not crashes
        and safety_net == 0
        and counted == rejected
        and per_reason_ok
        and claims_counted == claims
        and one_host_each
        and accepted + rejected == inputs[0]
        and metrics.total("telemetry_messages_total") == accepted
    )
    print(
        json.dumps(
            {
                "inputs": inputs[0],
                "accepted": accepted,
                "rejected": rejected,
                "crashes": len(crashes),
                "uncounted": inputs[0] - accepted - int(counted),
                "safety_net_errors": int(safety_net),
                "reasons": dict(outcomes),
                "claims_refused": claims,
                "elapsed_s": round(elapsed, 1),
                "ok": ok,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
