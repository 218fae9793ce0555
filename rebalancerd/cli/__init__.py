"""rebalancerd."""
