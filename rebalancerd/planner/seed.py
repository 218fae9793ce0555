"""The planner's seed: what the operator may give, and the one mapping onto the solver's seed.

CP-SAT's ``random_seed`` is a 32-bit signed integer; a larger Python int made the solver raise
deep inside a plan. The CLI (``--seed``) and the daemon config (``planner.seed``) accept
``0 <= seed <= MAX_SEED``; ``solver_seed`` maps any int the planner derives from it (the LNS
rounds add their round number) into the solver's range, the identity on that range, so plans
for the seeds in use do not change. Pure.
"""

from __future__ import annotations

MAX_SEED = 2**31 - 1
"""The largest seed accepted from the operator (the solver's int32 range)."""


def solver_seed(seed: int) -> int:
    """`seed` as the solver's seed: itself in 0..MAX_SEED, else reduced modulo 2**31."""
    return seed % (MAX_SEED + 1)


def seed_problem(seed: int) -> str | None:
    """Why `seed` is not an accepted seed, or None."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        return "must be an integer"
    if not 0 <= seed <= MAX_SEED:
        return f"must be between 0 and {MAX_SEED} (the solver's seed is 32-bit)"
    return None
