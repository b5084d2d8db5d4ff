"""CTC fine-tuning on a pretrained or fresh encoder, decoding, and the WER files."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import FSDD, copy_fsdd

from speechbudget.asr.text import normalize_text
from speechbudget.asr.tokenizer import Tokenizer, train_tokenizer
from speechbudget.cli import main
from speechbudget.data.manifests import cut_text, load_cuts
from speechbudget.train.finetune import filter_cuts


def run(capsys, *args, code=0):
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert (e.code or 0) == code, capsys.readouterr().err
    else:
        assert code == 0
    return capsys.readouterr()


def recipe(tmp: Path, corpus: Path, **ft) -> Path:
    section = {
        "encoder": "zipformer-tiny",
        "train_cuts": str(corpus / "synthetic" / "cuts_train.jsonl.gz"),
        "max_duration": 8.0,
        "num_buckets": 2,
        "log_every": 1,
        "checkpoint_every": 2,
        "schedule": {"name": "eden", "lr_batches": 100, "lr_epochs": 5, "warmup_batches": 2},
        "budget": {"steps": 3},
        "ctc": {"tokenizer": "char", "vocab_size": 40},
    }
    section.update(ft)
    pre = {
        "encoder": "zipformer-tiny",
        "train_cuts": str(corpus / "km" / "cuts_train.jsonl.gz"),
        "max_duration": 8.0,
        "num_buckets": 2,
        "budget": {"steps": 2},
        "exp_dir": str(tmp / "pt"),
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({"exp_dir": str(tmp / "ft"), "pretrain": pre, "finetune": section}))
    return path


def pretrained(tmp: Path, corpus: Path, capsys) -> tuple:
    """(the recipe of :func:`recipe`, its 2-step pretraining's last checkpoint)."""
    r = recipe(tmp, corpus)
    run(capsys, "pretrain", r, "--json")
    return r, sorted((tmp / "pt" / "checkpoints").glob("*.pt"))[-1]


def test_pretrain_then_finetune_then_decode(tmp_path, synthetic_corpus, capsys):
    r, ck = pretrained(tmp_path, synthetic_corpus, capsys)
    out = json.loads(
        run(capsys, "finetune", r, f"ctc.init_checkpoint={ck}", "ctc.freeze_encoder_steps=1", "--json").out
    )
    assert out["steps"] == 3 and out["filtered"]["ctc_infeasible"] == 0
    card = json.loads((tmp_path / "ft" / "run_card.json").read_text())
    assert card["init"]["checkpoint"] == str(ck)
    test_cuts = synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz"
    g = json.loads(run(capsys, "decode", tmp_path / "ft", test_cuts, "--json").out)
    b = json.loads(
        run(
            capsys, "decode", tmp_path / "ft", test_cuts, "--method", "beam", "--beam-size", "4", "--json"
        ).out
    )
    for res in (g, b):
        assert 0 <= res["wer"] and res["ref_words"] > 0
        assert res["errors"] == res["insertions"] + res["deletions"] + res["substitutions"]
        assert (
            res["wer"] == round(100 * res["errors"] / res["ref_words"], 2)
            or abs(res["wer"] - 100 * res["errors"] / res["ref_words"]) < 1e-6
        )
    # lexicon: every hypothesis word is a word of the fine-tuning transcripts (kept beside the tokenizer)
    lex_file = tmp_path / "ft" / "tokenizer" / "lexicon.txt"
    words = set(lex_file.read_text().split())
    train_text = " ".join(
        cut_text(c) for c in load_cuts(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz")
    )
    assert words == set(normalize_text(train_text).split())
    lex = json.loads(run(capsys, "decode", tmp_path / "ft", test_cuts, "--method", "lexicon", "--json").out)
    assert lex["lexicon"] == str(lex_file) and lex["utterances"] == g["utterances"]
    recogs = (tmp_path / "ft" / "decode-lexicon" / "recogs-test-lexicon-beam8.txt").read_text()
    hyp_words = {
        w for line in recogs.splitlines() if "hyp=" in line for w in ast.literal_eval(line.split("hyp=")[1])
    }
    assert hyp_words <= words
    assert hyp_words, "the 3-step model spells some word: the check above is not vacuous"
    # a run fine-tuned before lexicons were kept: the words of the training cuts its run card names
    lex_file.rename(tmp_path / "words.txt")
    again = json.loads(run(capsys, "decode", tmp_path / "ft", test_cuts, "--method", "lexicon", "--json").out)
    assert again["lexicon"].startswith("words of ") and again["wer"] == lex["wer"]
    # or the user's own word list; and --lexicon without --method lexicon is a one-line error
    (tmp_path / "two.txt").write_text("two\n")
    own = json.loads(
        run(
            capsys,
            "decode",
            tmp_path / "ft",
            test_cuts,
            "--method",
            "lexicon",
            "--lexicon",
            tmp_path / "two.txt",
            "--json",
        ).out
    )
    assert own["lexicon"] == str(tmp_path / "two.txt")
    err = run(capsys, "decode", tmp_path / "ft", test_cuts, "--lexicon", tmp_path / "two.txt", code=2).err
    assert "--method lexicon" in err and "Traceback" not in err
    d = tmp_path / "ft" / "decode-greedy"
    errs = (d / "errs-test-greedy.txt").read_text()
    assert errs.startswith("%WER = ") and "reference words" in errs
    assert (d / "recogs-test-greedy.txt").read_text().count("ref=") == g["utterances"]
    assert (d / "wer-summary-test-greedy.txt").is_file()
    # a corpus folder is decoded split by split: one WER each, never train and test in one number
    split = json.loads(run(capsys, "decode", tmp_path / "ft", synthetic_corpus / "synthetic", "--json").out)
    assert [r["set"] for r in split] == ["dev", "test", "train"]
    assert split[1]["wer"] == g["wer"] and split[1]["utterances"] == g["utterances"]


def test_decoding_unlabeled_audio_writes_hypotheses_without_wer(tmp_path, synthetic_corpus, capsys):
    r = recipe(tmp_path, synthetic_corpus, budget={"steps": 1})
    run(capsys, "finetune", r, "--json")
    audio = tmp_path / "unlabeled"
    audio.mkdir()
    for n in ("1_theo_0.wav", "2_theo_0.wav"):
        shutil.copy(FSDD / n, audio / n)
    run(capsys, "prepare", "dir", audio, "--out", tmp_path / "data", "--name", "unl", "--json")
    res = json.loads(
        run(
            capsys, "decode", tmp_path / "ft", tmp_path / "data" / "unl" / "cuts_train.jsonl.gz", "--json"
        ).out
    )
    assert res["wer"] is None and "no WER" in res["note"]
    hyps = list((tmp_path / "ft" / "decode-greedy").glob("hyps-*.txt"))
    assert hyps and len(hyps[0].read_text().splitlines()) == 2
    # the recordings themselves, never prepared: transcribed (fbank on the fly), in the order given;
    # an unreadable file is skipped and said
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    single = FSDD / "5_jackson_3.wav"
    res = json.loads(run(capsys, "decode", tmp_path / "ft", single, audio, "--json").out)
    assert res["set"] == "audio" and res["wer"] is None and res["utterances"] == 3
    assert [h["id"] for h in res["hypotheses"]] == [
        str(single),
        str(audio / "1_theo_0.wav"),
        str(audio / "2_theo_0.wav"),
    ]
    assert [Path(s["audio"]).name for s in res["skipped"]] == ["broken.wav"]
    assert (tmp_path / "ft" / "decode-greedy" / "hyps-audio-greedy.txt").is_file()
    out = run(capsys, "decode", tmp_path / "ft", audio)  # the table of what was said, per file
    assert "transcripts (greedy)" in out.out and "1_theo_0.wav" in out.out and "skipped:" in out.err
    run(capsys, "decode", tmp_path / "ft", audio / "broken.wav", code=2)


def test_a_run_that_averages_is_decoded_through_its_average_until_it_trains_on(
    tmp_path, synthetic_corpus, capsys
):
    r = recipe(tmp_path, synthetic_corpus, average_last=2, keep_last=4)
    out = json.loads(run(capsys, "finetune", r, "--json").out)
    ft = tmp_path / "ft"
    assert out["averaged"] == str(ft / "averaged.pt")
    test_cuts = synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz"
    avg = json.loads(run(capsys, "decode", ft, test_cuts, "--json").out)
    assert avg["checkpoint"] == str(ft / "averaged.pt") and avg["ref_words"] > 0
    # the averaged file alone, too (it was written without a config once: "internal error: 'config'")
    alone = json.loads(run(capsys, "decode", ft / "averaged.pt", test_cuts, "--json").out)
    assert alone["wer"] == avg["wer"]
    # one of the averaged checkpoints: its own folder, so the final model's results are not overwritten
    first = sorted((ft / "checkpoints").glob("checkpoint-*.pt"))[0]
    one = json.loads(run(capsys, "decode", first, test_cuts, "--json").out)
    assert one["out_dir"] == str(ft / f"decode-greedy-{first.stem}")
    kept = json.loads((ft / "decode-greedy" / "decode-summary-test-greedy.json").read_text())
    assert kept["checkpoint"] == str(ft / "averaged.pt")
    # `report` takes the average for the run's final model: no "decoded averaged.pt, not the final ..." note;
    # the other checkpoint is a column of its own, named, with a note
    rep = json.loads(run(capsys, "report", ft, "--out", tmp_path / "rep", "--json").out)
    (row,) = [r for r in rep["rows"] if r["stage"] == "finetune"]
    assert row["wer"]["test/greedy"]["checkpoint"] == str(ft / "averaged.pt")
    assert row["wer"][f"test/greedy ({first.stem})"]["checkpoint"] == str(first)
    notes = [n for r in rep["rows"] for n in r["notes"]]
    assert [n for n in notes if "not the final" in n] == [
        f"test/greedy ({first.stem}): decoded {first.name}, not the final averaged.pt"
    ], notes
    # a finished run whose checkpoints were deleted to save disk is still decoded, through its average
    # (it said "no checkpoint-*.pt"); a copy, since the run trains on below
    slim = tmp_path / "ft-slim"
    shutil.copytree(ft, slim)
    shutil.rmtree(slim / "checkpoints")
    kept_avg = json.loads(run(capsys, "decode", slim, test_cuts, "--json").out)
    assert kept_avg["checkpoint"] == str(slim / "averaged.pt") and kept_avg["wer"] == avg["wer"]
    # ... but not an average that no finished run names (a summary.json from elsewhere, or none)
    (slim / "summary.json").unlink()
    run(capsys, "decode", slim, test_cuts, code=2)
    # trained on without averaging: the stale average is passed over for the newer checkpoint
    run(capsys, "finetune", r, "budget.steps=5", "average_last=0", "--json")
    newer = json.loads(run(capsys, "decode", ft, test_cuts, "--json").out)
    assert Path(newer["checkpoint"]).name == "checkpoint-00000005.pt"


def test_infeasible_empty_and_unknown_transcripts_are_filtered(tmp_path, shared_data):
    src = copy_fsdd(tmp_path / "fsdd", per_speaker=3, speakers=("george",))
    texts = tmp_path / "text.tsv"
    files = sorted(src.glob("*.wav"))
    texts.write_text(
        f"{files[0].name}\tseven\n{files[1].name}\t"
        + " ".join(["seven eight nine"] * 30)
        + f"\n{files[2].name}\tzebra quiz\n"
    )
    main_rc = 0
    try:
        main(
            [
                "prepare",
                "dir",
                str(src),
                "--transcripts",
                str(texts),
                "--out",
                str(tmp_path / "d"),
                "--no-features",
                "--json",
            ]
        )
    except SystemExit as e:
        main_rc = e.code
    assert not main_rc
    cuts = load_cuts(tmp_path / "d" / "dir" / "cuts_train.jsonl.gz").to_eager()
    tok = Tokenizer(train_tokenizer(["seven eight nine"], tmp_path / "tok", model_type="char", vocab_size=20))
    kept, counts, dropped = filter_cuts(cuts, tok, frame_rate_hz=50.0)
    assert len(kept) == 1 and counts == {"empty_transcript": 0, "unknown_chars": 1, "ctc_infeasible": 1}
    assert {d["reason"] for d in dropped} == {"unknown_chars", "ctc_infeasible"}


@pytest.mark.parametrize("units", ["char", "phone"])
def test_fsdd_ctc_loss_goes_down_on_real_speech(tmp_path, shared_data, capsys, units):
    """Real recorded digits, CTC on letters or on phones from scratch: the loss must fall within a few
    steps; a phone model's lexicon decoding writes words."""
    src = copy_fsdd(tmp_path / "fsdd", per_speaker=20, speakers=("george", "jackson"))
    run(capsys, "prepare", "fsdd", src, "--test-speakers", "jackson", "--out", tmp_path / "data", "--json")
    r = tmp_path / "r.yaml"
    r.write_text(
        yaml.safe_dump(
            {
                "exp_dir": str(tmp_path / "ft"),
                "finetune": {
                    "encoder": "transformer-tiny",
                    "train_cuts": str(tmp_path / "data" / "fsdd" / "cuts_train.jsonl.gz"),
                    "max_duration": 8.0,
                    "num_buckets": 2,
                    "log_every": 1,
                    "checkpoint_every": 100,
                    "optim": {"name": "adamw", "lr": 2e-3},
                    "schedule": {"name": "cosine", "warmup_batches": 3},
                    "budget": {"steps": 24 if units == "char" else 60},
                    "ctc": {"tokenizer": units, "vocab_size": 30, "spec_augment": False},
                },
            }
        )
    )
    run(capsys, "finetune", r, "--json")
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(losses) == (24 if units == "char" else 60)
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4
    if units == "phone":
        words = (tmp_path / "ft" / "tokenizer" / "lexicon.txt").read_text().split()
        assert "three" in words and Tokenizer(tmp_path / "ft" / "tokenizer").encode("three")[1:] != []
        train = tmp_path / "data" / "fsdd" / "cuts_train.jsonl.gz"
        res = json.loads(run(capsys, "decode", tmp_path / "ft", train, "--method", "lexicon", "--json").out)
        recogs = (tmp_path / "ft" / "decode-lexicon" / "recogs-train-lexicon-beam8.txt").read_text()
        hyp = [
            w
            for line in recogs.splitlines()
            if "hyp=" in line
            for w in ast.literal_eval(line.split("hyp=")[1])
        ]
        # the model's phones come back as words, some of them right (IPA here would score no word right)
        assert hyp and set(hyp) <= set(words) and res["errors"] < res["ref_words"] == 20


def test_noise_mixing_hits_the_snr_and_finetuning_uses_it(tmp_path, synthetic_corpus, capsys):
    import numpy as np
    from conftest import NOISE

    from speechbudget.data.augment import NoiseMixer

    cuts = load_cuts(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz").to_eager().subset(first=3)
    mixed = NoiseMixer(NOISE, snr_db=5.0, prob=1.0)(cuts)
    for clean, noisy in zip(cuts, mixed):
        a, b = clean.load_audio()[0], noisy.load_audio()[0]
        assert noisy.id == clean.id and a.shape == b.shape
        snr = 10 * np.log10(np.mean(a**2) / np.mean((b - a) ** 2))
        assert abs(snr - 5.0) < 1.0
    r = recipe(
        tmp_path,
        synthetic_corpus,
        budget={"steps": 2},
        dev_cuts=str(synthetic_corpus / "synthetic" / "cuts_dev.jsonl.gz"),
    )
    out = json.loads(run(capsys, "finetune", r, f"ctc.noise_dir={NOISE}", "ctc.noise_prob=1.0", "--json").out)
    assert out["steps"] == 2 and out["valid"]["valid_loss"] > 0


def test_char_error_rate_counts_letters():
    from speechbudget.decode import char_error_rate

    assert char_error_rate([("a", "the cat", "the cat")]) == 0.0
    assert char_error_rate([("a", "the cat", "tha ct")]) == round(
        100 * 2 / 6, 2
    )  # one sub, one del over 6 letters


def test_encoder_lr_scale_gives_the_encoder_a_gentler_rate(tmp_path, synthetic_corpus, capsys):
    import torch

    from speechbudget.models.presets import build_encoder
    from speechbudget.objectives.ctc import CtcModel

    model = CtcModel(build_encoder("zipformer-nano"), vocab_size=12, encoder_lr_scale=0.1)
    head, enc = model.optimizer_groups(0.04)
    assert head["lr"] == 0.04 and abs(enc["lr"] - 0.004) < 1e-12
    assert {id(p) for p in enc["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(head["params"]) + len(enc["params"]) == len(list(model.parameters()))

    r = recipe(tmp_path, synthetic_corpus)
    run(capsys, "pretrain", r, "--json")
    run(capsys, "finetune", r, f"ctc.init_checkpoint={tmp_path / 'pt'}", "ctc.encoder_lr_scale=0.1", "--json")
    state = torch.load(sorted((tmp_path / "ft" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert len(lrs) == 2 and abs(lrs[1] / lrs[0] - 0.1) < 1e-9  # the schedule scales both groups alike
    err = run(capsys, "finetune", r, "ctc.encoder_lr_scale=0", code=2).err
    assert "ctc.encoder_lr_scale" in err and "(0, 1]" in err


def test_train_speakers_keeps_whole_speakers_then_hours(tmp_path, synthetic_corpus, capsys):
    from speechbudget.config import load_train_config
    from speechbudget.train.setup import training_cuts

    cuts = load_cuts(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz")
    speakers = {c.supervisions[0].speaker for c in cuts}
    r = recipe(tmp_path, synthetic_corpus)
    cfg = load_train_config(r, "finetune", ["train_speakers=2"])
    two = training_cuts(cfg, is_main=True)
    kept = {c.supervisions[0].speaker for c in two}
    assert len(kept) == 2 and kept < speakers
    assert len(two) == sum(c.supervisions[0].speaker in kept for c in cuts)  # every cut of those speakers
    assert list(load_cuts(tmp_path / "ft" / "train_cuts.jsonl.gz").ids) == list(
        two.ids
    )  # recorded for the run
    assert {c.supervisions[0].speaker for c in training_cuts(cfg, True)} == kept  # seeded: same choice
    cfg = load_train_config(r, "finetune", ["train_speakers=2", "train_hours=0.002"])
    short = training_cuts(cfg, is_main=False)
    assert {c.supervisions[0].speaker for c in short} <= kept and sum(
        c.duration for c in short
    ) < 0.002 * 3600 + 5
    err = run(capsys, "finetune", r, f"train_speakers={len(speakers) + 1}", code=2).err
    assert f"only {len(speakers)} speakers" in err


def test_random_gain_on_fbank_equals_scaling_the_audio(shared_data):
    import math

    import numpy as np
    import soundfile as sf
    import torch

    from speechbudget.data.audio import resample
    from speechbudget.data.features import fbank_extractor
    from speechbudget.objectives.ctc import random_gain

    audio, sr = sf.read(str(FSDD / "3_theo_0.wav"), dtype="float32")
    audio = resample(audio, sr).astype(np.float32)  # FSDD is 8 kHz
    fb = fbank_extractor()
    loud, quiet = fb.extract(audio, 16000), fb.extract(audio * 10 ** (-15 / 20), 16000)  # 15 dB quieter
    offset = float(np.median(quiet - loud))
    assert abs(offset - (-15 * math.log(10) / 10)) < 0.05  # log-mel: a gain is an additive offset
    x = torch.from_numpy(loud)[None].repeat(64, 1, 1)
    y = random_gain(x, torch.full((64,), x.size(1)), 15.0)
    shifts = (y - x)[:, :, 0]
    assert torch.allclose(shifts, shifts[:, :1].expand_as(shifts), atol=1e-5)  # one gain per utterance
    assert shifts.abs().max() <= 15 * math.log(10) / 10 + 1e-5 and shifts.std() > 0.5


def test_a_labeled_set_smaller_than_the_bucket_count_still_trains(tmp_path, synthetic_corpus, capsys):
    r = recipe(tmp_path, synthetic_corpus, num_buckets=10, budget={"steps": 2})
    sizes = []
    for hours in (0.0005, 0.003):  # one cut (a plain sampler), then a few (one bucket each)
        exp = tmp_path / f"ft-{hours}"
        out = json.loads(run(capsys, "finetune", r, f"exp_dir={exp}", f"train_hours={hours}", "--json").out)
        sizes.append(len(load_cuts(exp / "train_cuts.jsonl.gz")))
        assert out["steps"] == 2
    assert sizes[0] == 1 and 2 <= sizes[1] < 10


def test_extra_train_cuts_join_after_the_speaker_choice_and_never_repeat_a_cut(tmp_path, synthetic_corpus):
    from speechbudget.config import TrainConfig
    from speechbudget.errors import SpeechBudgetError
    from speechbudget.train.setup import training_cuts

    corpus = synthetic_corpus / "synthetic"
    train, dev = corpus / "cuts_train.jsonl.gz", corpus / "cuts_dev.jsonl.gz"
    cfg = TrainConfig(
        train_cuts=str(train), extra_train_cuts=str(dev), train_speakers=1, exp_dir=str(tmp_path)
    )
    cuts = training_cuts(cfg, is_main=True)  # keeps the speaker subset in EXP/train_cuts.jsonl.gz
    chosen = {c.supervisions[0].speaker for c in load_cuts(tmp_path / "train_cuts.jsonl.gz")}
    dev_ids = set(load_cuts(dev).ids)
    assert len(chosen) == 1 and dev_ids <= set(cuts.ids)  # the subset picks from train_cuts only
    assert len(cuts) == len(load_cuts(tmp_path / "train_cuts.jsonl.gz")) + len(dev_ids)
    cfg = TrainConfig(train_cuts=str(train), extra_train_cuts=f"{dev},{train}", exp_dir=str(tmp_path))
    with pytest.raises(SpeechBudgetError, match="repeat"):
        training_cuts(cfg, is_main=False)


def test_speaker_adversary_trains_beside_ctc_and_decoding_leaves_it_out(tmp_path, synthetic_corpus, capsys):
    """``ctc.speaker_adversary``: the classifier of the training speakers trains (its losses and accuracy
    logged), the budget counts its frames, the checkpoint keeps it for resuming, decoding drops it."""
    from speechbudget.train import checkpoint as ckpt

    r = recipe(tmp_path, synthetic_corpus)
    run(capsys, "finetune", r, "ctc.speaker_adversary=0.5", "--json")
    rows = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < row["speaker_ce"] and 0 <= row["speaker_accuracy"] <= 1 for row in rows)
    assert all(
        row["loss"]
        == pytest.approx(row["ctc"] + row["speaker_ce"] + 0.5 * row["speaker_confusion"], rel=1e-5)
        for row in rows
    )
    speakers = {
        c.supervisions[0].speaker for c in load_cuts(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz")
    }
    state = ckpt.load(sorted((tmp_path / "ft" / "checkpoints").glob("*.pt"))[-1])["model"]
    assert state["adversary.net.2.weight"].shape[0] == len(speakers) > 1
    card = json.loads((tmp_path / "ft" / "run_card.json").read_text())
    vocab, dim = state["output.weight"].shape
    # the budget counts the classifier's frames beside the CTC output's
    assert card["cost"]["head_macs_per_frame"] == vocab * dim + 2 * 256 * (dim + len(speakers))  # 2 passes
    test_cuts = synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz"
    res = json.loads(run(capsys, "decode", tmp_path / "ft", test_cuts, "--json").out)
    assert res["ref_words"] > 0
    # one training speaker leaves nothing to tell apart: one line before anything trains
    one = tmp_path / "one"
    err = run(
        capsys,
        "finetune",
        r,
        f"exp_dir={one}",
        "ctc.speaker_adversary=0.5",
        "train_speakers=1",
        code=2,
    ).err
    assert (
        "at least two training speakers" in err
        and "Traceback" not in err
        and not list(one.glob("checkpoints/*.pt"))
    )


def test_intermediate_ctc_trains_a_middle_head_and_decoding_leaves_it_out(tmp_path, synthetic_corpus, capsys):
    """``ctc.inter_ctc_weight``: the loss is (1 - w) x CTC + w x the middle block's CTC, the budget counts the
    second head, the checkpoint keeps it, decoding drops it; a block the encoder lacks is one line."""
    from speechbudget.train import checkpoint as ckpt

    r = recipe(tmp_path, synthetic_corpus)
    run(capsys, "finetune", r, "ctc.inter_ctc_weight=0.3", "--json")
    rows = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(
        row["loss"] == pytest.approx(0.7 * row["ctc"] + 0.3 * row["inter_ctc"], rel=1e-5) for row in rows
    )
    state = ckpt.load(sorted((tmp_path / "ft" / "checkpoints").glob("*.pt"))[-1])["model"]
    vocab, dim = state["output.weight"].shape
    middle = state["inter_ctc.weight"].shape
    assert middle == (vocab, 128)  # zipformer-tiny's block 6 (of 12), in its third stack, is 128 wide
    card = json.loads((tmp_path / "ft" / "run_card.json").read_text())
    assert card["cost"]["head_macs_per_frame"] == vocab * dim + middle[0] * middle[1]
    test_cuts = synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz"
    res = json.loads(run(capsys, "decode", tmp_path / "ft", test_cuts, "--json").out)
    assert res["ref_words"] > 0
    err = run(
        capsys,
        "finetune",
        r,
        f"exp_dir={tmp_path / 'bad'}",
        "ctc.inter_ctc_weight=0.3",
        "ctc.inter_ctc_layer=99",
        code=2,
    ).err
    assert "ctc.inter_ctc_layer 99" in err and "Traceback" not in err
