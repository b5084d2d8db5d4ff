"""``ctc.vtlp`` and ``hubert.vtlp``: vocal tract length perturbation on log-mel, checked against real
resampled speech."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FSDD

from speechbudget.config import load_train_config
from speechbudget.data.audio import resample
from speechbudget.data.features import fbank_extractor
from speechbudget.data.vtlp import vtlp, warp
from speechbudget.errors import SpeechBudgetError
from speechbudget.models.presets import build_encoder
from speechbudget.objectives.ctc import CtcModel
from speechbudget.objectives.hubert import HubertModel


def _mean_logmel(audio: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(fbank_extractor().extract(audio, 16000)).mean(dim=0)


def test_warping_the_logmel_matches_speech_whose_frequencies_were_scaled(shared_data):
    # a real recording played 10% faster (resampled: every frequency x 1.1, what a shorter vocal
    # tract does to formants, and pitch too) has a mean log-mel that the warp of the original by
    # 1 / 1.1 predicts much better than the original itself
    audio, sr = sf.read(str(FSDD / "6_jackson_3.wav"), dtype="float32")
    audio = resample(audio, sr).astype(np.float32)  # FSDD is 8 kHz: content below 4 kHz
    faster = resample(audio, 16000, round(16000 / 1.1)).astype(np.float32)
    original, target = _mean_logmel(audio), _mean_logmel(faster)
    warped = warp(original[None, None], torch.tensor([1 / 1.1]))[0, 0]
    band = slice(5, 60)  # below FSDD's 4 kHz edge, above the lowest bins
    before = (original - target)[band].abs().mean()
    after = (warped - target)[band].abs().mean()
    assert before > 0.3 and after < 0.5 * before, (before, after)
    # the other way (1.1 instead of 1 / 1.1) makes it worse: the direction is right
    wrong = warp(original[None, None], torch.tensor([1.1]))[0, 0]
    assert (wrong - target)[band].abs().mean() > before


def test_vtlp_draws_one_factor_per_utterance_and_is_the_identity_at_one():
    x = torch.randn(3, 20, 80)
    assert torch.allclose(warp(x, torch.ones(3)), x, atol=1e-5)  # factor 1 reads every bin in place
    assert vtlp(x, 0.0) is x
    torch.manual_seed(0)
    same = x[:1, :1].repeat(8, 20, 1)  # 8 utterances of 20 identical frames
    y = vtlp(same, 0.1)
    assert y.shape == same.shape and torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1])  # each utterance its own factor...
    assert torch.allclose(y, y[:, :1].expand_as(y))  # ...the same for all its frames


def test_ctc_fine_tuning_warps_in_training_only():
    model = CtcModel(build_encoder("zipformer-tiny"), vocab_size=8, time_masks=0, freq_masks=0, vtlp_warp=0.2)
    x, lengths = torch.randn(4, 30, 80), torch.full((4,), 30)
    model.eval()
    assert model.augment_features(x, lengths) is x
    model.train()
    assert not torch.allclose(model.augment_features(x, lengths), x)


def test_hubert_pretraining_warps_the_encoder_input_in_training_only_and_keeps_the_targets():
    seen = []

    class Spy(torch.nn.Module):
        """Records what the encoder is given, then runs the real tiny Zipformer."""

        def __init__(self, encoder):
            super().__init__()
            self.inner = encoder
            for name in ("input_dim", "output_dim", "input_rate_hz", "frame_rate_hz"):
                setattr(self, name, getattr(encoder, name))

        def forward(self, x, lengths):
            seen.append(x.detach().clone())
            return self.inner(x, lengths)

    model = HubertModel(
        Spy(build_encoder("zipformer-tiny")), num_clusters=5, mask_prob=0.0, mask_length=1, vtlp_warp=0.2
    )
    x = torch.randn(2, 40, 80)
    labels = torch.randint(0, 5, (2, 20))
    batch = {"features": x, "lengths": torch.full((2,), 40), "kmeans": labels}

    def frames_as_given():  # per utterance; one masked span (2 input frames) is the mask vector
        return (seen[-1] == x).all(dim=-1).sum(dim=1).tolist()

    model.eval()
    model(batch)
    assert frames_as_given() == [38, 38]  # evaluation: the audio as it is
    model.train()
    model(batch)
    assert frames_as_given() == [0, 0]  # training: another vocal tract length...
    assert torch.equal(batch["kmeans"], labels)  # ...and the same targets
    model.vtlp_warp = 0.0
    model(batch)
    assert frames_as_given() == [38, 38]


def test_a_pretraining_warp_out_of_range_names_the_key():
    recipe = {"exp_dir": "unused", "pretrain": {"hubert": {"vtlp": 0.5}}}
    with pytest.raises(SpeechBudgetError, match=r"pretrain\.hubert\.vtlp.*between 0 \(off\) and 0\.3"):
        load_train_config(recipe, "pretrain")
    assert load_train_config(recipe, "pretrain", ["hubert.vtlp=0.15"]).hubert.vtlp == 0.15
