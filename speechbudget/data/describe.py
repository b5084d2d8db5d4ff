"""Corpus statistics for ``speechbudget data describe``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from .manifests import corpus_files, load_cuts


def describe_cuts(cuts) -> Dict[str, Any]:
    durations: List[float] = []
    speakers, labeled, with_feats = set(), 0, 0
    for c in cuts:
        durations.append(c.duration)
        for s in c.supervisions:
            if s.speaker:
                speakers.add(s.speaker)
        labeled += any(s.text for s in c.supervisions)
        with_feats += c.has_features
    if not durations:
        return {
            "utterances": 0,
            "hours": 0.0,
            "speakers": 0,
            "labeled": 0,
            "with_features": 0,
            "duration_s": {},
        }
    d = np.asarray(durations)
    pct = {f"p{p}": round(float(np.percentile(d, p)), 3) for p in (0, 5, 50, 95, 100)}
    return {
        "utterances": len(durations),
        "hours": round(float(d.sum()) / 3600, 6),
        "speakers": len(speakers),
        "labeled": labeled,
        "with_features": with_feats,
        "duration_s": {"mean": round(float(d.mean()), 3), **pct},
    }


def describe(path: Path) -> Dict[str, Dict[str, Any]]:
    """split name (or file stem) -> statistics, for a corpus folder or one cut manifest."""
    path = Path(path)
    if path.is_dir():
        return {
            f.name[len("cuts_") : -len(".jsonl.gz")]: describe_cuts(load_cuts(f)) for f in corpus_files(path)
        }
    return {path.name.split(".")[0]: describe_cuts(load_cuts(path))}
