"""``metrics.jsonl``: one JSON row per logged step, appended by the trainer.

A run killed mid-write leaves a torn last line; every reader (resume, reports, scaling-law fits)
skips it rather than failing, so they all read the log through here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

FILE = "metrics.jsonl"


def read_metrics(exp_dir: Path) -> List[Dict[str, Any]]:
    """The rows logged in ``exp_dir`` (none when there is no log yet)."""
    path = Path(exp_dir) / FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
