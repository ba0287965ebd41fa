"""XScale pipeline: IO, structure-tensor orientations, microscopy FODs, dMRI models,
tractography, the benchmark run and the ``xscale`` command line."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "run", "load_run"]


def __getattr__(name: str):
    # keep `import validation` light: the runner pulls in dipy, dask and friends
    if name in ("run", "load_run", "RunResult"):
        from validation import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'validation' has no attribute {name!r}")
