"""Content-hash cache for expensive intermediate results (model fits, microscopy FODs).

A result is stored under a key that hashes everything it depends on (inputs' bytes,
parameters, code version), so changing one model's hyper-parameters recomputes that
model only, and a stale result can never be read back for new inputs. Entries are
directories ``<root>/<kind>/<key[:2]>/<key>/`` holding ``arrays.npz`` and ``meta.json``,
written to a temporary sibling and renamed, so a crash never leaves half an entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ContentCache", "cached_arrays", "content_key", "hash_array", "source_digest"]

#: bump when the on-disk layout changes
CACHE_FORMAT = 1


def hash_array(array: Any) -> str:
    """Hex digest of an array's dtype, shape and bytes (C order).

    Examples
    --------
    >>> hash_array(np.zeros(3)) == hash_array(np.zeros(3))
    True
    >>> hash_array(np.zeros(3)) == hash_array(np.zeros(3, dtype=np.float32))
    False
    """
    a = np.ascontiguousarray(np.asarray(array))
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes() if a.size else b"")
    return h.hexdigest()


@functools.cache
def source_digest(*modules: Any) -> str:
    """Hex digest of the source files of ``modules`` (a package: all its ``.py`` files),
    for cache keys that must change when the code computing a result changes (read once
    per process)."""
    h = hashlib.blake2b(digest_size=12)
    for module in modules:
        path = Path(module.__file__)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-able canonical form; arrays become their hashes."""
    if isinstance(value, np.ndarray):
        return {"__array__": hash_array(value)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def content_key(kind: str, **parts: Any) -> str:
    """Hex key of ``kind`` and named parts (arrays hashed by content, dicts sorted).

    Examples
    --------
    >>> content_key("fit", params={"a": 1, "b": 2}) == content_key("fit", params={"b": 2, "a": 1})
    True
    """
    text = json.dumps(
        {"kind": kind, "format": CACHE_FORMAT, "parts": _canonical(parts)},
        sort_keys=True,
        allow_nan=True,
    )
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


class ContentCache:
    """A directory of results keyed by content hash.

    Parameters
    ----------
    root : str or Path
        Cache directory (created on first store).
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def entry_path(self, kind: str, key: str) -> Path:
        """Directory of one entry."""
        return self.root / kind / key[:2] / key

    def load(self, kind: str, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, meta)`` of an entry, or ``None`` when absent or unreadable."""
        path = self.entry_path(kind, key)
        try:
            with open(path / "meta.json", encoding="utf-8") as f:
                meta = json.load(f)
            with np.load(path / "arrays.npz", allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError):
            return None
        return arrays, meta

    def store(
        self, kind: str, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> Path:
        """Write an entry atomically (temporary sibling, then rename); returns its path."""
        path = self.entry_path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=path.parent))
        try:
            payload: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
            np.savez(tmp / "arrays.npz", **payload)
            with open(tmp / "meta.json", "w", encoding="utf-8") as f:
                json.dump(_canonical(dict(meta)), f, indent=1, sort_keys=True)
            try:
                os.rename(tmp, path)
            except OSError:  # another process stored the same key first: same content
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


def cached_arrays(
    cache_dir: str | os.PathLike[str] | None,
    kind: str,
    key_parts: Mapping[str, Any],
    compute: Callable[[], Mapping[str, np.ndarray]],
    *,
    meta: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], bool]:
    """Return ``compute()``'s arrays, from the cache when the same key was stored before.

    For microscopy FODs and other array results:
    ``cached_arrays(dir, "microscopy-fod", {"vectors": h, "sigma_um": 3.0}, compute)``.

    Returns
    -------
    arrays : dict of str to ndarray
    cached : bool
        True when read from the cache.
    """
    if cache_dir is None:
        return dict(compute()), False
    cache = ContentCache(cache_dir)
    key = content_key(kind, **dict(key_parts))
    hit = cache.load(kind, key)
    if hit is not None:
        return hit[0], True
    arrays = dict(compute())
    cache.store(kind, key, arrays, dict(meta or {}))
    return arrays, False
