"""Pure scoring functions: arrays in, numbers out. A leaf package."""


class MetricInputError(ValueError):
    """Inputs a metric cannot score (shapes, SH orders, NaN peaks...)."""
