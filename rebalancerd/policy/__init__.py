"""Policy files: models, loading, validation, resolution against a snapshot."""
