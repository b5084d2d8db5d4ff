"""Precomputed teacher logits for distillation: computed once, read by every student run.

On disk, two files side by side:

* ``NAME.npz``: ``ids`` (N,) cut ids and ``logits`` (N, C) float32, row i for cut ``ids[i]``. One
  matrix rather than one zip member per cut: an AudioSet-sized table (2M clips) then loads in one read.
* ``NAME.json``: the teacher's identity (whatever the caller records: preset, checkpoint, run), the
  class vocabulary in column order, and the row count. Written last, so it marks a complete table.

Loading against the student's class list reorders columns when the vocabularies are the same set in
another order, and refuses (a :class:`SpeechBudgetError`) when they differ: logits of another label
set would silently teach the wrong classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..atomic import atomic_output, write_json
from ..errors import SpeechBudgetError

FORMAT = "speechbudget-teacher-logits/1"
PathLike = Union[str, Path]


def table_paths(path: PathLike) -> Tuple[Path, Path]:
    """``x``, ``x.npz`` or ``x.json`` -> (``x.npz``, ``x.json``)."""
    path = Path(path)
    if path.suffix in (".npz", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".npz"), path.with_name(path.name + ".json")


def save_teacher_logits(
    path: PathLike, logits: Mapping[str, Any], classes: Sequence[str], teacher: Mapping[str, Any]
) -> Path:
    """Write ``{cut id: (C,) logits}`` with the class vocabulary and the teacher's identity; -> npz path."""
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise SpeechBudgetError("teacher class vocabulary has duplicate names")
    ids = [str(i) for i in logits]
    matrix = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in logits.values()]) if ids else None
    if matrix is None:
        matrix = np.zeros((0, len(classes)), dtype=np.float32)
    if matrix.shape[1] != len(classes):
        raise SpeechBudgetError(f"teacher logits have {matrix.shape[1]} columns but {len(classes)} classes")
    npz, meta = table_paths(path)
    with atomic_output(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=np.array(ids, dtype=str), logits=matrix)
    write_json(meta, {"format": FORMAT, "teacher": dict(teacher), "classes": classes, "clips": len(ids)})
    return npz


class TeacherLogits:
    """A loaded table: :meth:`lookup` gives a batch's teacher logits and which clips have them."""

    def __init__(self, ids: List[str], logits: np.ndarray, classes: List[str], teacher: Dict[str, Any]):
        self.ids, self.logits, self.classes, self.teacher = ids, logits, classes, teacher
        self.row = {cut_id: i for i, cut_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, cut_ids: Iterable[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (B, C) float logits (zeros where missing) and (B,) bool ``has_teacher``."""
        rows = [self.row.get(str(i), -1) for i in cut_ids]
        found = torch.tensor([r >= 0 for r in rows], dtype=torch.bool)
        out = torch.zeros(len(rows), len(self.classes))
        if found.any():
            idx = [r for r in rows if r >= 0]
            out[found] = torch.from_numpy(self.logits[idx])
        return out, found


def load_teacher_logits(path: PathLike, classes: Optional[Sequence[str]] = None) -> TeacherLogits:
    """Read a table; with ``classes`` (the student's vocabulary) columns follow that order."""
    npz, meta = table_paths(path)
    if not npz.is_file() or not meta.is_file():
        raise SpeechBudgetError(f"no teacher logits at {npz} (+ {meta.name}): compute them first")
    info = json.loads(meta.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise SpeechBudgetError(f"{meta} is not a teacher-logits table (format {info.get('format')!r})")
    with np.load(npz) as data:
        ids, logits = [str(i) for i in data["ids"]], data["logits"].astype(np.float32)
    stored = list(info["classes"])
    if len(ids) != info["clips"] or logits.shape != (len(ids), len(stored)):
        raise SpeechBudgetError(f"{npz} does not match {meta.name} (rows or columns differ): recompute it")
    if classes is not None and list(classes) != stored:
        wanted = [str(c) for c in classes]
        if sorted(wanted) != sorted(stored):
            extra, missing = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
            raise SpeechBudgetError(
                f"teacher logits in {npz} were made for another class vocabulary ({len(stored)} classes vs "
                f"{len(wanted)}; only the student's: {extra[:5]}, only the teacher's: {missing[:5]}): "
                "recompute them with a teacher trained on the student's labels"
            )
        order = [stored.index(c) for c in wanted]
        logits, stored = logits[:, order], wanted
    return TeacherLogits(ids, logits, stored, dict(info.get("teacher", {})))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, batches: Iterable[Dict], device="cpu") -> Dict[str, np.ndarray]:
    """``{cut id: (C,) logits}`` of a classifier (anything with ``logits(features, lengths)``), in eval
    mode, for :func:`save_teacher_logits`."""
    was_training = model.training
    model.eval()
    out: Dict[str, np.ndarray] = {}
    try:
        for batch in batches:
            logits = model.logits(batch["features"].to(device), batch["lengths"].to(device)).float().cpu()
            out.update(zip(batch["ids"], logits.numpy()))
    finally:
        model.train(was_training)
    return out
