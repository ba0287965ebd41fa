"""Voxel-parallel map for the steps of a fit that come before the voxel chunks.

A model's ``prepare`` runs once per case, before its voxel-wise fit is split over worker
processes; work done there (the CSD response's tensor fit over the whole mask) is serial
and bounds the speed-up of ``jobs`` workers. :func:`map_voxels` spreads such a voxel-wise
step over the same number of processes that the fit itself uses::

    from validation.models.parallel import map_voxels

    def prepare(self, data, gtab, *, mask=None):
        fa, = map_voxels(lambda v: (my_fa(v, gtab),), data[mask])
        ...

Inside :func:`~validation.models.fitting.fit_case` the process count is the case's
``jobs``; elsewhere it is 1 (a plain call). Voxels are cut into fixed pieces whatever the
process count, and every piece is computed by the same call, so results are identical
for any ``jobs``.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = ["PIECE_VOXELS", "WorkerDied", "current_jobs", "map_voxels", "run_shares",
           "using_jobs"]

T = TypeVar("T")

PIECE_VOXELS = 2048
_JOBS = 1


def current_jobs() -> int:
    """Processes :func:`map_voxels` uses when not told (the running fit's ``jobs``)."""
    return _JOBS


@contextlib.contextmanager
def using_jobs(jobs: int) -> Iterator[None]:
    """Let :func:`map_voxels` calls inside the block use ``jobs`` processes."""
    global _JOBS
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    previous, _JOBS = _JOBS, jobs
    try:
        yield
    finally:
        _JOBS = previous


def _run_pieces(func: Callable[[np.ndarray], Sequence[np.ndarray]], voxels: np.ndarray,
                pieces: list[tuple[int, int]]) -> list[tuple[np.ndarray, ...]]:
    out = []
    for a, b in pieces:
        result = tuple(np.asarray(r) for r in func(voxels[a:b]))
        for r in result:
            if r.shape[:1] != (b - a,):
                raise ValueError(
                    f"map_voxels: the function returned an array of shape {r.shape} for "
                    f"{b - a} voxels (the first axis must be the voxels)"
                )
        out.append(result)
    return out


class WorkerDied(RuntimeError):
    """A forked process of :func:`run_shares` ended without sending its result."""

    def __init__(self, exitcode: int | None):
        super().__init__(f"a worker died without a result (exit code {exitcode})")
        self.exitcode = exitcode


def _child(conn: Any, func: Callable[..., Any], args: tuple) -> None:
    from validation.models.isolation import limit_blas_threads

    limit_blas_threads(1)  # OpenBLAS may reset its thread count in a forked child
    try:
        conn.send(("ok", func(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
    finally:
        conn.close()


def run_shares(func: Callable[..., T], args: Sequence[tuple]) -> list[T]:
    """``func(*args[0])`` in this process and ``func(*args[k])`` for k >= 1 in forked ones,
    all at once; results in the order of ``args``.

    Raises
    ------
    RuntimeError
        ``func`` raised in a forked process (its message and traceback are included); an
        exception in this process propagates as it is, after the others are stopped.
    WorkerDied
        A forked process ended without a result (crash, killed).
    """
    from validation.models.isolation import mp_context

    children = []
    if len(args) > 1:
        ctx = mp_context()
        for share_args in args[1:]:
            recv_conn, send_conn = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(send_conn, func, share_args), daemon=True)
            proc.start()
            send_conn.close()
            children.append((proc, recv_conn))
    try:
        results = [func(*args[0])]
    except BaseException:
        for proc, recv_conn in children:
            proc.terminate()
            proc.join()
            recv_conn.close()
        raise
    for proc, recv_conn in children:
        try:
            status, payload = recv_conn.recv()
        except EOFError:
            proc.join(5)
            raise WorkerDied(proc.exitcode) from None
        finally:
            recv_conn.close()
        proc.join()
        if status == "error":
            message, tb = payload
            raise RuntimeError(f"{message}\n{tb}")
        results.append(payload)
    return results


def map_voxels(
    func: Callable[[np.ndarray], Sequence[np.ndarray]],
    voxels: np.ndarray,
    *,
    jobs: int | None = None,
    piece_voxels: int | None = None,
) -> tuple[np.ndarray, ...]:
    """Apply a voxel-wise function to ``voxels`` in pieces, over ``jobs`` processes.

    Parameters
    ----------
    func : callable
        ``func(v)`` with ``v`` of shape (n, ...) returns a sequence of arrays whose first
        axis has length n, each row depending on the same row of ``v`` only.
    voxels : ndarray, shape (V, ...)
        One row per voxel (for example ``data[mask]``).
    jobs : int, optional
        Processes (this one included); default :func:`current_jobs`. Extra processes are
        forked (they inherit ``func`` and ``voxels``; nothing is pickled but the results).
    piece_voxels : int, optional
        Voxels per call of ``func`` (default :data:`PIECE_VOXELS`); the pieces do not
        depend on ``jobs``.

    Returns
    -------
    tuple of ndarray
        The function's outputs for all voxels, concatenated along the first axis.

    Raises
    ------
    RuntimeError
        ``func`` raised in a forked process (its message and traceback are included).
    """
    voxels = np.asarray(voxels)
    n = len(voxels)
    jobs = current_jobs() if jobs is None else jobs
    piece_voxels = PIECE_VOXELS if piece_voxels is None else piece_voxels
    if piece_voxels < 1:
        raise ValueError(f"piece_voxels must be >= 1, got {piece_voxels}")
    pieces = [(a, min(a + piece_voxels, n)) for a in range(0, n, piece_voxels)]
    if not pieces:
        pieces = [(0, 0)]
    jobs = max(1, min(jobs, len(pieces)))
    # contiguous shares of whole pieces, the first (and largest) for this process
    bounds = np.linspace(0, len(pieces), jobs + 1).round().astype(int)
    shares = [pieces[bounds[k]: bounds[k + 1]] for k in range(jobs)]
    try:
        per_share = run_shares(_run_pieces, [(func, voxels, share) for share in shares])
    except RuntimeError as exc:
        raise RuntimeError(f"map_voxels: {exc}") from None
    results = [piece for share in per_share for piece in share]
    return tuple(np.concatenate(parts) for parts in zip(*results, strict=True))
