"""The run directory: written in a temporary sibling, renamed when complete.

A crash never leaves a directory under the final name: the partial run is renamed
``<name>.failed-<UTC time>/`` with its ``run.log`` (traceback included). An existing
finished run is never replaced unless ``overwrite`` is given, and then only once the
new run is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from reports import SCHEMA_VERSION
from validation.errors import RunExistsError, UserError

__all__ = ["SCHEMA_VERSION", "RunDirectory", "to_jsonable"]

#: Float format of every CSV the run writes: stable across platforms and runs.
FLOAT_FORMAT = "%.10g"

log = logging.getLogger("xscale")

#: Loggers of our packages: the run's log file and the CLI's stderr handler attach to each.
LOGGER_NAMES = ("xscale", "validation", "phantoms", "metrics", "reports")


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class RunDirectory:
    """Context manager owning the temporary directory of a run in progress.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with RunDirectory(root / "demo") as rd:
    ...     _ = rd.write_json("tasks.json", {})
    >>> sorted(p.name for p in (root / "demo").iterdir())
    ['run.log', 'tasks.json']
    """

    def __init__(self, final: str | Path, *, overwrite: bool = False) -> None:
        self.final = Path(final).absolute()
        self.overwrite = overwrite
        if self.final.exists() and not overwrite:
            raise RunExistsError(
                f"{self.final}: a run already exists there; use --overwrite to replace it "
                "or -o to choose another directory"
            )
        if self.final.exists() and not (self.final / "provenance.json").is_file():
            raise UserError(
                f"{self.final}: exists and is not an XScale run directory; refusing to replace it"
            )
        self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}-{_utc_stamp()}"
        self.failed_path: Path | None = None
        self._handler: logging.Handler | None = None

    def __enter__(self) -> RunDirectory:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
        except OSError as exc:
            raise UserError(f"{self.final}: cannot create the run directory: {exc}") from None
        self._handler = logging.FileHandler(self.path / "run.log", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self._handler.setLevel(logging.DEBUG)
        for name in LOGGER_NAMES:
            logging.getLogger(name).addHandler(self._handler)
            logging.getLogger(name).setLevel(logging.DEBUG)
        log.debug("run directory (in progress): %s", self.path)
        return self

    def _close_log(self) -> None:
        if self._handler is not None:
            for name in LOGGER_NAMES:
                logging.getLogger(name).removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            log.debug("run complete")
            self._close_log()
            if self.final.exists():
                # replace an old run only now that the new one is complete
                trash = self.final.parent / f".{self.final.name}.replaced-{_utc_stamp()}"
                self.final.rename(trash)
                self.path.rename(self.final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                self.path.rename(self.final)
            return
        log.error(
            "run failed: %s\n%s",
            exc,
            "".join(traceback.format_exception(exc_type, exc, tb)),
        )
        self._close_log()
        failed = self.final.parent / f"{self.final.name}.failed-{_utc_stamp()}"
        n = 1
        while failed.exists():
            n += 1
            failed = self.final.parent / f"{self.final.name}.failed-{_utc_stamp()}-{n}"
        self.path.rename(failed)
        self.failed_path = failed
        if exc is not None:
            # the CLI names the kept directory in its one-line message
            exc.xscale_failed_run = failed  # type: ignore[attr-defined]

    # -- writers ------------------------------------------------------------------------
    def file(self, relative: str) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_text(self, relative: str, text: str) -> Path:
        target = self.file(relative)
        target.write_text(text, encoding="utf-8")
        return target

    def write_json(self, relative: str, obj: Any) -> Path:
        return self.write_text(relative, json.dumps(to_jsonable(obj), indent=2, sort_keys=False))

    def write_csv(self, relative: str, table: pd.DataFrame) -> Path:
        target = self.file(relative)
        compression = "gzip" if relative.endswith(".gz") else None
        if compression:
            # gzip headers hold a time stamp: write through a fixed-mtime stream so that the
            # same run gives the same bytes
            import gzip

            with open(target, "wb") as raw, gzip.GzipFile(
                fileobj=raw, mode="wb", mtime=0, filename=""
            ) as gz:
                gz.write(table.to_csv(index=False, float_format=FLOAT_FORMAT).encode())
        else:
            table.to_csv(target, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
        return target


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths inside ``obj`` to JSON types (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
