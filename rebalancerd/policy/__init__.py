"""Policies: models, parsing and validation (located issues), combining several, resolution
against a snapshot. Reading policy files from disk is ``adapters.policy_files``."""
