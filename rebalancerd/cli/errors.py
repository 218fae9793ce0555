"""The CLI's error type (its own module so `python -m rebalancerd.cli.main` shares the class), and
checks of option values that end in it."""


class CliError(Exception):
    """Bad input to a command: printed as one line, exit code 2."""


def checked_seed(seed: int, option: str = "--seed") -> int:
    """`seed` if the planner accepts it, else CliError (one line)."""
    # imported here: the planner package pulls in the solver, which the agent does not ship
    from rebalancerd.planner.seed import seed_problem

    why = seed_problem(seed)
    if why is not None:
        raise CliError(f"{option} {seed}: {why}")
    return seed
