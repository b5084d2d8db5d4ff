"""``speechbudget prepare``: any source -> validated 16 kHz audio -> lhotse manifests -> fbank.

Bad items never sink a run: each is written with its reason to ``rejected_<split>.jsonl``.
A split whose ``cuts_<split>.jsonl.gz`` exists is complete and is skipped unless ``force``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set

from lhotse import CutSet, MonoCut, RecordingSet, SupervisionSegment, SupervisionSet

from .. import __version__, atomic
from ..errors import SpeechBudgetError
from ..locks import lock_corpus
from .audio import check_and_convert
from .corpus_spec import CorpusSpec
from .executor import open_executor, run_map
from .features import compute_fbank, remove_storage
from .labels import LABELS_KEY, LabelVocabulary, write_vocabulary
from .manifests import cuts_path, save_manifest, write_jsonl
from .sources import FindContext, SourceItem, get_source


@dataclass
class SplitSummary:
    split: str
    kept: int = 0
    rejected: int = 0
    converted: int = 0
    hours: float = 0.0
    skipped: bool = False  # already prepared
    reasons: Dict[str, int] = field(default_factory=dict)


@dataclass
class PrepareSummary:
    corpus: str
    corpus_dir: str
    splits: List[SplitSummary]
    seconds: float
    #: classification corpora: the classes in labels.json and whether clips carry several
    labels: Optional[Dict[str, Any]] = None

    @property
    def usable(self) -> int:
        return sum(s.kept for s in self.splits)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "corpus": self.corpus,
            "corpus_dir": self.corpus_dir,
            "seconds": round(self.seconds, 2),
            "usable": self.usable,
            "splits": [asdict(s) for s in self.splits],
            **({"labels": self.labels} if self.labels else {}),
        }


def _text_problem(item: SourceItem) -> Optional[str]:
    if item.problem:
        return item.problem
    if not item.labeled:
        return None
    if item.text is None:
        return "missing transcript"
    if not item.text.strip():
        return "empty transcript"
    return None


def _label_problem(item: SourceItem, known_classes: Optional[Set[str]]) -> Optional[str]:
    """A classification item with no class, or (dev/test) a class the training split never has:
    no model trained on train can predict it, so it would only distort the scores."""
    if item.labels is None:
        return None
    if not [x for x in item.labels if str(x).strip()]:
        return "missing class label"
    unseen = sorted({str(x) for x in item.labels} - known_classes) if known_classes is not None else []
    return f"class not in train: {', '.join(unseen)}" if unseen else None


def _reason_key(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


def prepare_split(
    items: List[SourceItem],
    split: str,
    corpus_dir: Path,
    features: bool,
    num_jobs: int,
    executor,
    known_classes: Optional[Set[str]] = None,
    band_limit_hz: Optional[int] = None,
) -> SplitSummary:
    """``known_classes``: the training split's classes; items of other classes are rejected.
    ``band_limit_hz``: every item keeps only the frequencies below it (:func:`audio.band_limit`)."""
    summary = SplitSummary(split)
    cuts_path(corpus_dir, split).unlink(missing_ok=True)  # from here on the split is absent, not stale
    old_storages = _feature_storages(corpus_dir, split)
    rejected: List[Dict[str, Any]] = []
    seen: Dict[str, str] = {}
    todo: List[SourceItem] = []
    for it in items:
        problem = _text_problem(it) or _label_problem(it, known_classes)
        if it.id in seen:
            problem = f"duplicate id (first: {seen[it.id]})"
        if problem:
            rejected.append({"id": it.id, "audio": it.audio, "reason": problem})
            continue
        seen[it.id] = it.audio
        todo.append(it)
    checks = run_map(
        executor,
        check_and_convert,
        [(it.id, it.audio, corpus_dir / "audio" / split, band_limit_hz) for it in todo],
        f"checking {split}",
    )
    recordings, supervisions = [], []
    for it, res in zip(todo, checks):
        if res.recording is None:
            rejected.append({"id": it.id, "audio": it.audio, "reason": res.reason})
            continue
        summary.converted += res.note is not None
        recordings.append(res.recording)
        supervisions.append(
            SupervisionSegment(
                id=it.id,
                recording_id=it.id,
                start=0.0,
                duration=res.recording.duration,
                channel=0,
                text=" ".join(it.text.split()) if it.text else None,
                speaker=it.speaker,
                language="English",
                custom=it.custom or None,
            )
        )
    for r in rejected:
        key = _reason_key(r["reason"])
        summary.reasons[key] = summary.reasons.get(key, 0) + 1
    summary.kept, summary.rejected = len(recordings), len(rejected)
    summary.hours = sum(r.duration for r in recordings) / 3600
    write_jsonl(rejected, corpus_dir / f"rejected_{split}.jsonl")
    if not recordings:
        for old in old_storages:
            remove_storage(old)
        return summary
    recs, sups = RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions)
    save_manifest(recs, corpus_dir / f"recordings_{split}.jsonl.gz")
    save_manifest(sups, corpus_dir / f"supervisions_{split}.jsonl.gz")
    # one cut per recording, with the utterance id as cut id (lhotse would append "-<channel>")
    labels = {it.id: [str(x) for x in it.labels] for it in todo if it.labels}
    cuts = CutSet.from_cuts(
        MonoCut(
            id=r.id,
            start=0.0,
            duration=r.duration,
            channel=0,
            recording=r,
            supervisions=[s],
            custom={LABELS_KEY: labels[r.id]} if r.id in labels else None,
        )
        for r, s in zip(recordings, supervisions)
    )
    if features:
        # a fresh folder beside the old one: the old features go only after the new cuts point elsewhere
        storage = corpus_dir / f"feats_{split}-{uuid.uuid4().hex[:8]}"
        cuts = compute_fbank(cuts, storage, num_jobs=num_jobs, executor=executor)
    save_manifest(cuts, cuts_path(corpus_dir, split))  # written last: its presence means "complete"
    for old in old_storages:
        remove_storage(old)
    return summary


#: options that change what a corpus contains (the rest only change how fast it is made)
_HOW_ONLY = ("force", "num_jobs", "executor", "scheduler", "name")


def _content_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _HOW_ONLY}


def _check_same_options(spec: CorpusSpec, corpus_dir: Path) -> None:
    """A re-run with other options must not mix old and new splits: stop, or with force redo all.

    ``prepare.json`` records the options before the first split is written, so a split on disk was
    always made under the recorded options; splits with no record (a run of an older version killed
    before its end) are of unknown options and are never kept."""
    stored_path = corpus_dir / "prepare.json"
    if spec.common.force or not prepared_splits(corpus_dir):
        return
    try:
        stored = json.loads(stored_path.read_text(encoding="utf-8")).get("options")
    except (OSError, ValueError, AttributeError):
        stored = None
    if not isinstance(stored, dict):
        raise SpeechBudgetError(
            f"{corpus_dir} holds splits ({', '.join(prepared_splits(corpus_dir))}) but no readable record of "
            "the options they were made with (prepare.json); add --force (recipe: force: true) to redo them"
        )
    old, new = _content_options(stored), _content_options(spec.to_dict())
    diffs = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if diffs:
        raise SpeechBudgetError(
            f"{corpus_dir} was prepared with other options ({'; '.join(diffs)}); add --force (recipe: force: true) "
            "to redo every split with the new ones, or prepare into another name"
        )


def prepared_splits(corpus_dir: Path) -> List[str]:
    """Splits whose cut manifest exists: the complete ones."""
    return sorted(p.name[len("cuts_") : -len(".jsonl.gz")] for p in Path(corpus_dir).glob("cuts_*.jsonl.gz"))


def _remove_split(corpus_dir: Path, split: str) -> None:
    """Drop a split, its completion marker first, so it is never half there and looking complete."""
    cuts_path(corpus_dir, split).unlink(missing_ok=True)
    for name in (f"recordings_{split}.jsonl.gz", f"supervisions_{split}.jsonl.gz", f"rejected_{split}.jsonl"):
        (corpus_dir / name).unlink(missing_ok=True)
    for storage in _feature_storages(corpus_dir, split):
        remove_storage(storage)


def _feature_storages(corpus_dir: Path, split: str) -> List[Path]:
    """``feats_<split>`` (older versions) and ``feats_<split>-<8 hex>``, with or without ".lca"."""
    pattern = re.compile(rf"feats_{re.escape(split)}(-[0-9a-f]{{8}})?(\.lca)?")
    return [p for p in Path(corpus_dir).glob(f"feats_{split}*") if pattern.fullmatch(p.name)]


def prepare(spec: CorpusSpec, out_dir: Path) -> PrepareSummary:
    """Run the spec's source and prepare every split it yields into ``OUT/<name>/``."""
    start = time.time()
    src, common = get_source(spec.source), spec.common
    # absolute paths in manifests: stages may run from elsewhere
    corpus_dir = Path(out_dir).resolve() / spec.name
    made = [p for p in (corpus_dir, *corpus_dir.parents) if not p.exists()]  # ours to remove on failure
    try:
        corpus_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError) as e:
        raise SpeechBudgetError(
            f"cannot create the corpus folder {corpus_dir} ({e.strerror}); choose another --out"
        ) from None
    _lock = lock_corpus(corpus_dir)  # one writer per corpus folder; released when prepare() returns
    _check_same_options(spec, corpus_dir)
    record = {"speechbudget_version": __version__, "corpus": spec.name, "features": common.features}
    try:
        kept = {} if common.force else _stored_split_summaries(corpus_dir)
        if common.force:  # every split is redone: none made under other options may outlive a kill
            for split in prepared_splits(corpus_dir):
                _remove_split(corpus_dir, split)
        # the options first, so that every split written from here on is one of these options; the kept
        # splits' numbers stay, for the summary of a re-run
        atomic.write_json(
            corpus_dir / "prepare.json",
            {
                **record,
                "options": spec.to_dict(),
                "complete": False,
                "summary": {"splits": list(kept.values())},
            },
        )
        with open_executor(common.executor, common.num_jobs, common.scheduler) as executor:
            items = src.find_items(spec.options, FindContext(corpus_dir, executor))
            if not items:
                raise SpeechBudgetError(f"the {spec.source} source found no audio")
            by_split: Dict[str, List[SourceItem]] = defaultdict(list)
            for it in items:
                by_split[it.split].append(it)
            splits = []
            known = _train_classes(by_split)
            order = ("train", "dev", "test")
            for split in sorted(by_split, key=lambda s: order.index(s) if s in order else 9):
                if cuts_path(corpus_dir, split).exists() and not common.force:
                    splits.append(_existing_summary(corpus_dir, split, kept.get(split)))
                    continue
                splits.append(
                    prepare_split(
                        by_split[split],
                        split,
                        corpus_dir,
                        common.features,
                        common.num_jobs,
                        executor,
                        known_classes=None if split == "train" else known,
                        band_limit_hz=common.band_limit_hz,
                    )
                )
            vocabulary = _write_label_vocabulary(corpus_dir, items)
    except BaseException:
        if not any(p.is_file() and p.name not in (".lock", "prepare.json") for p in corpus_dir.rglob("*")):
            shutil.rmtree(corpus_dir, ignore_errors=True)  # a failed first run leaves no empty corpus behind
            _remove_empty(made[1:])  # ... nor the empty --out folders it made for it
        raise
    summary = PrepareSummary(spec.name, str(corpus_dir), splits, time.time() - start, vocabulary)
    atomic.write_json(
        corpus_dir / "prepare.json",
        {**record, "options": spec.to_dict(), "complete": True, "summary": summary.to_dict()},
    )
    return summary


def _remove_empty(folders: List[Path]) -> None:
    """Remove these folders, innermost first, while they are empty (another writer's files stay)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _train_classes(by_split: Mapping[str, List[SourceItem]]) -> Optional[Set[str]]:
    """The classes of the training items (None: no labeled training split, nothing to check against)."""
    train = [it for it in by_split.get("train", []) if it.labels and not it.problem]
    return {str(x) for it in train for x in it.labels} if train else None


def _write_label_vocabulary(corpus_dir: Path, items: List[SourceItem]) -> Optional[Dict[str, Any]]:
    """``labels.json`` from the classes of the prepared training cuts (every split's when there is
    no training split), when the source gives labels; None otherwise."""
    if not any(it.labels for it in items):
        return None
    from .manifests import load_cuts

    splits = prepared_splits(corpus_dir)
    names = ["train"] if "train" in splits else splits
    lists = [
        list(c.custom[LABELS_KEY])
        for split in names
        for c in load_cuts(cuts_path(corpus_dir, split))
        if c.custom and c.custom.get(LABELS_KEY)
    ]
    if not lists:
        return None
    vocab = LabelVocabulary.from_label_lists(lists, multi_label=any(len(x) > 1 for x in lists))
    path = write_vocabulary(corpus_dir, vocab)
    return {"classes": len(vocab), "multi_label": vocab.multi_label, "path": str(path)}


def _stored_split_summaries(corpus_dir: Path) -> Dict[str, Dict[str, Any]]:
    """The per-split numbers the last run recorded in prepare.json (empty when there are none)."""
    try:
        data = json.loads((corpus_dir / "prepare.json").read_text(encoding="utf-8"))
        return {str(d["split"]): d for d in data["summary"]["splits"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _existing_summary(
    corpus_dir: Path, split: str, stored: Optional[Mapping[str, Any]] = None
) -> SplitSummary:
    """A kept split's numbers: as its run recorded them, else counted from its files."""
    if stored is not None:
        names = {f.name for f in dataclasses.fields(SplitSummary)}
        return SplitSummary(**{**{k: v for k, v in stored.items() if k in names}, "skipped": True})
    from lhotse import load_manifest_lazy

    cuts = load_manifest_lazy(cuts_path(corpus_dir, split))
    n, secs = 0, 0.0
    for c in cuts:
        n += 1
        secs += c.duration
    rej = corpus_dir / f"rejected_{split}.jsonl"
    lines = [ln for ln in rej.read_text(encoding="utf-8").splitlines() if ln.strip()] if rej.exists() else []
    reasons: Dict[str, int] = {}
    for line in lines:
        key = _reason_key(str(json.loads(line).get("reason", "")))
        reasons[key] = reasons.get(key, 0) + 1
    return SplitSummary(split, kept=n, rejected=len(lines), hours=secs / 3600, skipped=True, reasons=reasons)
