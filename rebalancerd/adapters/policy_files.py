"""Policy files on disk: read one file, or every policy file of a directory, and hand the bytes to
the pure parser (``policy.parse``) and the cross-file checks (``policy.semantics``).

This is the file I/O of policy loading, kept out of the pure ``policy`` package.
"""

from __future__ import annotations

from pathlib import Path

from rebalancerd.files import InputFileError, read_bounded
from rebalancerd.policy.combine import PolicySet
from rebalancerd.policy.document import Parsed
from rebalancerd.policy.issues import PolicyError, PolicyIssue
from rebalancerd.policy.parse import MAX_FILE_BYTES, parse_policy_text
from rebalancerd.policy.safe_yaml import Marks
from rebalancerd.policy.schema import Policy
from rebalancerd.policy.semantics import set_problems

MAX_FILES = 256
POLICY_SUFFIXES = (".yaml", ".yml")


def _read(path: Path) -> bytes | PolicyIssue:
    """The bytes of one policy file: regular files only (a FIFO or a device named ``x.yaml`` is
    refused at once, never read), at most ``MAX_FILE_BYTES``."""
    try:
        return read_bounded(path, MAX_FILE_BYTES, regular_only=True)
    except InputFileError as e:
        return PolicyIssue(str(path), 1, 1, str(e).removeprefix(f"{path}: "))


def parse_policy_file(path: str | Path) -> Parsed:
    p = Path(path)
    data = _read(p)
    if isinstance(data, PolicyIssue):
        return Parsed(str(p), None, Marks(), [data])
    return parse_policy_text(data, str(p))


def load_policy_file(path: str | Path) -> Policy:
    """One policy file -> Policy, or PolicyError listing every located problem."""
    parsed = parse_policy_file(path)
    if parsed.policy is None:
        raise PolicyError(parsed.problems)
    return parsed.policy


def policy_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    return sorted(
        p
        for p in d.iterdir()
        if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and not p.is_dir()
    )


def parse_policy_dir(directory: str | Path) -> tuple[list[Parsed], list[PolicyIssue]]:
    d = Path(directory)
    try:
        files = policy_files(d)
    except FileNotFoundError:
        return [], [PolicyIssue(str(d), 1, 1, "no such directory")]
    except NotADirectoryError:
        return [], [PolicyIssue(str(d), 1, 1, "not a directory")]
    except OSError as e:
        return [], [PolicyIssue(str(d), 1, 1, f"cannot list: {e.strerror or e}")]
    if len(files) > MAX_FILES:
        return [], [PolicyIssue(str(d), 1, 1, f"more than {MAX_FILES} policy files")]
    parsed = [parse_policy_file(f) for f in files]
    problems = [p for x in parsed for p in x.problems]
    if not problems:
        problems = set_problems(parsed)
    return parsed, problems


def load_policy_dir(directory: str | Path) -> PolicySet:
    """Every ``*.yaml``/``*.yml`` file of a directory (hidden files skipped), checked one by one
    and together. Any problem -> PolicyError with all of them. An empty directory is an empty
    set (its effective policy is the default)."""
    parsed, problems = parse_policy_dir(directory)
    if problems:
        raise PolicyError(problems)
    return PolicySet(
        tuple(p.policy for p in parsed if p.policy is not None), tuple(p.source for p in parsed)
    )


def load_policy_path(path: str | Path) -> PolicySet:
    """A directory (as ``load_policy_dir``) or a single file."""
    p = Path(path)
    if p.is_dir():
        return load_policy_dir(p)
    return PolicySet((load_policy_file(p),), (str(p),))
