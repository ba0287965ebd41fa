"""Progress on stderr for long steps (tqdm), silent with ``--quiet`` or off a terminal."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A tqdm bar that can be switched off; the same calls either way."""

    def __init__(self, *, total: int, enabled: bool, desc: str = "") -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False,
                             mininterval=0.5, dynamic_ncols=True)

    def set_description(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
