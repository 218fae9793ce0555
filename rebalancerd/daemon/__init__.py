"""The daemon (`rebalancerd run`): its config, the parts it wires together, its life cycle, the
control loop, operator intent, the control API, health and reload.

``daemon.Daemon`` is the entry point; ``wiring.build_parts`` the composition root.
"""
