"""Class labels of audio clips in lhotse cuts, and the label vocabulary beside the manifests.

Convention: a clip's classes are a list of class names in ``cut.custom["labels"]``, e.g.
``["7"]`` (single-label: exactly one name) or ``["Speech", "Music"]`` (multi-label). They live on
the cut, not on a supervision, because they describe the whole clip (as the k-means targets in
``custom["kmeans"]`` do) and a clip may have no supervision at all.

The vocabulary is ``labels.json`` beside the manifests: ``{"classes": [...], "multi_label": bool}``.
Class indices are positions in ``classes``, so the file fixes the head's output order for
training, evaluation and prediction alike. Loading it against a cut set fails, naming the classes,
when a cut carries a label the vocabulary does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch

from ..atomic import write_json
from ..errors import SpeechBudgetError

LABELS_KEY = "labels"
VOCAB_FILE = "labels.json"


def cut_labels(cut) -> List[str]:
    """The class names of a cut (``cut.custom["labels"]``); a clear error when there are none."""
    labels = (cut.custom or {}).get(LABELS_KEY)
    if not labels:
        raise SpeechBudgetError(
            f"cut {cut.id} has no class labels (custom['labels'], a list of class names); "
            "prepare a classification corpus or attach labels with speechbudget.data.labels.with_labels"
        )
    if isinstance(labels, str):
        return [labels]
    return [str(x) for x in labels]


def with_labels(cut, labels: Union[str, Sequence[str]]):
    """The cut with ``custom["labels"]`` set (a single name becomes a one-element list)."""
    names = [labels] if isinstance(labels, str) else [str(x) for x in labels]
    cut.custom = {**(cut.custom or {}), LABELS_KEY: names}
    return cut


def fsdd_digit(path: Union[str, Path]) -> str:
    """The digit of a Free Spoken Digit Dataset file, ``{digit}_{speaker}_{index}.wav`` -> ``"digit"``."""
    parts = Path(path).stem.split("_")
    if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) > 9:
        raise SpeechBudgetError(
            f"{Path(path).name} is not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav)"
        )
    return parts[0]


def vocab_path(path: Union[str, Path]) -> Path:
    """A manifest folder -> its ``labels.json``; a file path is kept."""
    path = Path(path)
    return path / VOCAB_FILE if path.is_dir() or not path.suffix else path


@dataclass
class LabelVocabulary:
    classes: List[str]
    multi_label: bool = False
    _index: Dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.classes = [str(c) for c in self.classes]
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise SpeechBudgetError(f"label vocabulary lists classes twice: {', '.join(dup)}")
        self._index = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def from_cuts(cls, cuts: Iterable, multi_label: Optional[bool] = None) -> LabelVocabulary:
        """Every class seen in ``cuts``, sorted (numerically when all are numbers, e.g. digits).
        ``multi_label`` defaults to whether any cut has more than one label."""
        seen, many = set(), False
        for cut in cuts:
            labels = cut_labels(cut)
            seen.update(labels)
            many = many or len(labels) > 1
        numeric = all(s.lstrip("-").isdigit() for s in seen)
        classes = sorted(seen, key=(lambda s: (int(s), s)) if numeric else None)
        return cls(classes, many if multi_label is None else multi_label)

    @classmethod
    def from_label_lists(cls, lists: Iterable[Sequence[str]], multi_label: bool = False) -> LabelVocabulary:
        """Every class named in ``lists`` (one list of names per clip), sorted as :meth:`from_cuts`."""
        seen = {str(x) for labels in lists for x in labels}
        numeric = all(s.lstrip("-").isdigit() for s in seen)
        return cls(sorted(seen, key=(lambda s: (int(s), s)) if numeric else None), multi_label)

    def unknown(self, cuts: Iterable) -> List[str]:
        return sorted({name for cut in cuts for name in cut_labels(cut) if name not in self._index})

    def check(self, cuts: Iterable) -> None:
        """Fail before training, naming them, when cuts carry classes outside the vocabulary (or
        several labels for a single-label vocabulary)."""
        cuts = list(cuts)
        unknown = self.unknown(cuts)
        if unknown:
            shown = ", ".join(unknown[:20]) + (f" (+{len(unknown) - 20} more)" if len(unknown) > 20 else "")
            raise SpeechBudgetError(
                f"{len(unknown)} class(es) in the cuts are not in the label vocabulary: {shown}; "
                f"rebuild {VOCAB_FILE} from the training cuts or fix the labels"
            )
        if not self.multi_label:
            multi = [c.id for c in cuts if len(cut_labels(c)) > 1]
            if multi:
                raise SpeechBudgetError(
                    f"{len(multi)} cut(s) have several labels (e.g. {multi[0]}) but the vocabulary is "
                    "single-label; set multi_label in labels.json"
                )

    def encode(self, labels: Sequence[str]) -> torch.Tensor:
        """Class index () for single-label, multi-hot (C,) float for multi-label."""
        missing = [x for x in labels if x not in self._index]
        if missing:
            raise SpeechBudgetError(f"unknown class(es) {', '.join(sorted(set(missing)))}")
        if self.multi_label:
            target = torch.zeros(len(self.classes))
            target[[self._index[x] for x in labels]] = 1.0
            return target
        if len(labels) != 1:
            raise SpeechBudgetError(f"single-label vocabulary, got {len(labels)} labels: {list(labels)}")
        return torch.tensor(self._index[labels[0]])

    def to_json(self) -> Dict:
        return {"classes": self.classes, "multi_label": self.multi_label}


def write_vocabulary(path: Union[str, Path], vocab: LabelVocabulary) -> Path:
    out = vocab_path(path)
    write_json(out, vocab.to_json())
    return out


def load_vocabulary(path: Union[str, Path], cuts: Optional[Iterable] = None) -> LabelVocabulary:
    """Read ``labels.json`` (a folder or the file); with ``cuts``, check every label is known."""
    src = vocab_path(path)
    if not src.is_file():
        raise SpeechBudgetError(f"no label vocabulary at {src}; write one from the training cuts first")
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
        vocab = LabelVocabulary(list(data["classes"]), bool(data.get("multi_label", False)))
    except (ValueError, KeyError, TypeError) as e:
        raise SpeechBudgetError(f"{src} is not a label vocabulary ({{'classes': [...]}}): {e}") from None
    if cuts is not None:
        vocab.check(cuts)
    return vocab


def label_transform(cuts: Iterable, vocab: LabelVocabulary) -> Callable[[Dict], Dict]:
    """A ``SpeechDataset`` transform adding ``batch["labels"]`` ((B,) indices or (B, C) multi-hot),
    looked up by cut id in the batch's order (the dataset sorts cuts by duration)."""
    targets = {cut.id: vocab.encode(cut_labels(cut)) for cut in cuts}

    def add_labels(batch: Dict) -> Dict:
        batch["labels"] = torch.stack([targets[i] for i in batch["ids"]])
        return batch

    return add_labels
