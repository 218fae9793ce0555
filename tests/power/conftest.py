from tests.fixtures.ipmi import Bmc, require_ipmi  # noqa: F401
