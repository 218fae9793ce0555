"""One policy document as read: its policy (None if rejected), where its values are, its issues."""

from __future__ import annotations

from dataclasses import dataclass

from rebalancerd.policy.issues import PolicyIssue
from rebalancerd.policy.safe_yaml import Marks
from rebalancerd.policy.schema import Policy


@dataclass(slots=True)
class Parsed:
    """The outcome of reading one policy document."""

    source: str
    policy: Policy | None
    marks: Marks
    problems: list[PolicyIssue]
