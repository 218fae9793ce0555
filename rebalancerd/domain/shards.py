"""Which daemon campaigns for which cluster: rendezvous (highest random weight) hashing.

Pure and deterministic: every daemon that sees the same live members computes the same owner
for every cluster, and when a member joins or leaves only the clusters it gains or held move
(about 1/N of them), unlike ``hash % N``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(cluster: str, member: str) -> int:
    digest = hashlib.blake2b(f"{cluster}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(cluster: str, members: Iterable[str]) -> str | None:
    """The member that should lead ``cluster``; None when there is no live member."""
    best: tuple[int, str] | None = None
    for m in members:
        w = (_weight(cluster, m), m)
        if best is None or w > best:
            best = w
    return best[1] if best else None


def assignment(clusters: Iterable[str], members: Iterable[str]) -> dict[str, str]:
    """cluster -> owning member, for every cluster (empty when no member is live)."""
    live = sorted(set(members))
    if not live:
        return {}
    return {c: o for c in clusters if (o := owner(c, live)) is not None}


def owned_by(member: str, clusters: Iterable[str], members: Iterable[str]) -> frozenset[str]:
    return frozenset(c for c, o in assignment(clusters, members).items() if o == member)


__all__ = ["assignment", "owned_by", "owner"]
