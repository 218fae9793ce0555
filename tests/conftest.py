"""Shared pytest configuration. Fixtures for real parts live in tests/fixtures/ as plugins."""

pytest_plugins = [
    "tests.fixtures.mqtt",
    "tests.fixtures.lab",
    "tests.fixtures.etcd",
]
