"""High availability and scale-out: who leads which cluster (see docs/ha.md).

``settings`` holds the daemon config's ``coordination:`` section; ``rebalancerd.domain.shards``
(pure) decides which live daemon campaigns for which cluster; the etcd adapter
(``rebalancerd.adapters.etcd_coordinator``) does the elections and the fenced writes.
"""
