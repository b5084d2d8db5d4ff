"""Fine-tuning augmentation from lhotse on real FSDD speech: speed perturbation (and what the budget
counts of it), SpecAugment only in training, reverberation that keeps the length."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import cli_result, copy_fsdd
from lhotse.utils import compute_num_frames

from speechbudget.data.augment import Reverb, simulated_rirs, speed_perturbed
from speechbudget.data.dataset import SpeechDataset
from speechbudget.data.edges import SILENCE_DB, EdgeJitter, frame_db, move_edges, silence_frames
from speechbudget.data.manifests import load_cuts
from speechbudget.data.mixup import MixUp, mix_pairs
from speechbudget.data.tempo import TempoPerturb, stretch
from speechbudget.data.views import VIEWS, TwoViews
from speechbudget.models.presets import build_encoder
from speechbudget.objectives.ctc import CtcModel, mean_frame_entropy


@pytest.fixture(scope="module")
def fsdd_corpus(tmp_path_factory) -> Path:
    """Real FSDD clips of two speakers, prepared with stored fbank (george: train, jackson: test)."""
    root = tmp_path_factory.mktemp("aug")
    src = copy_fsdd(root / "fsdd", per_speaker=6, speakers=("george", "jackson"))
    from speechbudget.cli import main

    try:
        main(
            ["prepare", "fsdd", str(src), "--test-speakers", "jackson", "--out", str(root / "data"), "--json"]
        )
    except SystemExit as e:
        assert not e.code
    return root / "data" / "fsdd"


def test_speed_perturbation_changes_durations_and_the_budget_counts_them(fsdd_corpus, tmp_path, capsys):
    cuts = load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager()
    perturbed = speed_perturbed(cuts, [0.9, 1.0, 1.1])
    assert len(perturbed) == 3 * len(cuts)
    by_id = {c.id: c.duration for c in perturbed}
    for c in cuts:
        assert by_id[c.id] == c.duration
        assert abs(by_id[f"{c.id}_sp0.9"] - c.duration / 0.9) < 1e-3
        assert abs(by_id[f"{c.id}_sp1.1"] - c.duration / 1.1) < 1e-3
    # what the trainer counts: padded feature frames (FLOPs) and the batch's seconds (audio hours)
    fast = perturbed.filter(lambda c: c.id.endswith("_sp1.1")).to_eager()
    batch = SpeechDataset("fbank", on_the_fly=True)[fast]
    frames = sorted((compute_num_frames(c.duration, 0.01, 16000) for c in fast), reverse=True)
    assert batch["lengths"].tolist() == frames  # 10 ms fbank frames of the perturbed audio
    assert abs(batch["seconds"] - sum(c.duration for c in cuts) / 1.1) < 1e-2
    original = SpeechDataset("fbank")[cuts]
    assert int(batch["lengths"].sum()) < 0.95 * int(original["lengths"].sum())
    # a fine-tuning run sees all three copies: its labeled hours (and epoch) are theirs
    recipe = tmp_path / "r.yaml"
    section = {
        "encoder": "zipformer-nano",
        "train_cuts": str(fsdd_corpus / "cuts_train.jsonl.gz"),
        "max_duration": 4.0,
        "num_buckets": 2,
        "budget": {"steps": 2},
        "ctc": {"tokenizer": "char", "vocab_size": 30, "speed_perturb": [0.9, 1.0, 1.1]},
    }
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "ft"), "device": "cpu", "finetune": section}))
    code, out, err = cli_result(capsys, "finetune", recipe, "--json")
    assert code == 0, err[-2000:]
    card = json.loads((tmp_path / "ft" / "run_card.json").read_text())
    assert abs(card["labeled_hours"] * 3600 - sum(c.duration for c in perturbed)) < 1e-6
    assert abs(card["recorded_labeled_hours"] * 3600 - sum(c.duration for c in cuts)) < 1e-6
    code, _, err = cli_result(capsys, "finetune", recipe, "ctc.speed_perturb=[1.0,3.0]")
    assert code == 2 and "ctc.speed_perturb" in err


def test_spec_augment_is_on_in_training_and_off_at_evaluation(fsdd_corpus):
    batch = SpeechDataset("fbank")[load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager()]
    x, lengths = batch["features"], batch["lengths"]
    model = CtcModel(build_encoder("zipformer-nano"), vocab_size=12, time_warp=5, gain_db=6)
    model.eval()
    assert torch.equal(model.augment_features(x, lengths), x)
    model.train()
    torch.manual_seed(0)
    y = model.augment_features(x, lengths)
    assert y.shape == x.shape and not torch.equal(y, x)
    pad = ~(torch.arange(x.size(1))[None, :] < lengths[:, None])
    assert torch.equal(y[pad], x[pad])  # padding is never warped or masked
    torch.manual_seed(0)
    assert torch.equal(model.augment_features(x, lengths), y)  # torch's seed decides (resumable)
    off = CtcModel(build_encoder("zipformer-nano"), vocab_size=12, spec_augment=False).train()
    assert torch.equal(off.augment_features(x, lengths), x)


def test_reverb_changes_the_audio_and_keeps_its_length(fsdd_corpus, tmp_path):
    cuts = load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager().subset(first=3)
    torch.manual_seed(0)
    wet = Reverb(prob=1.0)(cuts)
    for dry, rev in zip(cuts, wet):
        a, b = dry.load_audio()[0], rev.load_audio()[0]
        assert rev.id == dry.id and a.shape == b.shape and rev.duration == dry.duration
        assert np.abs(a - b).max() > 0.01
        assert abs(np.sum(b**2) / np.sum(a**2) - 1) < 0.05  # lhotse keeps the energy
    assert all(c.load_audio().shape == d.load_audio().shape for c, d in zip(Reverb(prob=1e-9)(cuts), cuts))
    # measured RIRs from a folder work the same way
    rir_dir = tmp_path / "rirs"
    rir_dir.mkdir()
    for i, r in enumerate(simulated_rirs(count=2, seed=5)):
        sf.write(rir_dir / f"rir{i}.wav", r.load_audio()[0], 16000)
    wet = Reverb(prob=1.0, rir_dir=rir_dir)(cuts)
    assert wet[0].load_audio().shape == cuts[0].load_audio().shape


def test_a_time_warp_wider_than_the_clips_is_reported_not_silently_skipped(fsdd_corpus, caplog):
    """lhotse leaves utterances of <= 2 x factor + 1 frames unwarped: FSDD digits (~0.4 s, ~40 frames)
    with the usual factor 80 are all of them; factor 10 reaches them."""
    from speechbudget.train.finetune import warn_unwarped

    cuts = load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager()
    with caplog.at_level("WARNING"):
        assert warn_unwarped(80, cuts, 100.0) == len(cuts)
    assert f"leaves {len(cuts)} of {len(cuts)} training utterances unwarped" in caplog.text
    longest = max(c.duration for c in cuts)
    assert warn_unwarped(int(longest * 100) // 4, cuts, 100.0) < len(cuts)
    assert warn_unwarped(0, cuts, 100.0) == 0


def test_tempo_stretches_training_batches_the_budget_counts_them_and_dev_is_untouched(
    fsdd_corpus, tmp_path, capsys
):
    cuts = load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager()
    batch = SpeechDataset("fbank")[cuts]
    x, lengths, seconds = batch["features"].clone(), batch["lengths"].clone(), batch["seconds"]
    slow, n = stretch(x, lengths, torch.full((len(lengths),), 1.25))
    assert n.tolist() == [round(1.25 * k) for k in lengths.tolist()]
    assert torch.equal(slow[0, 0], x[0, 0]) and torch.allclose(slow[0, n[0] - 1], x[0, lengths[0] - 1])
    assert slow.size(-1) == x.size(-1)  # the frequency axis is left alone (rate, not pitch)
    torch.manual_seed(0)
    out = TempoPerturb(0.3)(batch)
    ratio = out["lengths"].double() / lengths.double()
    assert ((ratio > 1 / 1.3 - 0.05) & (ratio < 1.3 + 0.05)).all() and ratio.std() > 0.01
    assert out["seconds"] / seconds == pytest.approx(int(out["lengths"].sum()) / int(lengths.sum()), rel=1e-9)
    # two 2-step runs alike but for ctc.tempo (lr ~0: the same weights): the budget counts the stretched
    # frames, and the dev set scores the same because it is never stretched
    recipe = _budget_sees_training_frames_only(fsdd_corpus, tmp_path, capsys, "tempo", 0.5)
    code, _, err = cli_result(capsys, "finetune", recipe, "ctc.tempo=1.5")
    assert code == 2 and "ctc.tempo" in err


def _budget_sees_training_frames_only(
    fsdd_corpus: Path,
    tmp_path: Path,
    capsys,
    key: str,
    value: float,
    same_padding: bool = False,
    flops_ratio: Optional[float] = None,
) -> Path:
    """Two 2-step fine-tunings alike but for ``ctc.<key>`` (lr ~0: the same weights): the budget counts
    the training batches' changed frames (``same_padding``: a change inside the padded batch, which the
    FLOPs already paid for, shows in the audio hours only; ``flops_ratio``: the changed run's FLOPs are
    this multiple of the plain run's, its audio hours the same), and the dev set (never transformed) scores the same. Returns the
    recipe, for the caller's bad-value check."""
    cards = {}
    for v in (0.0, value):
        recipe = tmp_path / f"{key}{v}.yaml"
        section = {
            "encoder": "zipformer-nano",
            "train_cuts": str(fsdd_corpus / "cuts_train.jsonl.gz"),
            "dev_cuts": str(fsdd_corpus / "cuts_train.jsonl.gz"),
            "max_duration": 4.0,
            "num_buckets": 2,
            "budget": {"steps": 2},
            "optim": {"lr": 1e-12},
            "ctc": {"tokenizer": "char", "vocab_size": 30, key: v},
        }
        exp = tmp_path / f"ft-{key}{v}"
        recipe.write_text(yaml.safe_dump({"exp_dir": str(exp), "device": "cpu", "finetune": section}))
        code, out, err = cli_result(capsys, "finetune", recipe, "--json")
        assert code == 0, err[-2000:]
        cards[v] = json.loads(out)
    plain, changed = cards[0.0], cards[value]
    if flops_ratio is None:
        assert (changed["flops"] == plain["flops"]) == same_padding
    else:
        assert changed["flops"] == pytest.approx(flops_ratio * plain["flops"], rel=1e-9)
    # a second view of the same audio (``flops_ratio``) reads no more of it
    assert (changed["audio_hours"] != plain["audio_hours"]) == (flops_ratio is None)
    assert changed["valid"]["valid_loss"] == pytest.approx(plain["valid"]["valid_loss"], rel=1e-5)
    return recipe


def test_edge_jitter_pads_with_recorded_silence_crops_at_most_half_and_the_budget_counts_it(
    fsdd_corpus, tmp_path, capsys
):
    cuts = load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager()
    batch = SpeechDataset("fbank")[cuts]
    x, lengths, seconds = batch["features"].clone(), batch["lengths"].clone(), batch["seconds"]
    silence = silence_frames(x, lengths)
    db = torch.cat([frame_db(x[i, :n]) for i, n in enumerate(lengths.tolist())])
    assert 0 < silence.size(0) < int(lengths.sum()) / 2  # george's margins, not his words
    assert frame_db(silence).max() < db.max() - SILENCE_DB
    u = x[0, : lengths[0]]
    torch.manual_seed(0)
    grown = move_edges(u, 4, 7, silence)
    assert grown.size(0) == u.size(0) + 11 and torch.equal(grown[4 : 4 + u.size(0)], u)
    for edge in (grown[:4], grown[-7:]):  # every added frame is one of the batch's silent frames
        assert all(any(torch.equal(f, g) for g in silence) for f in edge)
    assert torch.equal(move_edges(u, -3, -2, silence), u[3 : u.size(0) - 2])
    assert move_edges(u, -1000, -1000, silence).size(0) == max(1, u.size(0) // 2)  # never below half
    assert torch.equal(move_edges(u, 0, 0, silence), u)
    assert torch.equal(move_edges(u, 5, -2, silence[:0]), u[: u.size(0) - 2])  # nothing silent: crop only
    out = EdgeJitter(0.05)(batch)
    change = out["lengths"] - lengths
    assert (change.abs() <= 10).all() and change.unique().numel() > 1
    assert out["seconds"] / seconds == pytest.approx(int(out["lengths"].sum()) / int(lengths.sum()), rel=1e-9)
    recipe = _budget_sees_training_frames_only(fsdd_corpus, tmp_path, capsys, "edge_jitter", 0.1)
    code, _, err = cli_result(capsys, "finetune", recipe, "ctc.edge_jitter=-0.1")
    assert code == 2 and "ctc.edge_jitter" in err


def test_mixup_blends_pairs_weights_both_transcripts_and_leaves_dev_alone(fsdd_corpus, tmp_path, capsys):
    cuts = load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager()
    batch = SpeechDataset("fbank")[cuts]
    x, lengths, seconds = batch["features"].clone(), batch["lengths"].clone(), batch["seconds"]
    i, j = int(lengths.argmin()), int(lengths.argmax())  # the shortest clip mixed with the longest
    partner, weight = torch.arange(x.size(0)), torch.ones(x.size(0))
    partner[i], weight[i] = j, 0.3
    mixed, new_lengths = mix_pairs(x, lengths, partner, weight)
    n, m = int(lengths[i]), int(lengths[j])
    assert n < m and int(new_lengths[i]) == m
    assert torch.allclose(mixed[i, :n], 0.3 * x[i, :n] + 0.7 * x[j, :n])
    assert torch.equal(mixed[i, n:m], x[j, n:m])  # the longer one's own frames, not pulled to the padding
    assert torch.equal(mixed[i, m:], x[i, m:])  # the padding as it was
    others = [k for k in range(x.size(0)) if k != i]
    assert torch.equal(mixed[others], x[others]) and torch.equal(new_lengths[others], lengths[others])
    torch.manual_seed(0)
    out = MixUp(1.0)(dict(batch))
    assert (out["mix_partner"] != torch.arange(x.size(0))).all()  # never mixed with itself
    assert ((out["mix_weight"] > 0) & (out["mix_weight"] < 1)).all()
    assert out["seconds"] / seconds == pytest.approx(int(out["lengths"].sum()) / int(lengths.sum()), rel=1e-9)
    # the loss: weighted over both transcripts; all weight on the partner = the partner's transcript alone
    model = CtcModel(build_encoder("zipformer-nano"), vocab_size=30, spec_augment=False)
    model.train()
    # stand-in transcripts of 1-3 tokens, each utterance its own
    ids = [torch.tensor([1 + (k + r) % 28 for r in range(1 + k % 3)]) for k in range(x.size(0))]
    tok = {
        "tokens": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True),
        "token_lengths": torch.tensor([len(t) for t in ids]),
    }
    shift = (torch.arange(x.size(0)) + 1) % x.size(0)
    feats = {"features": x, "lengths": lengths}
    torch.manual_seed(1)
    to_partner = model({**feats, **tok, "mix_partner": shift, "mix_weight": torch.zeros(x.size(0))})[1][
        "loss"
    ]
    swapped = {"tokens": tok["tokens"][shift], "token_lengths": tok["token_lengths"][shift]}
    torch.manual_seed(1)
    plain = model({**feats, **swapped})[1]["loss"]
    assert to_partner == pytest.approx(plain, rel=1e-5)
    torch.manual_seed(1)
    half = model({**feats, **tok, "mix_partner": shift, "mix_weight": torch.full((x.size(0),), 0.5)})[1][
        "loss"
    ]
    torch.manual_seed(1)
    own = model({**feats, **tok})[1]["loss"]
    n_own, n_theirs = int(tok["token_lengths"].sum()), int(swapped["token_lengths"].sum())
    assert half == pytest.approx((own * n_own + plain * n_theirs) / (n_own + n_theirs), rel=1e-5)
    recipe = _budget_sees_training_frames_only(fsdd_corpus, tmp_path, capsys, "mixup", 1.0, same_padding=True)
    code, _, err = cli_result(capsys, "finetune", recipe, "ctc.mixup=1.5")
    assert code == 2 and "ctc.mixup" in err


def test_consistency_sees_each_utterance_twice_and_the_views_disagree_only_by_augmentation(
    fsdd_corpus, tmp_path, capsys
):
    cuts = load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager()
    batch = SpeechDataset("fbank", with_text=True)[cuts]
    b = batch["features"].size(0)
    torch.manual_seed(0)
    mixed = MixUp(1.0)(dict(batch))
    two = TwoViews()(dict(mixed))
    assert two[VIEWS] == 2 and two["seconds"] == mixed["seconds"]  # the audio read: epochs stay passes
    for key in ("features", "lengths", "mix_weight"):
        assert torch.equal(two[key][:b], mixed[key]) and torch.equal(two[key][b:], mixed[key])
    assert two["texts"] == mixed["texts"] * 2 and two["ids"] == mixed["ids"] * 2
    assert torch.equal(two["mix_partner"][b:], mixed["mix_partner"] + b)  # a copy's partner is a copy
    # the loss: CTC over both views plus the weight x their disagreement, which only augmentation makes
    ids = [torch.tensor([1 + (k + r) % 28 for r in range(1 + k % 3)]) for k in range(b)]
    tok = {
        "tokens": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True),
        "token_lengths": torch.tensor([len(t) for t in ids]),
    }
    single = {"features": batch["features"], "lengths": batch["lengths"], **tok}
    doubled = TwoViews()(dict(single))
    losses = {}
    for augment in (False, True):
        torch.manual_seed(5)  # the same weights each time
        model = CtcModel(
            build_encoder("zipformer-nano"), vocab_size=30, spec_augment=augment, consistency=0.2
        )
        model.train()
        torch.manual_seed(1)
        loss, stats = model(doubled)
        losses[augment] = stats
        assert stats["loss"] == pytest.approx(stats["ctc"] + 0.2 * stats["consistency"], rel=1e-5)
        loss.backward()  # the term trains both views, each towards the other
        assert all(p.grad is not None for p in model.output.parameters())
    assert losses[False]["consistency"] == pytest.approx(0.0, abs=1e-6)  # identical views agree
    torch.manual_seed(5)
    model = CtcModel(build_encoder("zipformer-nano"), vocab_size=30, spec_augment=False)
    model.train()
    assert losses[False]["ctc"] == pytest.approx(model(single)[1]["loss"], rel=1e-5)  # same per-token CTC
    assert losses[True]["consistency"] > 1e-3  # independent masks, gains: the views differ
    recipe = _budget_sees_training_frames_only(
        fsdd_corpus, tmp_path, capsys, "consistency", 0.2, flops_ratio=2.0
    )
    code, _, err = cli_result(capsys, "finetune", recipe, "ctc.consistency=-1")
    assert code == 2 and "ctc.consistency" in err
    code, _, err = cli_result(capsys, "finetune", recipe, "ctc.consistency=0.2", "ctc.spec_augment=false")
    assert code == 2 and "ctc.spec_augment" in err


def test_entropy_weight_rewards_flat_posteriors_in_training_only(fsdd_corpus, tmp_path, capsys):
    """``ctc.entropy_weight``: the training loss is CTC minus the weight x the mean frame entropy, its
    gradient flattens the posteriors, and evaluation (and the budget) see plain CTC."""
    cuts = load_cuts(fsdd_corpus / "cuts_train.jsonl.gz").to_eager()
    batch = SpeechDataset("fbank", with_text=True)[cuts]
    b = batch["features"].size(0)
    ids = [torch.tensor([1 + (k + r) % 28 for r in range(1 + k % 3)]) for k in range(b)]
    batch = {
        "features": batch["features"],
        "lengths": batch["lengths"],
        "tokens": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True),
        "token_lengths": torch.tensor([len(t) for t in ids]),
    }
    torch.manual_seed(5)
    model = CtcModel(build_encoder("zipformer-nano"), vocab_size=30, spec_augment=False, entropy_weight=0.5)
    model.train()
    loss, stats = model(batch)
    assert stats["loss"] == pytest.approx(stats["ctc"] - 0.5 * stats["frame_entropy"], rel=1e-5)
    assert 0 < stats["frame_entropy"] < np.log(30)
    model.eval()
    assert "frame_entropy" not in model(batch)[1]
    # the term alone, one step down its gradient: the posteriors get flatter
    model.train()

    def entropy() -> torch.Tensor:
        log_probs, lengths = model.log_probs(batch["features"], batch["lengths"])
        return mean_frame_entropy(log_probs, lengths, torch.ones(b, dtype=torch.bool))

    before = entropy()
    (-before).backward()
    with torch.no_grad():
        for p in model.output.parameters():
            p -= 0.05 * p.grad
    assert float(entropy().detach()) > float(before.detach())
    recipe = _budget_sees_training_frames_only(
        fsdd_corpus, tmp_path, capsys, "entropy_weight", 0.3, flops_ratio=1.0
    )
    code, _, err = cli_result(capsys, "finetune", recipe, "ctc.entropy_weight=2")
    assert code == 2 and "ctc.entropy_weight" in err
