"""A recipe's ``pool:``: more unlabeled corpora that k-means and pretraining read beside ``prepare``'s.

Each entry is a corpus like ``prepare:`` (``source:`` and its options; prepared into its own folder
``EXP/data/<name>``) plus two keys of the pool's own:

- ``splits``: which of its prepared splits join the training pool (default ``[train]``). ``test`` is
  refused: a test speaker's audio never enters pretraining. Its dev split, when not in ``splits``,
  joins the held-out masked-prediction loss.
- ``max_hours``: a seeded random subset of about that many hours of those cuts.

:func:`write_pool` writes the union (``prepare``'s train and dev cuts first) to
``EXP/pool/cuts_{train,dev}.jsonl.gz`` and ``pool.json``; each cut is tagged with its corpus
(``custom["corpus"]``), so pretraining's run card records hours per corpus. A cut id seen twice is
an error, never an overwrite; so is a pool cut that is a scored (test) cut, or, in a corpus of the
scored corpus's source, a cut of a scored speaker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from lhotse import CutSet

from .. import atomic
from ..config import split_csv
from ..errors import SpeechBudgetError
from .corpus_spec import CorpusSpec
from .manifests import cut_speaker, cuts_path, load_cuts, save_manifest, subset_hours

#: the cut's corpus in a pooled manifest
CORPUS_KEY = "corpus"
POOL_SPLITS = ("train", "dev")


@dataclass
class PoolEntry:
    """One ``pool:`` item: a corpus, the splits of it that are pooled, and an optional hours cap."""

    corpus: CorpusSpec
    splits: List[str] = field(default_factory=lambda: ["train"])
    max_hours: Optional[float] = None

    @property
    def name(self) -> str:
        return self.corpus.name

    @classmethod
    def from_config(cls, value: Any, key: str) -> PoolEntry:
        if isinstance(value, PoolEntry):
            return value
        if not isinstance(value, Mapping) or "source" not in value:
            raise SpeechBudgetError(
                f"config key '{key}' must be a mapping with source: (then that source's options, "
                "splits and max_hours)"
            )
        values = dict(value)
        splits = values.pop("splits", ["train"])
        splits = split_csv(splits) if isinstance(splits, str) else splits
        if not isinstance(splits, list) or not splits or len(set(map(str, splits))) != len(splits):
            raise SpeechBudgetError(
                f"{key}.splits must be a list of distinct splits (train, dev), got {splits!r}"
            )
        if "test" in splits:
            raise SpeechBudgetError(
                f"{key}.splits may not include test: test speakers' audio never enters the pretraining pool"
            )
        bad = [s for s in splits if s not in POOL_SPLITS]
        if bad:
            raise SpeechBudgetError(f"{key}.splits: unknown split {bad[0]!r}; choose from train, dev")
        max_hours = values.pop("max_hours", None)
        if max_hours is not None and (
            isinstance(max_hours, bool) or not isinstance(max_hours, (int, float)) or not max_hours > 0
        ):
            raise SpeechBudgetError(f"{key}.max_hours must be a positive number of hours, got {max_hours!r}")
        corpus = CorpusSpec.build(str(values.pop("source")), values, key)
        return cls(corpus, [str(s) for s in splits], None if max_hours is None else float(max_hours))


def check_names(named: Sequence[Tuple[str, Optional[str]]]) -> None:
    """(recipe key, corpus name) pairs: each corpus needs its own folder under EXP/data."""
    seen: Dict[str, str] = {}
    for key, name in named:
        if name is None:
            continue
        if name in seen:
            raise SpeechBudgetError(
                f"{key} and {seen[name]} name the same corpus folder {name!r}; give {key} a name"
            )
        seen[name] = key


@dataclass(frozen=True)
class PoolMember:
    """A prepared corpus in the pool: where it is, which splits train, and its cap."""

    name: str
    corpus_dir: Path
    source: str
    splits: Tuple[str, ...] = ("train",)
    max_hours: Optional[float] = None


@dataclass(frozen=True)
class Scored:
    """What the pool must never contain: the cuts that are scored, and their source."""

    cuts: Tuple[Any, ...] = ()
    source: Optional[str] = None


def _split_cuts(corpus_dir: Path, splits: Iterable[str]) -> List[Any]:
    return [
        c for s in splits if cuts_path(corpus_dir, s).is_file() for c in load_cuts(cuts_path(corpus_dir, s))
    ]


def _hours(cuts: Sequence[Any]) -> float:
    return sum(c.duration for c in cuts) / 3600


def write_pool(members: Sequence[PoolMember], out_dir: Path, scored: Scored, seed: int) -> Dict[str, Any]:
    """The union of the members' training (and held-out dev) cuts, checked and written to ``out_dir``."""
    test_ids = {c.id for c in scored.cuts}
    test_speakers = {cut_speaker(c) for c in scored.cuts} - {""}
    owner: Dict[str, str] = {}
    train: List[Any] = []
    dev: List[Any] = []
    corpora: Dict[str, Dict[str, Any]] = {}
    for m in members:
        cuts = _split_cuts(m.corpus_dir, m.splits)
        if not cuts:
            raise SpeechBudgetError(
                f"pool corpus {m.name} has no prepared {'/'.join(m.splits)} cuts in {m.corpus_dir}"
            )
        if m.max_hours is not None:
            cuts = list(subset_hours(CutSet.from_cuts(cuts), m.max_hours, seed, key=f"{m.name} max_hours"))
        held = [] if "dev" in m.splits else _split_cuts(m.corpus_dir, ["dev"])
        for c in cuts + held:
            if c.id in test_ids:
                raise SpeechBudgetError(
                    f"pool corpus {m.name} holds the scored test cut {c.id}; drop it from pool"
                )
            if m.source == scored.source and cut_speaker(c) in test_speakers:
                raise SpeechBudgetError(
                    f"pool corpus {m.name} holds audio of test speaker {cut_speaker(c)!r}; "
                    "give it the labelled corpus's test_speakers"
                )
            if c.id in owner:
                raise SpeechBudgetError(
                    f"cut id {c.id!r} is in pool corpora {owner[c.id]} and {m.name}: ids must be unique "
                    "across the pool (the same audio twice?); drop one of them"
                )
            owner[c.id] = m.name
        train += [c.with_custom(CORPUS_KEY, m.name) for c in cuts]
        dev += [c.with_custom(CORPUS_KEY, m.name) for c in held]
        corpora[m.name] = {
            "source": m.source,
            "splits": list(m.splits),
            "cuts": len(cuts),
            "hours": round(_hours(cuts), 4),
            "dev_cuts": len(held),
            "dev_hours": round(_hours(held), 4),
            **({"max_hours": m.max_hours} if m.max_hours is not None else {}),
        }
    out_dir = Path(out_dir)
    save_manifest(CutSet.from_cuts(train), cuts_path(out_dir, "train"))
    if dev:
        save_manifest(CutSet.from_cuts(dev), cuts_path(out_dir, "dev"))
    else:
        cuts_path(out_dir, "dev").unlink(missing_ok=True)  # a stale one would feed k-means and the loss
    summary = {"dir": str(out_dir), "hours": round(_hours(train), 4), "corpora": corpora}
    atomic.write_json(out_dir / "pool.json", summary)
    return summary


def seconds_by_corpus(cuts: Iterable[Any]) -> Dict[str, float]:
    """Seconds of audio per pooled corpus (``""`` for cuts that name none), in one pass."""
    out: Dict[str, float] = {}
    for c in cuts:
        name = (getattr(c, "custom", None) or {}).get(CORPUS_KEY, "")
        out[name] = out.get(name, 0.0) + c.duration
    return out
