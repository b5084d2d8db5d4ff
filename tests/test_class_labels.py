"""Class labels in cuts (custom["labels"]) and the labels.json vocabulary."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FSDD
from lhotse import CutSet, Recording

from speechbudget.data.labels import (
    LabelVocabulary,
    cut_labels,
    fsdd_digit,
    label_transform,
    load_vocabulary,
    with_labels,
    write_vocabulary,
)
from speechbudget.errors import SpeechBudgetError


def cuts_with(label_lists):
    rec = Recording.from_file(FSDD / "3_theo_0.wav")
    cuts = []
    for i, labels in enumerate(label_lists):
        cut = rec.to_cut().with_id(f"clip{i}")
        cuts.append(with_labels(cut, labels) if labels is not None else cut)
    return CutSet.from_cuts(cuts)


def test_fsdd_digit_from_file_names():
    assert fsdd_digit(FSDD / "7_jackson_12.wav") == "7"
    assert fsdd_digit("0_george_0") == "0"
    for bad in ("george_7.wav", "12_theo_1.wav", "x_theo_1.wav"):
        with pytest.raises(SpeechBudgetError, match="FSDD"):
            fsdd_digit(bad)


def test_labels_live_in_cut_custom_and_survive_a_manifest_round_trip(tmp_path):
    cuts = cuts_with([["3"], "5", ["speech", "music"]])
    assert cuts[0].custom == {"labels": ["3"]} and cut_labels(cuts[1]) == ["5"]
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    back = CutSet.from_file(tmp_path / "cuts.jsonl.gz")
    assert [cut_labels(c) for c in back] == [["3"], ["5"], ["speech", "music"]]
    with pytest.raises(SpeechBudgetError, match="clip0 has no class labels"):
        cut_labels(cuts_with([None])[0])


def test_vocabulary_from_cuts_sorts_digits_numerically_and_round_trips(tmp_path):
    cuts = cuts_with([["10"], ["2"], ["1"], ["2"]])
    vocab = LabelVocabulary.from_cuts(cuts)
    assert vocab.classes == ["1", "2", "10"] and not vocab.multi_label
    path = write_vocabulary(tmp_path, vocab)
    assert path.name == "labels.json"
    assert json.loads(path.read_text()) == {"classes": ["1", "2", "10"], "multi_label": False}
    assert not list(tmp_path.glob(".tmp*"))  # written atomically
    back = load_vocabulary(tmp_path, cuts)
    assert back.classes == vocab.classes
    assert int(back.encode(["10"])) == 2


def test_unknown_classes_are_named():
    vocab = LabelVocabulary(["dog", "cat"])
    with pytest.raises(SpeechBudgetError, match="2 class\\(es\\).*not in the label vocabulary: bird, cow"):
        vocab.check(cuts_with([["dog"], ["cow"], ["bird"], ["cow"]]))
    with pytest.raises(SpeechBudgetError, match="several labels"):
        vocab.check(cuts_with([["dog", "cat"]]))
    with pytest.raises(SpeechBudgetError, match="twice: cat"):
        LabelVocabulary(["cat", "dog", "cat"])


def test_load_vocabulary_errors(tmp_path):
    with pytest.raises(SpeechBudgetError, match="no label vocabulary"):
        load_vocabulary(tmp_path)
    (tmp_path / "labels.json").write_text('{"names": []}')
    with pytest.raises(SpeechBudgetError, match="not a label vocabulary"):
        load_vocabulary(tmp_path)
    write_vocabulary(tmp_path, LabelVocabulary(["a"]))
    with pytest.raises(SpeechBudgetError, match="not in the label vocabulary: b"):
        load_vocabulary(tmp_path / "labels.json", cuts_with([["a"], ["b"]]))


def test_multi_label_encoding_and_batch_transform():
    cuts = cuts_with([["speech", "music"], ["dog"]])
    vocab = LabelVocabulary.from_cuts(cuts)
    assert vocab.multi_label and vocab.classes == ["dog", "music", "speech"]
    assert vocab.encode(["speech", "music"]).tolist() == [0.0, 1.0, 1.0]
    add = label_transform(cuts, vocab)
    batch = add({"ids": ["clip1", "clip0"]})  # the dataset's order, not the manifest's
    assert torch.equal(batch["labels"], torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    single = LabelVocabulary(["a", "b"])
    with pytest.raises(SpeechBudgetError, match="single-label"):
        single.encode(["a", "b"])
