"""The metrics package's one exception class (mapped to exit code 2 by the CLI)."""


class MetricInputError(ValueError):
    """Inputs a metric cannot score (shapes, SH orders, NaN peaks...)."""
