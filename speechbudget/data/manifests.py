"""Reading and writing our lhotse manifests, always atomically.

Layout of a prepared corpus ``DIR/<corpus>/``: ``recordings_<split>.jsonl.gz``,
``supervisions_<split>.jsonl.gz``, ``cuts_<split>.jsonl.gz`` (the file later stages read; it is
the last one written, so its presence means the split is complete), ``rejected_<split>.jsonl``,
``feats_<split>/`` (lilcom chunks) and ``audio/`` (converted audio).
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Sequence, Union

from lhotse import CutSet, load_manifest_lazy

from .. import atomic
from ..atomic import atomic_output
from ..errors import SpeechBudgetError

log = logging.getLogger(__name__)


def save_manifest(manifest: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        manifest.to_file(tmp)


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(obj: Any, path: Path) -> None:
    atomic.write_json(path, obj)


def repoint(folder: Path, roots: Sequence[Path], new_root: Path) -> int:
    """Rewrite the paths under any of ``roots`` in the manifests and JSON files below ``folder`` to lie
    under ``new_root``: an experiment copied by hard links then reads its own links, not the files of
    the folder it was copied from (which may be deleted). A changed file is written anew, atomically, so
    the file it was linked to is untouched. The number of files changed."""
    changed = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not path.name.endswith((".jsonl.gz", ".jsonl", ".json")):
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
        new = text
        for root in roots:
            new = new.replace(f'"{root}/', f'"{new_root}/')
        if new != text:
            with atomic_output(path) as tmp, opener(tmp, "wt", encoding="utf-8") as f:
                f.write(new)
            changed += 1
    return changed


def cut_speaker(cut: Any) -> str:
    """The speaker of a cut (its first supervision's), '' when it has none: the one definition that
    speaker subsets and speaker folds share."""
    return (cut.supervisions[0].speaker or "") if cut.supervisions else ""


def cut_text(cut: Any) -> str:
    """A cut's transcript: its supervisions' texts joined with spaces ("" when it has none)."""
    return " ".join(s.text or "" for s in cut.supervisions).strip()


def cuts_path(corpus_dir: Union[str, Path], split: str) -> Path:
    return Path(corpus_dir) / f"cuts_{split}.jsonl.gz"


def split_manifests(paths: Sequence[Union[str, Path]]) -> List[Path]:
    """Cut manifests to score one by one: a corpus folder stands for each of its splits (a WER over
    train, dev and test together would mix the training data into the score)."""
    out: List[Path] = []
    for p in map(Path, paths):
        splits = sorted(p.glob("cuts_*.jsonl.gz")) if p.is_dir() else []
        out.extend(splits or [p])
    return out


def corpus_files(folder: Path) -> List[Path]:
    """A corpus folder's ``cuts_<split>.jsonl.gz`` files, or an error that says what to pass instead."""
    files = sorted(Path(folder).glob("cuts_*.jsonl.gz"))
    if files:
        return files
    corpora = sorted(d.name for d in Path(folder).iterdir() if d.is_dir() and any(d.glob("cuts_*.jsonl.gz")))
    if corpora:  # `prepare --out data/` writes data/<corpus>/: the user named the parent
        raise SpeechBudgetError(
            f"{folder} holds corpus folders, not cuts: pass one of them ({', '.join(corpora)})"
        )
    raise SpeechBudgetError(f"no cuts_*.jsonl.gz in {folder}; run `speechbudget prepare` first")


def split_file(path: Union[str, Path], split: str, what: str) -> Path:
    """Where one split is meant (``train_cuts=data/fsdd``), a corpus folder stands for its
    ``cuts_<split>.jsonl.gz`` only: loading the whole folder would train on its test split."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = path / f"cuts_{split}.jsonl.gz"
    if found.is_file():
        return found
    have = [f.name for f in corpus_files(path)]  # a parent of corpora, or no cuts: its own message
    raise SpeechBudgetError(
        f"{what}: the corpus folder {path} has no {split} split ({', '.join(have)}); name a file"
    )


def one_manifest(path: Union[str, Path], what: str) -> Path:
    """A command that scores one set: a corpus folder with one split stands for it; with several,
    the user names one (a score over train and test together would mean nothing)."""
    path = Path(path)
    if not path.is_dir():
        return path
    files = corpus_files(path)
    if len(files) > 1:
        raise SpeechBudgetError(
            f"{what}: {path} holds {len(files)} splits ({', '.join(f.name for f in files)}); pass one of them"
        )
    return files[0]


def load_cuts(path: Union[str, Path]) -> CutSet:
    """A cut manifest, or the ``cuts_<split>.jsonl.gz`` files of a corpus folder."""
    path = Path(path)
    if path.is_dir():
        files = corpus_files(path)
        for f in files[:1]:
            load_cuts(f)  # its checks (a cut manifest, not empty, its audio still there) for the first
        return CutSet.from_cuts(c for f in files for c in load_manifest_lazy(f))
    if not path.is_file():
        raise SpeechBudgetError(f"{path} does not exist; run `speechbudget prepare` first")
    try:
        manifest = load_manifest_lazy(path)
    except Exception as e:
        raise SpeechBudgetError(f"{path} is not a lhotse cut manifest ({type(e).__name__}: {e})") from None
    if manifest is None:
        raise SpeechBudgetError(f"{path} is empty; re-run the stage that wrote it")
    if not isinstance(manifest, CutSet):
        raise SpeechBudgetError(
            f"{path} is a {type(manifest).__name__} manifest, not cuts; pass the cuts_<split>.jsonl.gz "
            "beside it (or the corpus folder)"
        )
    _check_files_of(next(iter(manifest), None), path)
    return manifest


def _check_files_of(cut: Any, path: Path) -> None:
    """Stop with what to do when the first cut's audio or features are gone (their exp_dir deleted or
    moved since `path` was written), before a stage fails part way with a reading error."""
    if cut is None:
        return
    files = [s.source for s in (cut.recording.sources if cut.has_recording else []) if s.type == "file"]
    if cut.has_features and cut.features.storage_path:
        files.append(cut.features.storage_path)
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise SpeechBudgetError(
            f"{path} names {missing[0]}, which no longer exists (the folder it was prepared in deleted or "
            "moved?): prepare that corpus again, e.g. remove its folder and re-run the stage that wrote it"
        )


def subset_hours(cuts: CutSet, hours: float, seed: int, key: str = "train_hours") -> CutSet:
    """A seeded random subset of about ``hours`` of audio (the first cuts of a seeded shuffle)."""
    if hours <= 0:
        raise SpeechBudgetError(f"{key} must be positive (got {hours})")
    picked, total = [], 0.0
    for c in cuts.to_eager().shuffle(rng=random.Random(seed)):
        if total >= hours * 3600:
            break
        picked.append(c)
        total += c.duration
    if total < hours * 3600:  # the recipe asked for more than there is: say so, or the run looks cut down
        log.warning(
            "%s is %g h but the cuts hold only %.4g h: training on all of them", key, hours, total / 3600
        )
    return CutSet.from_cuts(picked).to_eager()
