"""Synthetic crossing-fibre phantoms: one geometry, rendered as microscopy and as dMRI,
with exact ground truth. A leaf package: imports none of XScale's other packages."""


class PhantomError(ValueError):
    """A phantom specification or suite name that cannot be used."""
