"""The phantoms package's one exception class."""


class PhantomError(ValueError):
    """A phantom specification or suite name that cannot be used."""
