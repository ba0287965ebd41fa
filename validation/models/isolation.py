"""Run a model's code in a worker process that can be stopped: timeouts and crash isolation.

The worker leads its own process group, so a timeout kills it together with any chunk
workers it started. Results come back through a pipe; an exception in the worker comes
back as a :class:`~validation.models.protocol.ModelFailure`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from validation.models.protocol import ModelFailure

__all__ = ["limit_blas_threads", "mp_context", "run_isolated"]

_BLAS_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
    "MKL_Set_Num_Threads",
)


_blas_setters: list[Any] | None = None


def _find_blas_setters() -> list[Any]:
    """ctypes functions setting the thread count of each BLAS loaded in this process
    (found once; forked workers inherit the list)."""
    global _blas_setters
    if _blas_setters is not None:
        return _blas_setters
    import ctypes

    setters: list[Any] = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            libs = {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        libs = set()
    for path in sorted(libs):
        name = os.path.basename(path).lower()
        if "blas" not in name and "mkl_rt" not in name:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _BLAS_SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setters.append(setter)
                break
    _blas_setters = setters
    return setters


def limit_blas_threads(n: int = 1) -> int:
    """Set the thread count of every BLAS library loaded in this process; returns how many
    libraries were set.

    Worker processes run one BLAS thread each: XScale parallelises over voxel chunks, and a
    multi-threaded OpenBLAS in a forked worker on a busy machine is slower by orders of
    magnitude for the small matrices of voxel-wise fits. Linux only (reads
    ``/proc/self/maps``); elsewhere a no-op.
    """
    import ctypes

    setters = _find_blas_setters()
    for setter in setters:
        setter(ctypes.c_int(n))
    return len(setters)


def mp_context() -> Any:
    """The multiprocessing context for workers: ``fork`` where available (no pickling of
    the model, millisecond start), else ``spawn``. ``XSCALE_MP_START`` overrides."""
    method = os.environ.get("XSCALE_MP_START")
    if method is None:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method)


def _worker(conn: Any, func: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
    limit_blas_threads(1)
    try:
        result = ("ok", func(*args, **kwargs))
    except ModelFailure as exc:
        result = ("error", exc)
    except BaseException as exc:  # the model's own failure, whatever it is
        result = (
            "error",
            ModelFailure(f"{type(exc).__name__}: {exc}".splitlines()[0], "fit",
                         traceback.format_exc()),
        )
    try:
        conn.send(result)
    except Exception as exc:  # unpicklable result
        conn.send(("error", ModelFailure(f"result cannot be sent back: {exc}", "output")))
    finally:
        conn.close()


def _kill(proc: Any) -> None:
    if hasattr(os, "killpg"):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    else:  # pragma: no cover - not POSIX
        proc.kill()
    proc.join(5)


def run_isolated(
    func: Callable[..., Any],
    *args: Any,
    timeout_s: float,
    **kwargs: Any,
) -> Any:
    """Call ``func(*args, **kwargs)`` in a worker process; stop it after ``timeout_s``.

    Parameters
    ----------
    func : callable
        Module-level function (picklable by reference when the start method is spawn).
    timeout_s : float
        Wall-clock limit in seconds for the whole call.

    Returns
    -------
    Whatever ``func`` returns (it must be picklable).

    Raises
    ------
    ModelFailure
        ``stage="timeout"`` when the limit passed (the worker and its children are
        killed), ``stage="worker"`` when the worker died without answering (crash,
        ``os._exit``, out of memory), or the failure ``func`` raised.
    """
    ctx = mp_context()
    _find_blas_setters()  # once, here: forked workers inherit the list
    recv_conn, send_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(send_conn, func, args, kwargs), daemon=False)
    start = time.monotonic()
    proc.start()
    send_conn.close()
    if hasattr(os, "setpgid"):
        try:  # both sides set the group, so a kill right after start still finds it
            os.setpgid(proc.pid, proc.pid)
        except OSError:
            pass
    try:
        remaining = max(0.0, timeout_s - (time.monotonic() - start))
        if not recv_conn.poll(remaining):
            _kill(proc)
            raise ModelFailure(
                f"fit exceeded timeout_s={timeout_s:g} s and was stopped", "timeout"
            )
        try:
            status, payload = recv_conn.recv()
        except EOFError:
            proc.join(5)
            code = proc.exitcode
            raise ModelFailure(
                f"worker process died without a result (exit code {code})", "worker"
            ) from None
        proc.join(10)
        if proc.is_alive():
            _kill(proc)
    except BaseException:
        if proc.is_alive():
            _kill(proc)
        raise
    finally:
        recv_conn.close()
    if status == "error":
        raise payload
    return payload

