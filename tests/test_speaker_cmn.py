"""``ctc.speaker_cmn``: each speaker's mean log-mel moved onto the training speakers', in fine-tuning
and in decoding, on real FSDD recordings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import FSDD, copy_fsdd
from lhotse import CutSet
from test_finetune_decode import run

from speechbudget.data import speaker_cmn
from speechbudget.data.dataset import SpeechDataset
from speechbudget.data.manifests import load_cuts


@pytest.fixture
def fsdd_data(tmp_path, shared_data, capsys):
    src = copy_fsdd(tmp_path / "fsdd", per_speaker=10, speakers=("george", "jackson", "nicolas"))
    run(capsys, "prepare", "fsdd", src, "--test-speakers", "nicolas", "--out", tmp_path / "data", "--json")
    return tmp_path / "data" / "fsdd"


def _normalised(cuts: CutSet, target: speaker_cmn.Moments) -> dict:
    """Each cut's real frames after speaker_cmn with the statistics of ``cuts`` itself, by cut id."""
    dataset = SpeechDataset("fbank", transform=speaker_cmn.for_cuts(target, cuts), on_the_fly=True)
    batch = dataset[cuts]
    return {
        cid: batch["features"][i, : int(n)] for i, (cid, n) in enumerate(zip(batch["ids"], batch["lengths"]))
    }


def test_every_speaker_lands_on_the_target_and_a_quieter_recording_chain_is_removed(fsdd_data):
    cuts = load_cuts(fsdd_data / "cuts_train.jsonl.gz").to_eager()
    means = {spk: m.mean for spk, m in speaker_cmn.speaker_moments(cuts).items()}
    assert set(means) == {"george", "jackson"}
    # real speakers differ by more than a rounding error in some bins
    assert np.abs(means["george"] - means["jackson"]).max() > 0.5
    target = speaker_cmn.pooled(speaker_cmn.speaker_moments(cuts))
    assert target.std is None and np.allclose(target.mean, (means["george"] + means["jackson"]) / 2)

    loud = _normalised(cuts, target)
    for spk in means:  # after the transform each speaker's mean over its frames is the target
        frames = torch.cat([f for cid, f in loud.items() if cuts[cid].supervisions[0].speaker == spk])
        assert np.allclose(frames.double().mean(dim=0).numpy(), target.mean, atol=0.05), spk

    # the same recordings 12 dB quieter (a different level in the recording chain): raw log-mel
    # moves by ln(0.25) = -1.39 where there is energy; after speaker_cmn little is left of it (what
    # is left: near-silent frames and FSDD's empty band above 4 kHz sit at the log floor and do not
    # move with the level, so a constant shift cannot undo them exactly: 12% here)
    quiet_cuts = CutSet.from_cuts(c.perturb_volume(0.25, affix_id=False) for c in cuts)
    quiet = _normalised(quiet_cuts, target)
    raw_loud = SpeechDataset("fbank", on_the_fly=True)[cuts]
    raw_quiet = SpeechDataset("fbank", on_the_fly=True)[quiet_cuts]
    raw_shift = (raw_loud["features"] - raw_quiet["features"]).abs().mean()
    left = torch.stack([(loud[cid] - quiet[cid]).abs().mean() for cid in loud]).mean()
    assert raw_shift > 1.0
    assert left < 0.2 * raw_shift


def test_speaker_cvn_also_moves_each_speakers_spread_onto_the_target(fsdd_data):
    cuts = load_cuts(fsdd_data / "cuts_train.jsonl.gz").to_eager()
    moments = speaker_cmn.speaker_moments(cuts)
    # real speakers' spreads differ: some bins of one move far less than the other's
    assert (moments["george"].std / moments["jackson"].std).max() > 1.2
    target = speaker_cmn.pooled(moments, norm_vars=True)
    assert np.allclose(target.std, (moments["george"].std + moments["jackson"].std) / 2)
    out = _normalised(cuts, target)  # (statistics of the stored fbank, the dataset's computed: 5%)
    for spk in moments:
        frames = torch.cat([f for cid, f in out.items() if cuts[cid].supervisions[0].speaker == spk]).double()
        assert np.allclose(frames.mean(dim=0).numpy(), target.mean, atol=0.05), spk
        assert np.allclose(frames.std(dim=0, unbiased=False).numpy(), target.std, rtol=0.05, atol=0.05), spk


def _two_step_section(fsdd_data, encoder="zipformer-tiny") -> dict:
    """A 2-step fine-tuning section with speaker_cmn on the fixture's training speakers."""
    return {
        "encoder": encoder,
        "train_cuts": str(fsdd_data / "cuts_train.jsonl.gz"),
        "max_duration": 8.0,
        "num_buckets": 2,
        "checkpoint_every": 2,
        "budget": {"steps": 2},
        "ctc": {"tokenizer": "char", "vocab_size": 30, "speaker_cmn": True},
    }


def test_finetuning_keeps_the_target_and_decoding_uses_it(tmp_path, fsdd_data, capsys):
    section = _two_step_section(fsdd_data)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "ft"), "finetune": section}))
    run(capsys, "finetune", recipe, "--json")
    target = speaker_cmn.read_target(tmp_path / "ft")
    assert target is not None and target.mean.shape == (80,) and target.std is None
    moments = speaker_cmn.speaker_moments(load_cuts(fsdd_data / "cuts_train.jsonl.gz"))
    assert np.allclose(target.mean, speaker_cmn.pooled(moments).mean)

    summary = json.loads(
        run(capsys, "decode", tmp_path / "ft", fsdd_data / "cuts_test.jsonl.gz", "--json").out
    )
    assert summary["speaker_cmn_speakers"] == 1 and not summary["speaker_cvn"]  # nicolas, his own test cuts
    # recordings never prepared: each speaker folder normalised on its own, a loose file by itself
    rec = tmp_path / "rec"
    for spk, names in (("anna", ("0_theo_0.wav", "1_theo_0.wav")), ("ben", ("2_jackson_0.wav",))):
        (rec / spk).mkdir(parents=True)
        for name in names:
            shutil.copy(FSDD / name, rec / spk / name)
    shutil.copy(FSDD / "3_george_0.wav", rec / "loose.wav")
    summary = json.loads(run(capsys, "decode", tmp_path / "ft", rec, "--json").out)
    assert summary["set"] == "audio" and summary["utterances"] == 4 and summary["speaker_cmn_speakers"] == 3

    # with the spreads too: the target keeps them and decoding scales by them
    section["ctc"]["speaker_cvn"] = True
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "ft-cvn"), "finetune": section}))
    run(capsys, "finetune", recipe, "--json")
    target = speaker_cmn.read_target(tmp_path / "ft-cvn")
    assert np.allclose(target.std, speaker_cmn.pooled(moments, norm_vars=True).std)
    summary = json.loads(
        run(capsys, "decode", tmp_path / "ft-cvn", fsdd_data / "cuts_test.jsonl.gz", "--json").out
    )
    assert summary["speaker_cvn"]
    del section["ctc"]["speaker_cvn"]

    # the same run folder fine-tuned again without it is refused: its model was trained on normalised
    # features, and its target stays for decoding
    section["ctc"]["speaker_cmn"] = False
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "ft"), "finetune": section}))
    err = run(capsys, "finetune", recipe, code=2).err
    assert "was trained with ctc.speaker_cmn True (this run asks for False)" in err
    assert speaker_cmn.read_target(tmp_path / "ft") is not None
    # a run without it writes no target (and removes a stale one): decoding does not normalise
    (tmp_path / "plain").mkdir()
    speaker_cmn.keep_target(tmp_path / "plain", target)  # as an older version may have left it
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "plain"), "finetune": section}))
    run(capsys, "finetune", recipe, "--json")
    assert speaker_cmn.read_target(tmp_path / "plain") is None
    out = run(capsys, "decode", tmp_path / "plain", fsdd_data / "cuts_test.jsonl.gz", "--json").out
    assert "speaker_cmn_speakers" not in json.loads(out)

    # spreads without means: one line naming the key
    section["ctc"]["speaker_cvn"] = True
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "ft"), "finetune": section}))
    err = run(capsys, "finetune", recipe, code=2).err
    assert "ctc.speaker_cvn" in err and "needs ctc.speaker_cmn" in err and "Traceback" not in err
    del section["ctc"]["speaker_cvn"]

    # a waveform encoder has no log-mel to normalise: one line, before anything is trained
    section["ctc"]["speaker_cmn"] = True
    section.update(
        encoder={
            "family": "transformer",
            "frontend": "waveform",
            "dim": 64,
            "layers": 1,
            "heads": 4,
            "ffn_dim": 128,
        }
    )
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "wave"), "finetune": section}))
    err = run(capsys, "finetune", recipe, code=2).err
    assert "speaker_cmn is for log-mel" in err and "Traceback" not in err
    assert not [p for p in (tmp_path / "wave").rglob("*") if p.is_file() and p.name != ".lock"]


def test_an_encoder_of_fewer_mel_bins_gets_speaker_means_in_its_own_bins(tmp_path, fsdd_data, capsys):
    # a Zipformer reading 40-bin fbank (computed from the audio): the speakers' means, the kept target
    # and decoding's normalisation are all 40-bin, not the stored 80-bin fbank's
    cuts = load_cuts(fsdd_data / "cuts_train.jsonl.gz").to_eager()
    moments = speaker_cmn.speaker_moments(cuts, 40)
    assert {m.mean.shape for m in moments.values()} == {(40,)}
    section = _two_step_section(fsdd_data, {"preset": "zipformer-tiny", "input_dim": 40})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "ft40"), "finetune": section}))
    run(capsys, "finetune", recipe, "--json")
    target = speaker_cmn.read_target(tmp_path / "ft40")
    assert target is not None and target.mean.shape == (40,)
    assert np.allclose(target.mean, speaker_cmn.pooled(moments).mean)
    summary = json.loads(
        run(capsys, "decode", tmp_path / "ft40", fsdd_data / "cuts_test.jsonl.gz", "--json").out
    )
    assert summary["speaker_cmn_speakers"] == 1 and summary["utterances"] == 10
