"""HuBERT k-means targets on real FSDD audio prepared through the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, copy_fsdd

from speechbudget.cli import main
from speechbudget.data import kmeans as km
from speechbudget.data.manifests import load_cuts
from speechbudget.errors import SpeechBudgetError
from speechbudget.models.presets import build_encoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """FSDD, 4 files of each of 4 speakers, theo held out as test: ``out/fsdd`` with cuts + fbank."""
    if not SHARED.is_dir():
        pytest.fail(f"real test audio is missing: expected {SHARED}")
    root = tmp_path_factory.mktemp("kmeans")
    src = copy_fsdd(root / "fsdd", per_speaker=4)
    try:
        main(["prepare", "fsdd", str(src), "--test-speakers", "theo", "--out", str(root / "out"), "--json"])
    except SystemExit as e:
        assert not e.code, f"prepare failed with exit code {e.code}"
    return root / "out" / "fsdd"


@pytest.fixture(scope="module")
def train_cuts(corpus):
    return list(load_cuts(corpus / "cuts_train.jsonl.gz"))


@pytest.fixture(scope="module")
def mfcc_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("km_mfcc")
    return out, km.run_kmeans(corpus, out, kind="mfcc", num_clusters=16, seed=0, progress=False)


def conv2d_rule(t: int) -> int:
    """Conv2dSubsampling frame-rate rule: conv k3 s1, then conv k3 s2 (100 Hz -> 50 Hz)."""
    return ((t - 2) - 3) // 2 + 1


def real_out_len(encoder, cut) -> int:
    x = km._encoder_input(cut, encoder)
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.from_numpy(x)[None], torch.tensor([len(x)]))
    return int(out.lengths[0])


# --- features ----------------------------------------------------------------------------------


def test_mfcc_is_39_dim_at_100_hz(train_cuts):
    for cut in train_cuts[:4]:
        f = km.frame_features(cut, "mfcc")
        assert f.shape[1] == 39 and f.dtype == np.float32 and np.isfinite(f).all()
        assert abs(f.shape[0] - cut.duration * 100) <= 2
        assert f.shape[0] == cut.num_frames  # same framing as the stored fbank
        # deltas are a linear regression over time: a constant column has zero deltas
        assert np.allclose(km.deltas(np.ones((7, 2))), 0.0)
    fb = km.frame_features(train_cuts[0], "fbank", cmn=True)
    assert fb.shape == (train_cuts[0].num_frames, 80)
    assert np.allclose(fb.mean(0), 0.0, atol=1e-4)
    with pytest.raises(SpeechBudgetError, match="mfcc"):
        km.frame_features(train_cuts[0], "plp")


def test_deltas_of_a_ramp_are_its_slope():
    ramp = np.arange(20, dtype=np.float32)[:, None] * 3.0
    d = km.deltas(ramp)
    assert np.allclose(d[2:-2], 3.0)  # interior: exact slope; edges are damped by replication


# --- sampling and fitting ----------------------------------------------------------------------


def test_reservoir_is_uniform_over_the_stream():
    res = km.Reservoir(1000, seed=3)
    for u in range(100):  # utterance u's frames all hold the value u
        res.add(np.full((100, 1), u, dtype=np.float32))
    sample = res.sample()[:, 0]
    assert len(sample) == 1000 and res.seen == 10_000
    per_decile = np.bincount((sample // 10).astype(int), minlength=10)
    assert per_decile.min() > 70 and per_decile.max() < 130  # ~100 each; a prefix bias fails this


def test_fit_and_predict_are_deterministic_per_seed(train_cuts):
    feats = [km.frame_features(c, "mfcc") for c in train_cuts]
    a = km.fit_kmeans(iter(feats), num_clusters=8, max_frames=400, seed=1)
    b = km.fit_kmeans(((str(i), f) for i, f in enumerate(feats)), num_clusters=8, max_frames=400, seed=1)
    c = km.fit_kmeans(iter(feats), num_clusters=8, max_frames=400, seed=2)
    assert a.meta["fit_frames"] == 400 < a.meta["seen_frames"]
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.predict(feats[0]), b.predict(feats[0]))
    assert not np.array_equal(a.centers, c.centers)
    labels = a.predict(feats[0])
    assert labels.dtype == np.int64 and labels.shape == (len(feats[0]),)
    assert labels.min() >= 0 and labels.max() < 8
    with pytest.raises(SpeechBudgetError, match="39"):
        a.predict(np.zeros((5, 80), np.float32))
    with pytest.raises(SpeechBudgetError, match="frames"):
        km.fit_kmeans(iter(feats[:1]), num_clusters=500, max_frames=1000, seed=0)


def test_kmeans_clusters_speech_better_than_chance(corpus, train_cuts):
    """Held-out speaker: fitted centers beat random frames as centers, and clusters explain energy."""
    feats = [km.frame_features(c, "mfcc") for c in train_cuts]
    model = km.fit_kmeans(iter(feats), num_clusters=16, max_frames=10_000, seed=0)
    test = np.concatenate([km.frame_features(c, "mfcc") for c in load_cuts(corpus / "cuts_test.jsonl.gz")])
    rng = np.random.default_rng(0)
    train = np.concatenate(feats)
    random_centers = (train[rng.choice(len(train), 16, replace=False)] - model.mean) / model.std
    baseline = km.KMeansModel(random_centers, model.mean, model.std)
    assert model.inertia(test) < 0.85 * baseline.inertia(test)
    # silence vs speech: c0 (log energy) is mostly explained by which cluster a frame falls in
    labels, c0 = model.predict(train), train[:, 0]
    means = np.array([c0[labels == k].mean() if (labels == k).any() else 0.0 for k in range(16)])
    r2 = 1.0 - ((c0 - means[labels]) ** 2).sum() / ((c0 - c0.mean()) ** 2).sum()
    shuffled = rng.permutation(labels)
    means_s = np.array([c0[shuffled == k].mean() if (shuffled == k).any() else 0.0 for k in range(16)])
    r2_chance = 1.0 - ((c0 - means_s[shuffled]) ** 2).sum() / ((c0 - c0.mean()) ** 2).sum()
    assert r2 > 0.5 and r2_chance < 0.1


def test_faiss_backend_works_or_says_what_to_install(train_cuts):
    frames = km.frame_features(train_cuts[0], "mfcc")
    if importlib.util.find_spec("faiss") is None:  # the default install: scikit-learn only
        with pytest.raises(SpeechBudgetError, match="faiss-cpu"):
            km.fit_kmeans(iter([frames]), 3, 100, 0, backend="faiss")
    else:
        assert km.fit_kmeans(iter([frames]), 3, 100, 0, backend="faiss").num_clusters == 3


def test_model_save_load_round_trip(tmp_path, train_cuts):
    f = km.frame_features(train_cuts[0], "mfcc")
    model = km.fit_kmeans(iter([f, km.frame_features(train_cuts[1], "mfcc")]), 4, 1000, 0, cmn=False)
    path = model.save(tmp_path / "sub" / "kmeans_mfcc_4")
    assert path.suffix == ".npz" and path.with_suffix(".json").is_file()
    assert not list(path.parent.glob(".tmp*"))
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["num_clusters"] == 4 and side["kind"] == "mfcc" and side["dim"] == 39
    loaded = km.KMeansModel.load(path.with_suffix(".json"))
    np.testing.assert_array_equal(loaded.predict(f), model.predict(f))
    assert loaded.kind == "mfcc" and loaded.meta["seed"] == 0
    with pytest.raises(SpeechBudgetError, match="does not exist"):
        km.KMeansModel.load(tmp_path / "nope.npz")


# --- labels at the model rate ------------------------------------------------------------------


def test_labels_for_cut_alignment_and_length():
    frames = np.arange(21)
    np.testing.assert_array_equal(km.labels_for_cut(frames, 50.0), np.arange(0, 21, 2))
    np.testing.assert_array_equal(km.labels_for_cut(frames, 25.0), [0, 4, 8, 12, 16, 20])
    np.testing.assert_array_equal(km.labels_for_cut(frames, 50.0, 8), np.arange(0, 16, 2))
    np.testing.assert_array_equal(km.labels_for_cut(frames, 50.0, 13)[-3:], [20, 20, 20])
    np.testing.assert_array_equal(
        km.labels_for_cut(np.arange(12), 50.0, 11, source_rate_hz=50.0), np.arange(11)
    )
    with pytest.raises(SpeechBudgetError, match="whole number"):
        km.labels_for_cut(frames, 30.0)
    with pytest.raises(SpeechBudgetError, match="label_rate_hz"):
        km.labels_for_cut(np.arange(200), 50.0, 50)  # 100 labels for a 25 Hz model: wrong rate


def test_run_kmeans_writes_model_and_labeled_manifests(corpus, mfcc_run):
    out, summary = mfcc_run
    assert Path(summary["model"]) == out / "kmeans_mfcc_16.npz" and Path(summary["model"]).is_file()
    assert (out / "kmeans_mfcc_16.json").is_file()
    assert set(summary["splits"]) == {"train", "test"} and summary["fit_split"] == "train"
    assert summary["dim"] == 39 and summary["label_rate_hz"] == 50.0
    for split in ("train", "test"):
        labeled = list(load_cuts(out / f"cuts_{split}.jsonl.gz"))
        original = list(load_cuts(corpus / f"cuts_{split}.jsonl.gz"))
        assert [c.id for c in labeled] == [c.id for c in original]
        for cut in labeled:
            text = cut.custom["kmeans"]
            assert all(tok.isdigit() for tok in text.split(" "))
            labels = km.read_labels(cut)
            assert len(labels) == -(-cut.num_frames // 2)  # no out_len: every 2nd 100 Hz frame
            assert labels.max() < 16
            assert (
                cut.supervisions[0].text == next(c for c in original if c.id == cut.id).supervisions[0].text
            )
    # the written labels are the model's predictions on every 2nd MFCC frame
    model = km.KMeansModel.load(summary["model"])
    cut = list(load_cuts(out / "cuts_test.jsonl.gz"))[0]
    np.testing.assert_array_equal(km.read_labels(cut), model.predict(km.frame_features(cut, "mfcc"))[::2])


def test_usage_entropy_is_in_range(mfcc_run):
    _, summary = mfcc_run
    for split in summary["splits"].values():
        u = split["usage"]
        assert 0 < u["entropy_bits"] <= u["max_entropy_bits"] == pytest.approx(np.log2(16), abs=1e-3)
        assert sum(u["counts"]) == u["frames"] and u["perplexity"] > 1
    exact = km.cluster_usage([np.array([0, 1]), np.array([2, 3])], 8)
    assert exact["entropy_bits"] == 2.0 and exact["perplexity"] == 4.0 and exact["empty_clusters"] == 4
    with pytest.raises(SpeechBudgetError, match="0..7"):
        km.cluster_usage([np.array([8])], 8)


def test_labels_survive_manifest_round_trip_and_missing_labels_fail(tmp_path, train_cuts):
    labels = {c.id: np.arange(c.num_frames // 2) % 7 for c in train_cuts}
    path = km.write_labels(train_cuts, labels, tmp_path / "cuts_train.jsonl.gz")
    back = {c.id: c for c in load_cuts(path)}
    for cut_id, lab in labels.items():
        np.testing.assert_array_equal(km.read_labels(back[cut_id]), lab)
        assert back[cut_id].custom["kmeans"] == " ".join(map(str, lab))
    assert back[train_cuts[0].id].load_features().shape[1] == 80  # features still reachable
    del labels[train_cuts[2].id]
    with pytest.raises(SpeechBudgetError, match=train_cuts[2].id):
        km.write_labels(train_cuts, labels, tmp_path / "other.jsonl.gz")
    assert not (tmp_path / "other.jsonl.gz").exists()


def test_label_count_matches_encoder_output_length(corpus, tmp_path):
    """MFCC labels for a 50 Hz fbank Zipformer (explicit conv rule) and a 25 Hz one (derived)."""
    test_only = corpus / "cuts_test.jsonl.gz"
    s50 = km.run_kmeans(
        test_only, tmp_path / "a", num_clusters=8, label_rate_hz=50.0, out_len=conv2d_rule, progress=False
    )
    enc50 = build_encoder("zipformer-tiny")
    enc25 = build_encoder({"preset": "zipformer-tiny", "output_downsampling": 2})
    assert s50["fit_split"] == "test"
    s25 = km.run_kmeans(test_only, tmp_path / "b", num_clusters=8, encoder=enc25, progress=False)
    assert s25["label_rate_hz"] == 25.0
    for cut in load_cuts(tmp_path / "a" / "cuts_test.jsonl.gz"):
        assert len(km.read_labels(cut)) == conv2d_rule(cut.num_frames) == real_out_len(enc50, cut)
    for cut in load_cuts(tmp_path / "b" / "cuts_test.jsonl.gz"):
        assert len(km.read_labels(cut)) == real_out_len(enc25, cut)


def test_encoder_out_len_for_a_waveform_frontend(train_cuts):
    enc = build_encoder({"preset": "transformer-tiny", "frontend": "waveform"})
    rule = km.encoder_out_len(enc)
    for cut in train_cuts[:2]:
        n_out = real_out_len(enc, cut)
        assert rule(km.num_inputs(cut, enc.input_rate_hz)) == n_out
        labels = km.labels_for_cut(np.arange(cut.num_frames), 50.0, n_out)
        assert len(labels) == n_out and labels[1] == 2


# --- iteration 2 -------------------------------------------------------------------------------


def test_layer_features_and_iteration_two(corpus, train_cuts, tmp_path):
    enc = build_encoder("zipformer-tiny")  # 12 blocks, 50 Hz
    enc.train()
    feats = list(km.layer_features(enc, train_cuts[:3], layer=6, batch_size=2))
    assert enc.training  # mode restored
    assert [cid for cid, _ in feats] == [c.id for c in train_cuts[:3]]
    for (_, f), cut in zip(feats, train_cuts):
        assert f.shape == (real_out_len(enc, cut), enc.layer_dims[5])
        assert np.isfinite(f).all()
    # batching and padding must not change a cut's features
    alone = next(km.layer_features(enc, train_cuts[1:2], layer=6, batch_size=1))[1]
    np.testing.assert_allclose(alone, feats[1][1], atol=1e-4)
    for bad in (0, 13):
        with pytest.raises(SpeechBudgetError, match="12 layers"):
            next(km.layer_features(enc, train_cuts[:1], layer=bad))

    summary = km.run_kmeans(
        corpus, tmp_path, kind="layer", encoder=enc, layer=6, num_clusters=8, progress=False
    )
    assert Path(summary["model"]).name == "kmeans_layer_8.npz" and summary["layer"] == 6
    assert summary["dim"] == enc.layer_dims[5]
    for cut in load_cuts(tmp_path / "cuts_test.jsonl.gz"):
        assert len(km.read_labels(cut)) == real_out_len(enc, cut)
    assert 0 < summary["usage"]["entropy_bits"] <= 3.0
    with pytest.raises(SpeechBudgetError, match="encoder and a layer"):
        km.run_kmeans(corpus, tmp_path, kind="layer", num_clusters=8, progress=False)


def test_kmeans_cmn_from_the_cli_labels_mean_removed_features(corpus, tmp_path, capsys):
    # recipe kmeans.cmn / `kmeans --cmn`: the model records it and labelling repeats it
    out = tmp_path / "km_cmn"
    args = ["kmeans", str(corpus / "cuts_train.jsonl.gz"), "--out", str(out), "--num-clusters", "8"]
    try:
        main([*args, "--cmn", "--json"])
    except SystemExit as e:
        assert not e.code, e.code
    summary = json.loads(capsys.readouterr().out)
    assert summary["cmn"] is True
    model = km.KMeansModel.load(summary["model"])
    cut = list(load_cuts(out / "cuts_train.jsonl.gz"))[0]
    labels = km.read_labels(cut)  # trimmed to the encoder's output length
    with_cmn = model.predict(km.frame_features(cut, "mfcc", cmn=True))[::2][: len(labels)]
    np.testing.assert_array_equal(labels, with_cmn)
    assert not np.array_equal(with_cmn, model.predict(km.frame_features(cut, "mfcc"))[::2][: len(labels)])
