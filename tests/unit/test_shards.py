"""Rendezvous hashing: every member computes the same owners; a leaving member moves only its
own clusters; clusters spread over members."""

from __future__ import annotations

from collections import Counter

from rebalancerd.domain.shards import assignment, owned_by, owner

CLUSTERS = [f"c{i:03d}" for i in range(100)]


def test_same_answer_whatever_the_member_order() -> None:
    a = assignment(CLUSTERS, ["d1", "d2", "d3"])
    b = assignment(CLUSTERS, ["d3", "d1", "d2", "d1"])
    assert a == b and set(a) == set(CLUSTERS)


def test_a_leaving_member_moves_only_its_clusters() -> None:
    before = assignment(CLUSTERS, ["d1", "d2", "d3", "d4", "d5"])
    after = assignment(CLUSTERS, ["d1", "d2", "d4", "d5"])
    moved = {c for c in CLUSTERS if before[c] != after[c]}
    assert moved == {c for c in CLUSTERS if before[c] == "d3"}
    assert moved and all(after[c] != "d3" for c in CLUSTERS)


def test_a_joining_member_takes_a_fair_share_only_from_others() -> None:
    before = assignment(CLUSTERS, ["d1", "d2", "d3", "d4"])
    after = assignment(CLUSTERS, ["d1", "d2", "d3", "d4", "d5"])
    moved = {c for c in CLUSTERS if before[c] != after[c]}
    assert all(after[c] == "d5" for c in moved)
    assert 8 <= len(moved) <= 35  # about 1/5 of 100
    counts = Counter(after.values())
    assert set(counts) == {"d1", "d2", "d3", "d4", "d5"} and min(counts.values()) >= 8


def test_no_member_no_owner() -> None:
    assert owner("c1", []) is None and assignment(CLUSTERS, []) == {}
    assert owned_by("d1", CLUSTERS, ["d1"]) == frozenset(CLUSTERS)
