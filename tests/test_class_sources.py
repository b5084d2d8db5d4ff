"""Class labels through the source registry: fsdd digits, dir (folders / CSV), Speech Commands, ESC-50."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FSDD, NOISE, cli_result, copy_fsdd

from speechbudget.data.corpus_spec import CorpusSpec
from speechbudget.data.labels import load_vocabulary
from speechbudget.data.manifests import load_cuts
from speechbudget.data.prepare import prepare
from speechbudget.errors import SpeechBudgetError


def _rejected(corpus: Path, split: str):
    path = corpus / f"rejected_{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _labels(corpus: Path, split: str):
    return {c.id: c.custom["labels"] for c in load_cuts(corpus / f"cuts_{split}.jsonl.gz")}


def test_fsdd_items_carry_their_digit_and_labels_json_is_written(tmp_path):
    src = copy_fsdd(tmp_path / "in", per_speaker=3, speakers=("george", "theo"))
    s = prepare(CorpusSpec.build("fsdd", {"path": str(src), "test_speakers": ["theo"]}), tmp_path / "o")
    corpus = Path(s.corpus_dir)
    train = _labels(corpus, "train")
    assert train == {f"fsdd-george-{d}-0": [str(d)] for d in range(3)}
    vocab = load_vocabulary(corpus)
    assert vocab.classes == ["0", "1", "2"] and not vocab.multi_label
    assert s.to_dict()["labels"]["classes"] == 3
    # transcripts are still there: the same corpus serves CTC
    assert all(c.supervisions[0].text for c in load_cuts(corpus / "cuts_test.jsonl.gz"))


def _speech_commands(root: Path) -> Path:
    """A Speech Commands tree whose word folders hold FSDD digits (george/jackson train, nicolas dev,
    theo test), a noise folder, an empty word folder and a corrupt wav."""
    words = {"zero": 0, "one": 1, "two": 2}
    dev, test = [], []
    for word, digit in words.items():
        (root / word).mkdir(parents=True)
        for spk in ("george", "jackson", "nicolas", "theo"):
            for i in range(2):
                name = f"{spk}_nohash_{i}.wav"
                shutil.copy(FSDD / f"{digit}_{spk}_{i}.wav", root / word / name)
                if spk == "nicolas":
                    dev.append(f"{word}/{name}")
                if spk == "theo":
                    test.append(f"{word}/{name}")
    (root / "two" / "broken_nohash_0.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (root / "three").mkdir()  # a damaged class: no audio at all
    (root / "_background_noise_").mkdir()
    shutil.copy(NOISE / "white_noise.wav", root / "_background_noise_" / "white_noise.wav")
    (root / "validation_list.txt").write_text("\n".join(dev) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_speech_commands_splits_labels_and_damaged_classes_reported(tmp_path, capsys):
    root = _speech_commands(tmp_path / "sc")
    code, out, err = cli_result(
        capsys, "prepare", "speechcommands", str(root), "--out", str(tmp_path / "o"), "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    kept = {s["split"]: s["kept"] for s in summary["splits"]}
    assert kept == {"train": 12, "dev": 6, "test": 6}
    corpus = tmp_path / "o" / "speechcommands"
    assert load_vocabulary(corpus).classes == ["one", "two", "zero"]  # noise is never a class
    train = _labels(corpus, "train")
    assert train["spc-one%2Fgeorge_nohash_1.wav"] == ["one"]
    assert all(not cid.startswith("spc-_background") for cid in train)
    assert {c.supervisions[0].speaker for c in load_cuts(corpus / "cuts_dev.jsonl.gz")} == {"nicolas"}
    reasons = {r["id"]: r["reason"] for r in _rejected(corpus, "train")}
    assert "holds no audio" in reasons["spc-three"]
    assert "unreadable" in reasons["spc-two%2Fbroken_nohash_0.wav"]


def test_speech_commands_without_list_files_is_a_clear_error(tmp_path, capsys):
    root = _speech_commands(tmp_path / "sc")
    (root / "testing_list.txt").unlink()
    code, _, err = cli_result(capsys, "prepare", "speechcommands", str(root), "--out", str(tmp_path / "o"))
    assert code == 2 and "testing_list.txt is missing" in err and len(err.strip().splitlines()) == 1


def test_dir_labels_from_folders_and_unseen_dev_classes_rejected(tmp_path):
    root = tmp_path / "clips"
    for cls, digit in (("cat", 0), ("dog", 1)):
        (root / cls).mkdir(parents=True)
        shutil.copy(FSDD / f"{digit}_george_0.wav", root / cls / "a.wav")
        shutil.copy(FSDD / f"{digit}_george_1.wav", root / cls / "b.wav")
    shutil.copy(FSDD / "2_george_0.wav", root / "loose.wav")  # no class folder
    s = prepare(CorpusSpec.build("dir", {"path": str(root), "labels": "folders"}), tmp_path / "o")
    corpus = Path(s.corpus_dir)
    assert sorted(map(tuple, _labels(corpus, "train").values())) == [("cat",), ("cat",), ("dog",), ("dog",)]
    assert [r["reason"] for r in _rejected(corpus, "train")] == ["not in a class folder (labels: folders)"]
    assert load_vocabulary(corpus).classes == ["cat", "dog"]

    # a dev folder prepared against train's classes: a class train never has is reported, not kept
    dev = tmp_path / "dev"
    for cls, digit in (("cat", 0), ("bird", 3)):
        (dev / cls).mkdir(parents=True)
        shutil.copy(FSDD / f"{digit}_theo_0.wav", dev / cls / "a.wav")
    from speechbudget.data.prepare import prepare_split
    from speechbudget.data.sources import FindContext, get_source

    items = get_source("dir").find_items(
        CorpusSpec.build("dir", {"path": str(dev), "labels": "folders", "split": "dev"}).options,
        FindContext(corpus),
    )
    split = prepare_split(items, "dev", corpus, True, 1, None, known_classes={"cat", "dog"})
    assert split.kept == 1 and split.reasons == {"class not in train": 1}


def test_dir_labels_csv_multi_label_and_missing_rows(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    for i in range(3):
        shutil.copy(FSDD / f"{i}_jackson_0.wav", root / f"c{i}.wav")
    (tmp_path / "tags.csv").write_text("path,labels\nc0.wav,Speech;Music\nc1.wav,Speech\nghost.wav,Music\n")
    s = prepare(
        CorpusSpec.build("dir", {"path": str(root), "labels": str(tmp_path / "tags.csv")}), tmp_path / "o"
    )
    corpus = Path(s.corpus_dir)
    assert _labels(corpus, "train") == {"dir-c0.wav": ["Speech", "Music"], "dir-c1.wav": ["Speech"]}
    vocab = load_vocabulary(corpus)
    assert vocab.multi_label and vocab.classes == ["Music", "Speech"]
    reasons = sorted(r["reason"] for r in _rejected(corpus, "train"))
    assert reasons == ["in the labels CSV but no such audio file", "no row in the labels CSV"]


def test_esc50_fold_is_test_and_unlisted_files_reported(tmp_path):
    root = tmp_path / "ESC-50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i in range(6):
        name = f"{i % 5 + 1}-{i}-A-{i % 2}.wav"
        shutil.copy(FSDD / f"{i % 2}_nicolas_{i}.wav", root / "audio" / name)
        rows.append(f"{name},{i % 5 + 1},{i % 2},{'dog' if i % 2 else 'rain'},False,{i},A")
    shutil.copy(FSDD / "5_theo_0.wav", root / "audio" / "stray.wav")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    s = prepare(CorpusSpec.build("esc50", {"path": str(root), "fold": 1}), tmp_path / "o")
    kept = {x.split: x.kept for x in s.splits}
    assert kept == {"train": 4, "test": 2}
    corpus = Path(s.corpus_dir)
    assert {x for labels in _labels(corpus, "test").values() for x in labels} == {
        "rain",
        "dog",
    }  # fold 1: i=0, 5
    assert [r["reason"] for r in _rejected(corpus, "train")] == ["not listed in meta/esc50.csv"]
    assert load_vocabulary(corpus).classes == ["dog", "rain"]
    with pytest.raises(SpeechBudgetError, match="fold must be one of 1-5"):
        prepare(CorpusSpec.build("esc50", {"path": str(root), "fold": 7}), tmp_path / "o2")


def test_the_speech_commands_recipe_trains_on_a_speech_commands_tree(tmp_path, capsys):
    """The shipped AuM recipe (learned positions for 128 frames, 1.28 s) stopped at its first step: its
    FLOPs were counted on 10 s of input, which its positions do not reach. Counted on the longest
    input it accepts now, on a Speech Commands layout of real recordings; aum-tiny for a CPU."""
    root = _speech_commands(tmp_path / "sc")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "speechcommands-aum-base.yaml"
    code, out, err = cli_result(
        capsys, "run", recipe, f"exp_dir={tmp_path / 'exp'}", f"prepare.path={root}", "prepare.num_jobs=1",
        "finetune.encoder.preset=aum-tiny", "finetune.budget.steps=2", "finetune.num_workers=0",
        "finetune.max_duration=8", "device=cpu", "--json",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(out)
    assert results["finetune"]["steps"] == 2
    assert {"finetune/dev", "finetune/test"} <= set(results["decode"])
    cost = json.loads((tmp_path / "exp" / "finetune" / "cost.json").read_text())
    assert cost["macs_per_input_second"] > 0
