"""Exceptions of the pipeline and the mapping of all user-facing errors to exit codes."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a file, an option or a config value.

    The message is one line that names the input and the problem; the CLI prints it
    and exits with code 2.
    """


class ConfigError(UserError):
    """A run config or dataset manifest that cannot be used."""


class RunExistsError(UserError):
    """The run directory exists already and ``overwrite`` was not given."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (exit 2), from every package of ours."""
    from metrics import MetricInputError
    from phantoms import PhantomError
    from reports import ReportError

    return (UserError, PhantomError, MetricInputError, ReportError, FileNotFoundError)
