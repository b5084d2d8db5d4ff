"""``speechbudget prepare``: any source -> validated 16 kHz audio -> lhotse manifests -> fbank.

Bad items never sink a run: each is written with its reason to ``rejected_<split>.jsonl``.
A split whose ``cuts_<split>.jsonl.gz`` exists is complete and is skipped unless ``force``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from lhotse import CutSet, MonoCut, RecordingSet, SupervisionSegment, SupervisionSet

from .. import __version__
from ..errors import SpeechBudgetError
from ..locks import lock_corpus
from .audio import check_and_convert
from .executor import open_executor, run_map
from .features import compute_fbank
from .manifests import cuts_path, save_manifest, write_json, write_jsonl
from .sources import SourceItem


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
        }


def _text_problem(item: SourceItem) -> Optional[str]:
    if not item.labeled:
        return None
    if item.text is None:
        return "missing transcript"
    if not item.text.strip():
        return "empty transcript"
    return None


def _reason_key(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


def prepare_split(
    items: List[SourceItem], split: str, corpus_dir: Path, features: bool, num_jobs: int, executor
) -> SplitSummary:
    summary = SplitSummary(split)
    rejected: List[Dict[str, Any]] = []
    seen: Dict[str, str] = {}
    todo: List[SourceItem] = []
    for it in items:
        problem = _text_problem(it)
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
        [(it.id, it.audio, corpus_dir / "audio" / split) for it in todo],
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
        return summary
    recs, sups = RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions)
    save_manifest(recs, corpus_dir / f"recordings_{split}.jsonl.gz")
    save_manifest(sups, corpus_dir / f"supervisions_{split}.jsonl.gz")
    # one cut per recording, with the utterance id as cut id (lhotse would append "-<channel>")
    cuts = CutSet.from_cuts(
        MonoCut(id=r.id, start=0.0, duration=r.duration, channel=0, recording=r, supervisions=[s])
        for r, s in zip(recordings, supervisions)
    )
    if features:
        cuts = compute_fbank(cuts, corpus_dir / f"feats_{split}", num_jobs=num_jobs, executor=executor)
    save_manifest(cuts, cuts_path(corpus_dir, split))  # written last: its presence means "complete"
    return summary


def prepare(
    find_items: Callable[[Any], List[SourceItem]],
    corpus: str,
    out_dir: Path,
    features: bool = True,
    force: bool = False,
    num_jobs: int = 1,
    executor_kind: str = "local",
    scheduler: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
) -> PrepareSummary:
    """Run a source's ``find_items(executor)`` and prepare every split it yields."""
    start = time.time()
    if num_jobs > 1:  # worker processes each get a core; torch threads inside them only fight
        import torch

        torch.set_num_threads(1)
    corpus_dir = (
        Path(out_dir).resolve() / corpus
    )  # absolute paths in manifests: stages may run from elsewhere
    corpus_dir.mkdir(parents=True, exist_ok=True)
    _lock = lock_corpus(corpus_dir)  # one writer per corpus folder; released when prepare() returns
    with open_executor(executor_kind, num_jobs, scheduler) as executor:
        items = find_items(executor)
        if not items:
            raise SpeechBudgetError(f"the {corpus} source found no audio")
        by_split: Dict[str, List[SourceItem]] = defaultdict(list)
        for it in items:
            by_split[it.split].append(it)
        splits = []
        for split in sorted(
            by_split, key=lambda s: ("train", "dev", "test").index(s) if s in ("train", "dev", "test") else 9
        ):
            if cuts_path(corpus_dir, split).exists() and not force:
                splits.append(_existing_summary(corpus_dir, split))
                continue
            splits.append(prepare_split(by_split[split], split, corpus_dir, features, num_jobs, executor))
    summary = PrepareSummary(corpus, str(corpus_dir), splits, time.time() - start)
    write_json(
        {
            "speechbudget_version": __version__,
            "corpus": corpus,
            "features": features,
            "options": {k: str(v) for k, v in (options or {}).items()},
            "summary": summary.to_dict(),
        },
        corpus_dir / "prepare.json",
    )
    return summary


def _existing_summary(corpus_dir: Path, split: str) -> SplitSummary:
    from lhotse import load_manifest_lazy

    cuts = load_manifest_lazy(cuts_path(corpus_dir, split))
    n, secs = 0, 0.0
    for c in cuts:
        n += 1
        secs += c.duration
    rej = corpus_dir / f"rejected_{split}.jsonl"
    nrej = sum(1 for _ in open(rej)) if rej.exists() else 0
    return SplitSummary(split, kept=n, rejected=nrej, hours=secs / 3600, skipped=True)
