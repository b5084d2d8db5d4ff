"""Spectrogram patches (AuM stride 16, AST stride 10), padding masks, positions, dataset normalisation."""

from __future__ import annotations

import json

import pytest
import torch
from fsdd_clips import fsdd_cuts

from speechbudget.data.feature_stats import compute_feature_stats, read_feature_stats, write_feature_stats
from speechbudget.errors import SpeechBudgetError
from speechbudget.models.patches import PatchEmbed, time_patches

torch.set_num_threads(1)


def test_time_patches_cover_every_frame():
    lengths = torch.tensor([1, 16, 17, 32, 100, 101, 1024])
    assert time_patches(lengths, 16, 16).tolist() == [1, 1, 2, 2, 7, 7, 64]
    assert time_patches(lengths, 16, 10).tolist() == [1, 1, 2, 3, 10, 10, 102]
    for n, t in zip(lengths.tolist(), time_patches(lengths, 16, 10).tolist()):
        assert (t - 1) * 10 + 16 >= n  # the last patch reaches the last frame
        assert t == 1 or (t - 2) * 10 + 16 < n  # and one patch fewer would not
    assert time_patches(100, 16, 16) == 7  # ints too (shapes at build time)


@pytest.mark.parametrize("stride,freq_patches", [(16, 8), (10, 12)])
def test_patch_shapes_and_lengths(stride, freq_patches):
    embed = PatchEmbed(dim=24, num_mel_bins=128, stride=stride)
    assert embed.freq_patches == freq_patches
    x = torch.randn(3, 100, 128)
    lengths = torch.tensor([100, 40, 5])
    out, out_lengths = embed(x, lengths)
    expected = time_patches(lengths, 16, stride) * freq_patches
    assert out_lengths.tolist() == expected.tolist()
    assert out.shape == (3, int(expected.max()), 24)
    assert out[1, int(expected[1]) :].abs().sum() == 0  # patch-level padding is zero


def test_patches_are_time_major_and_match_a_manual_patch():
    embed = PatchEmbed(dim=8, num_mel_bins=32, stride=16, position="sinusoidal")
    x = torch.randn(1, 48, 32)
    out, _ = embed(x, torch.tensor([48]))
    pos = embed.positions(3, x.device, x.dtype)
    # patch (time 1, freq 0) is sequence index 1 * freq_patches + 0
    manual = torch.einsum("dij,ij->d", embed.proj.weight[:, 0], x[0, 16:32, 0:16]) + embed.proj.bias
    assert torch.allclose(out[0, 1 * embed.freq_patches] - pos[embed.freq_patches], manual, atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_padding_never_changes_real_patches(position):
    torch.manual_seed(0)
    embed = PatchEmbed(dim=16, num_mel_bins=128, stride=10, position=position)
    x = torch.randn(2, 90, 128)
    lengths = torch.tensor([90, 33])
    batched, out_lengths = embed(x, lengths)
    x_alone = x[1:, :33].clone()
    alone, alone_lengths = embed(x_alone, lengths[1:])
    assert alone_lengths[0] == out_lengths[1]
    assert torch.allclose(batched[1, : out_lengths[1]], alone[0], atol=1e-6)
    # garbage in the padded frames changes nothing either
    x[1, 33:] = 1e3
    again, _ = embed(x, lengths)
    assert torch.allclose(again[1], batched[1])


def test_positions_distinguish_patches_and_learned_ones_stop_at_max_frames():
    sin = PatchEmbed(dim=16, num_mel_bins=128, position="sinusoidal")
    pos = sin.positions(5, "cpu", torch.float32)
    assert pos.shape == (5 * 8, 16)
    assert torch.cdist(pos, pos).add(torch.eye(40)).min() > 1e-3  # every patch position differs
    learned = PatchEmbed(dim=16, num_mel_bins=128, max_frames=64)
    assert learned.max_time_patches == 4
    with pytest.raises(SpeechBudgetError, match="max_frames"):
        learned(torch.randn(1, 100, 128), torch.tensor([100]))


def test_bad_inputs_are_user_errors():
    with pytest.raises(SpeechBudgetError, match="128"):
        PatchEmbed(dim=16)(torch.randn(1, 50, 80), torch.tensor([50]))
    with pytest.raises(SpeechBudgetError):
        PatchEmbed(dim=16, stride=20)
    with pytest.raises(SpeechBudgetError):
        PatchEmbed(dim=16, position="rotary")


def test_feature_stats_from_real_fsdd_normalise_to_half_std(tmp_path):
    cuts = fsdd_cuts(tmp_path / "feats")
    stats = compute_feature_stats(cuts, 128)  # the stored 128-bin fbank
    frames = torch.cat([torch.from_numpy(c.load_features()) for c in cuts]).double()
    assert stats["num_mel_bins"] == 128 and stats["values"] == frames.numel()
    assert stats["mean"] == pytest.approx(float(frames.mean()), rel=1e-6)
    assert stats["std"] == pytest.approx(float(frames.std(unbiased=False)), rel=1e-6)
    # without stored features of that size they come from the audio: the same up to lilcom's rounding
    again = compute_feature_stats(cuts.drop_features(), 128)
    assert again["mean"] == pytest.approx(stats["mean"], abs=0.02)
    assert again["std"] == pytest.approx(stats["std"], rel=0.01)
    assert compute_feature_stats(cuts, 80)["num_mel_bins"] == 80  # other bins: computed, not the stored 128
    path = write_feature_stats(tmp_path, stats)
    assert path.name == "feature_stats.json" and json.loads(path.read_text())["std"] == stats["std"]
    back = read_feature_stats(tmp_path)
    # (x - mean) / (2 std): the normalised set has mean 0 and std 1/2
    embed = PatchEmbed(dim=8, feature_mean=back["mean"], feature_std=back["std"])
    normalised = (frames.float() - embed.feature_mean) * embed.feature_scale
    assert abs(float(normalised.mean())) < 1e-4
    assert float(normalised.std()) == pytest.approx(0.5, rel=1e-3)
    assert "feature_mean" in embed.state_dict()  # checkpoints carry the statistics


def test_feature_stats_errors(tmp_path):
    with pytest.raises(SpeechBudgetError, match="no feature statistics"):
        read_feature_stats(tmp_path)
    for damaged in ('{"mean": 0, "std": 0}', '{"mean": 0, "std": "1"}', '{"mean": 0, "st'):
        (tmp_path / "feature_stats.json").write_text(damaged)
        with pytest.raises(SpeechBudgetError, match="positive std"):
            read_feature_stats(tmp_path)


def test_on_the_fly_fbank_can_have_128_bins(tmp_path):
    """Noise mixing recomputes fbank in the dataset: it must keep the classifiers' 128 bins."""
    from speechbudget.data.dataset import SpeechDataset

    cuts = fsdd_cuts(tmp_path / "feats", digits=(4,), speakers=("theo",), per=2)
    stored = SpeechDataset()[cuts]["features"]
    on_the_fly = SpeechDataset(cut_transform=lambda c: c, num_mel_bins=128)[cuts]["features"]
    assert stored.shape == on_the_fly.shape and stored.shape[-1] == 128
    diff = (stored - on_the_fly).abs()
    assert float(diff.median()) < 0.05 and float(diff.mean()) < 0.2  # lilcom storage is lossy, slightly
