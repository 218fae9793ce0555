"""The CLI's error type (its own module so `python -m rebalancerd.cli.main` shares the class)."""


class CliError(Exception):
    """Bad input to a command: printed as one line, exit code 2."""
