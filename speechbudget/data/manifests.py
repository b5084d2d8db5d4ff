"""Reading and writing our lhotse manifests, always atomically.

Layout of a prepared corpus ``DIR/<corpus>/``: ``recordings_<split>.jsonl.gz``,
``supervisions_<split>.jsonl.gz``, ``cuts_<split>.jsonl.gz`` (the file later stages read; it is
the last one written, so its presence means the split is complete), ``rejected_<split>.jsonl``,
``feats_<split>/`` (lilcom chunks) and ``audio/`` (converted audio).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from lhotse import CutSet, load_manifest_lazy

from ..errors import SpeechBudgetError


def tmp_name(path: Path) -> Path:
    """A temporary sibling that keeps the suffixes lhotse uses to choose the format."""
    return path.with_name(f".tmp{os.getpid()}.{path.name}")


def save_manifest(manifest: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    manifest.to_file(tmp)
    os.replace(tmp, path)


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def cuts_path(corpus_dir: Union[str, Path], split: str) -> Path:
    return Path(corpus_dir) / f"cuts_{split}.jsonl.gz"


def load_cuts(path: Union[str, Path]) -> CutSet:
    """A cut manifest, or the ``cuts_<split>.jsonl.gz`` files of a corpus folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("cuts_*.jsonl.gz"))
        if not files:
            raise SpeechBudgetError(f"no cuts_*.jsonl.gz in {path}; run `speechbudget prepare` first")
        return CutSet.from_cuts(c for f in files for c in load_manifest_lazy(f))
    if not path.is_file():
        raise SpeechBudgetError(f"{path} does not exist; run `speechbudget prepare` first")
    try:
        return load_manifest_lazy(path)
    except Exception as e:
        raise SpeechBudgetError(f"{path} is not a lhotse cut manifest ({type(e).__name__}: {e})") from None
