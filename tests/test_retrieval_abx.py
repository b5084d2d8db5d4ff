"""Retrieval recall@K against brute force; ABX on constructed features and on real FSDD digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FSDD
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from speechbudget.data.features import compute_fbank, fbank_extractor
from speechbudget.evaluation.abx import abx_error, abx_per_layer, cut_items, dtw_distance
from speechbudget.evaluation.retrieval import index_images, retrieval_from_similarity, retrieval_report
from speechbudget.models.presets import build_encoder


def _brute_force(sim: np.ndarray, caption_image: np.ndarray, k: int):
    s2i = np.mean([caption_image[i] in np.argsort(-sim[i])[:k] for i in range(len(sim))])
    images = range(sim.shape[1])
    i2s = np.mean([any(caption_image[j] == m for j in np.argsort(-sim[:, m])[:k]) for m in images])
    return s2i, i2s


def test_recall_at_k_equals_a_brute_force_count():
    rng = np.random.default_rng(0)
    caption_image = np.concatenate([np.arange(12), rng.integers(0, 12, 30)])  # 1 to several captions each
    speech, images = rng.normal(size=(42, 6)), rng.normal(size=(12, 6))
    report = retrieval_report(speech, images, caption_image, bootstrap=200)
    sim = speech @ images.T
    assert report["captions"] == 42 and report["images"] == 12
    for k in (1, 5, 10):
        s2i, i2s = _brute_force(sim, caption_image, k)
        assert report["speech_to_image"][f"r@{k}"] == pytest.approx(s2i)
        assert report["image_to_speech"][f"r@{k}"] == pytest.approx(i2s)
        lo, hi = report["speech_to_image"][f"r@{k}_ci"]
        assert lo <= s2i <= hi
    assert report["image_to_speech"]["r@10"] > report["image_to_speech"]["r@1"]


def test_perfect_and_one_word_embeddings():
    ids = ["a", "a", "b", "c", "c", "c"]
    order, caption_image = index_images(ids)
    assert order == ["a", "b", "c"] and caption_image.tolist() == [0, 0, 1, 2, 2, 2]
    eye = np.eye(3)
    perfect = retrieval_report(eye[caption_image], eye, caption_image, bootstrap=0)
    assert perfect["speech_to_image"]["r@1"] == 1.0 and perfect["image_to_speech"]["r@1"] == 1.0
    # every caption scores image 0 highest: only image 0's captions hit at 1
    sim = np.tile([[1.0, 0.5, 0.2]], (6, 1))
    report = retrieval_from_similarity(sim, caption_image, ks=(1, 2), bootstrap=0)
    assert report["speech_to_image"]["r@1"] == pytest.approx(2 / 6)
    assert report["speech_to_image"]["r@2"] == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        retrieval_from_similarity(sim, [0, 0, 1, 2, 2, 3], bootstrap=0)


def _dtw_loops(a: np.ndarray, b: np.ndarray) -> float:
    cos = lambda x, y: 1 - x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
    n, m = len(a), len(b)
    acc = [[np.inf] * (m + 1) for _ in range(n + 1)]
    acc[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i][j] = cos(a[i - 1], b[j - 1]) + min(acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1])
    return acc[n][m] / (n + m)


def test_dtw_matches_the_textbook_recursion_and_ignores_repeated_frames():
    rng = np.random.default_rng(1)
    for n, m in ((1, 1), (3, 7), (9, 4), (12, 12)):
        a, b = rng.normal(size=(n, 5)), rng.normal(size=(m, 5))
        assert dtw_distance(a, b) == pytest.approx(_dtw_loops(a, b))
    x = rng.normal(size=(6, 4))
    assert dtw_distance(x, np.repeat(x, 2, axis=0)) == pytest.approx(0.0, abs=1e-12)


def test_abx_on_constructed_cases_with_known_answers():
    rng = np.random.default_rng(2)
    labels = ["one", "two", "one", "two", "one", "two"]
    speakers = ["s1", "s1", "s2", "s2", "s3", "s3"]
    base = {"one": np.eye(4)[0], "two": np.eye(4)[1]}
    separable = [base[w] + 0.05 * rng.normal(size=(5, 4)) for w in labels]
    result = abx_error(separable, labels, speakers)
    assert result["error"] == 0.0 and result["triplets"] == 3 * 2 * 2  # speakers x (A, B) orders x X
    same = [np.ones((5, 4)) for _ in labels]  # nothing tells the words apart: every triplet a tie
    assert abx_error(same, labels, speakers)["error"] == 0.5
    # features that encode only the speaker: A and B look alike, another speaker's X cannot choose
    by_speaker = [np.tile(np.eye(4)[int(s[1])], (5, 1)) for s in speakers]
    assert abx_error(by_speaker, labels, speakers, mode="across")["error"] == 0.5
    swapped = [np.tile(base["two" if w == "one" else "one"], (5, 1)) for w in labels]
    flipped = [swapped[i] if speakers[i] == "s1" else separable[i] for i in range(6)]
    # speaker s1 says each word like the other: per label pair, cells (A/B speaker, X speaker) with s1
    # in them fail (4 of the 6), the two without s1 succeed
    assert abx_error(flipped, labels, speakers)["error"] == pytest.approx(4 / 6)
    assert np.isnan(abx_error(separable[:2], labels[:2], speakers[:2])["error"])


def _fsdd_fbank(digits, speakers, per):
    extractor = fbank_extractor(80)
    feats, labels, spk = [], [], []
    for d in digits:
        for s in speakers:
            for i in range(per):
                rec = Recording.from_file(FSDD / f"{d}_{s}_{i}.wav").resample(16000)
                feats.append(extractor.extract(rec.load_audio(), 16000))
                labels.append(str(d))
                spk.append(s)
    return feats, labels, spk


def test_abx_reads_prepared_cuts(tmp_path, shared_data):
    cuts = []
    for d, s in ((0, "george"), (1, "george"), (0, "jackson"), (1, "jackson")):
        rec = Recording.from_file(FSDD / f"{d}_{s}_0.wav").resample(16000)
        sup = SupervisionSegment(rec.id, rec.id, 0.0, rec.duration, text=["zero", "one"][d], speaker=s)
        cuts.append(MonoCut(rec.id, 0.0, rec.duration, 0, recording=rec, supervisions=[sup]))
    cuts = compute_fbank(CutSet.from_cuts(cuts), tmp_path / "feats")
    feats, labels, speakers = cut_items(cuts)
    assert labels == ["zero", "one", "zero", "one"] and speakers == ["george", "george", "jackson", "jackson"]
    assert feats[0].shape[1] == 80
    assert cut_items(cuts, label_of=lambda c: c.supervisions[0].speaker)[1][0] == "george"
    assert abx_error([f.numpy() for f in feats], labels, speakers)["triplets"] == 4


def test_abx_on_real_fsdd_digits_across_speakers(shared_data):
    feats, labels, speakers = _fsdd_fbank(range(5), ("george", "jackson", "nicolas"), 2)
    result = abx_error(feats, labels, speakers, mode="across")
    assert result["triplets"] > 500
    assert result["error"] < 0.3, result
    subset = abx_error(feats, labels, speakers, mode="across", max_per_group=1)
    assert subset["triplets"] == (5 * 4) * 3 * 2  # ordered label pairs x A/B speaker x X speaker
    assert subset["error"] < 0.4
    within = abx_error(feats, labels, speakers, mode="within")
    assert within["error"] <= result["error"]
    encoder = build_encoder(
        {
            "family": "transformer",
            "dim": 32,
            "layers": 2,
            "heads": 2,
            "ffn_dim": 64,
            "pos_conv_groups": 4,
            "pos_conv_kernel": 16,
        }
    )
    torch.manual_seed(0)
    per_layer = abx_per_layer(encoder, [torch.from_numpy(f) for f in feats[:12]], labels[:12], speakers[:12])
    assert set(per_layer["layers"]) == {"input", "layer1", "layer2"}
    assert all(0.0 <= v["error"] <= 1.0 for v in per_layer["layers"].values())
    assert per_layer["best_layer"] in per_layer["layers"]
