"""Reports from a run directory: HTML, figures, tables, diffs, gates. A leaf package
that reads files only and never recomputes a score."""

SCHEMA_VERSION = 1


class ReportError(ValueError):
    """A run directory that cannot be reported on (missing files, other schema)."""
