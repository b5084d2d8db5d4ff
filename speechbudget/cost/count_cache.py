"""FLOP counts kept on disk, so that a count is traced once per machine, not once per process.

fvcore traces a whole forward pass to count an encoder (seconds for a small Zipformer, tens of
seconds for the planner's dozen candidates), and every fold, sidecar and command is a process of its
own. A count depends only on the architecture, the input length and the code that counts it, so the
caller's key must hold all three (:func:`speechbudget.models.catalog.encoder_cost` makes it).

The file is disposable: unreadable means empty, unwritable means uncached, and two processes
writing at once at worst lose one entry, which is counted again later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from .. import atomic
from .devices import cache_dir


class CountCache:
    """A JSON file of counts by key, read once and merged with what others wrote on every update."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: Dict[str, Any] = self._read()

    def _read(self) -> Dict[str, Any]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> Optional[Any]:
        return self.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        self.entries = {**self._read(), **self.entries, key: value}  # keep what another process added
        try:
            atomic.write_json(self.path, self.entries, sort_keys=True)
        except OSError:
            pass  # a read-only home: counting still works, just uncached


_OPEN: Dict[Path, CountCache] = {}


def count_cache() -> CountCache:
    """The counts of this machine's cache folder ($SPEECHBUDGET_CACHE_DIR, read when first used)."""
    path = cache_dir() / "encoder_counts.json"
    if path not in _OPEN:
        _OPEN[path] = CountCache(path)
    return _OPEN[path]
