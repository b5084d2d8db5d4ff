"""Paired speech-image corpora: synthetic scenes, Flickr8k Audio and SpokenCOCO layouts built from real FSDD wavs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FSDD
from PIL import Image

from speechbudget.data.corpus_spec import CorpusSpec
from speechbudget.data.images import cut_image, image_problem
from speechbudget.data.manifests import load_cuts
from speechbudget.data.prepare import prepare
from speechbudget.data.scenes import ATTRIBUTES, caption, plan_captions, plan_scenes, relation


def _differences(a, b):
    """(object index, attribute) pairs where two scenes differ."""
    out = []
    for k, (x, y) in enumerate(zip(a.objects, b.objects)):
        for attr in ATTRIBUTES:
            key = "cell" if attr == "position" else attr
            if getattr(x, key) != getattr(y, key):
                out.append((k, attr))
    return out


def test_scene_splits_are_disjoint_in_scenes_and_voices_and_twins_differ_in_one_attribute():
    scenes = plan_scenes(60, seed=5)
    captions = plan_captions(scenes, 3, 20, seed=5)
    assert len(scenes) == 60 and len({s.id for s in scenes}) == 60
    by_id = {s.id: s for s in scenes}
    assert {s.split for s in scenes} == {"train", "dev", "test"}
    splits = ("train", "dev", "test")
    voices = {
        split: {c.utterance.speaker for c in captions if c.utterance.split == split} for split in splits
    }
    assert all(voices.values())
    assert (
        not voices["train"] & voices["dev"]
        and not voices["train"] & voices["test"]
        and not voices["dev"] & voices["test"]
    )
    twins = [s for s in scenes if s.twin]
    assert len(twins) >= 20  # half the scenes come in pairs
    changed = set()
    for s in twins:
        other = by_id[s.twin]
        assert other.twin == s.id and other.split == s.split
        diffs = _differences(s, other)
        assert len(diffs) == 1 and diffs[0][0] == s.focus  # exactly one attribute of one object
        changed.add(diffs[0][1])
    assert changed == set(ATTRIBUTES)
    for c in captions:
        scene = by_id[c.scene_id]
        assert c.utterance.split == scene.split
        # the caption is true of its scene, and a twin's caption is false of the other twin
        pairs = {caption(a, b) for a in scene.objects for b in scene.objects if a != b}
        assert c.utterance.text in pairs
        if scene.twin:
            other = by_id[scene.twin]
            assert c.utterance.text not in {
                caption(a, b) for a in other.objects for b in other.objects if a != b
            }
    for s in scenes:
        assert len({o.kind() for o in s.objects}) == len(s.objects) and 2 <= len(s.objects) <= 4
        a, b = s.objects[:2]
        assert {relation(a, b), relation(b, a)} in (
            {"left of", "right of"},
            {"above", "below"},
        )


def test_prepare_synthetic_scenes_carries_images_into_cuts(tmp_path):
    spec = CorpusSpec.build(
        "synthetic-scenes", {"scenes": 9, "captions_per_scene": 2, "voices": 10, "seed": 1, "image_size": 48}
    )
    summary = prepare(spec, tmp_path)
    corpus = tmp_path / "synthetic-scenes"
    kept = {s.split: s.kept for s in summary.splits}
    assert sum(kept.values()) == 18 and set(kept) == {"train", "dev", "test"}
    images, speakers = {}, {}
    for split in kept:
        cuts = load_cuts(corpus / f"cuts_{split}.jsonl.gz")
        for c in cuts:
            path, image_id = cut_image(c)
            assert image_problem(path) is None and Image.open(path).size == (48, 48)
            assert c.has_features and c.supervisions[0].text.startswith("a ")
            images.setdefault(split, set()).add(image_id)
            speakers.setdefault(split, set()).add(c.supervisions[0].speaker)
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not images[a] & images[b] and not speakers[a] & speakers[b]


def _png(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path)


def _wavs(n: int):
    return sorted(FSDD.glob("*_george_*.wav"))[:n]


def _rejected(corpus: Path, split: str):
    return [json.loads(line) for line in (corpus / f"rejected_{split}.jsonl").read_text().splitlines()]


def test_flickr8k_layout_with_a_broken_image_is_reported_not_fatal(tmp_path, shared_data, monkeypatch):
    root = tmp_path / "flickr8k"
    (root / "flickr_audio" / "wavs").mkdir(parents=True)
    names = ["1000_a.jpg", "2000_b.jpg", "3000_c.jpg"]
    _png(root / "Flicker8k_Dataset" / names[0], (200, 0, 0))
    _png(root / "Flicker8k_Dataset" / names[1], (0, 200, 0))
    (root / "Flicker8k_Dataset" / names[2]).write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    lines, spk, tokens = [], [], []
    for n, wav in enumerate(_wavs(6)):
        image = names[n // 2]
        name = f"{Path(image).stem}_{n % 2}.wav"
        shutil.copy(wav, root / "flickr_audio" / "wavs" / name)
        lines.append(f"{name} {image} #{n % 2}")
        spk.append(f"{name} spk{n % 3}")
        tokens.append(f"{image}#{n % 2}\ta caption number {n}")
    (root / "flickr_audio" / "wav2capt.txt").write_text("\n".join(lines) + "\n")
    (root / "flickr_audio" / "wav2spk.txt").write_text("\n".join(spk) + "\n")
    (root / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    (root / "Flickr_8k.testImages.txt").write_text(names[1] + "\n")
    monkeypatch.chdir(tmp_path)  # a relative corpus path still gives absolute image paths
    spec = CorpusSpec.build("flickr8k-audio", {"path": "flickr8k", "features": False})
    summary = prepare(spec, tmp_path / "out")
    corpus = tmp_path / "out" / "flickr8k-audio"
    kept = {s.split: s.kept for s in summary.splits}
    assert kept == {"train": 2, "test": 2}
    rejected = _rejected(corpus, "train")
    assert len(rejected) == 2 and all("unreadable image" in r["reason"] for r in rejected)
    test = load_cuts(corpus / "cuts_test.jsonl.gz")
    assert {cut_image(c)[1] for c in test} == {"2000_b"}
    assert all(Path(cut_image(c)[0]).is_absolute() for c in test)
    assert {c.supervisions[0].text for c in test} == {"a caption number 2", "a caption number 3"}
    assert {c.supervisions[0].speaker for c in test} == {"spk2", "spk0"}


def test_spokencoco_layout_splits_val_by_image_and_reports_a_missing_image(tmp_path, shared_data):
    root = tmp_path / "SpokenCOCO"
    wavs = _wavs(8)

    def entries(part, images, start):
        out = []
        for k, image in enumerate(images):
            caps = []
            for j in range(2):
                wav = wavs[start + 2 * k + j]
                rel = f"wavs/{part}/{wav.name}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(wav, root / rel)
                caps.append(
                    {"wav": rel, "text": f"photo {k} caption {j}", "speaker": f"s{j}", "uttid": wav.stem}
                )
            out.append({"image": image, "captions": caps})
        return {"data": out}

    train_images = ["train2014/COCO_train2014_1.jpg", "train2014/COCO_train2014_2.jpg"]
    val_images = [f"val2014/COCO_val2014_{i}.jpg" for i in (1, 2)]
    for i, image in enumerate(train_images + val_images[:1]):
        _png(tmp_path / "coco" / image, (40 * i, 90, 90))
    (root / "SpokenCOCO_train.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "SpokenCOCO_train.json").write_text(json.dumps(entries("train", train_images, 0)))
    (root / "SpokenCOCO_val.json").write_text(json.dumps(entries("val", val_images, 4)))
    spec = CorpusSpec.build(
        "spokencoco", {"path": str(root), "image_dir": str(tmp_path / "coco"), "features": False}
    )
    summary = prepare(spec, tmp_path / "out")
    corpus = tmp_path / "out" / "spokencoco"
    kept = {s.split: s.kept for s in summary.splits}
    rejected = {s.split: s.rejected for s in summary.splits}
    assert kept["train"] == 4 and sum(kept.values()) == 6 and sum(rejected.values()) == 2
    val_splits = set(kept) - {"train"}
    assert val_splits <= {"dev", "test"}
    reasons = [r["reason"] for split in val_splits for r in _rejected(corpus, split)]
    assert reasons and all(r.startswith("image missing") for r in reasons)
    train = load_cuts(corpus / "cuts_train.jsonl.gz")
    assert {cut_image(c)[1] for c in train} == {"COCO_train2014_1", "COCO_train2014_2"}


@pytest.mark.parametrize("content", [b"", b"GIF89a truncated"])
def test_image_problem_names_the_file(tmp_path, content):
    bad = tmp_path / "bad.gif"
    bad.write_bytes(content)
    assert "bad.gif" in image_problem(str(bad))
    assert image_problem(str(tmp_path / "missing.png")).startswith("image missing")
