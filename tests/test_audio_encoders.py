"""AuM and AST encoders: CLS placement, padding, Fo-Bi vs Bi-Bi, presets and their sizes."""

from __future__ import annotations

import pytest
import torch

from speechbudget.errors import SpeechBudgetError
from speechbudget.models.audio_mamba import AudioMamba, insert_middle
from speechbudget.models.presets import build_encoder, preset_names
from speechbudget.models.spectrogram_transformer import AudioSpectrogramTransformer

torch.set_num_threads(1)


def tiny_aum(aum_type="Fo-Bi", **kw):
    return AudioMamba(dim=32, layers=2, d_state=4, aum_type=aum_type, **kw).eval()


def test_insert_middle_places_the_token_at_half_of_each_clip():
    x = torch.arange(1, 7, dtype=torch.float32).view(1, 6, 1).repeat(2, 1, 1)
    lengths = torch.tensor([6, 3])
    out, out_lengths = insert_middle(x, lengths, torch.tensor([-1.0]))
    assert out_lengths.tolist() == [7, 4]
    assert out[0, :, 0].tolist() == [1, 2, 3, -1, 4, 5, 6]
    assert out[1, :4, 0].tolist() == [1, -1, 2, 3]  # the middle of 3 real patches, not of the padded 6


@pytest.mark.parametrize("aum_type", ["Fo-Bi", "Bi-Bi"])
def test_aum_cls_index_is_the_cls_state_with_padding(aum_type):
    torch.manual_seed(0)
    enc = tiny_aum(aum_type)
    with torch.no_grad():  # identity blocks: the output is RMSNorm of the input sequence
        for block in enc.blocks:
            block.out_proj.weight.zero_()
    x = torch.randn(2, 100, 128)
    lengths = torch.tensor([100, 40])  # 7 and 3 time patches: 56 and 24 patches
    out = enc(x, lengths)
    assert out.lengths.tolist() == [57, 25]
    idx = enc.cls_index(out.lengths)
    assert idx.tolist() == [28, 12]
    cls_state = enc.norm(enc.cls.detach())
    for b in range(2):
        assert torch.allclose(out.hidden[b, idx[b]], cls_state, atol=1e-5)
        others = torch.cat([out.hidden[b, : idx[b]], out.hidden[b, idx[b] + 1 : out.lengths[b]]])
        assert (others - cls_state).abs().amax(-1).min() > 1e-3


@pytest.mark.parametrize("aum_type", ["Fo-Fo", "Fo-Bi", "Bi-Bi"])
def test_aum_padding_invariance(aum_type):
    torch.manual_seed(1)
    enc = tiny_aum(aum_type)
    x = torch.randn(2, 100, 128)
    lengths = torch.tensor([100, 40])
    out = enc(x, lengths)
    alone = enc(x[1:, :40], lengths[1:])
    assert torch.allclose(out.hidden[1, : out.lengths[1]], alone.hidden[0], atol=1e-5)


def test_fo_bi_sees_the_future_fo_fo_does_not():
    torch.manual_seed(2)
    x = torch.randn(1, 64, 128)
    later = x.clone()
    later[:, 48:] += 1.0  # change only the last time patch
    for aum_type, sees_future in [("Fo-Fo", False), ("Fo-Bi", True), ("Bi-Bi", True)]:
        enc = tiny_aum(aum_type, cls_token=False)
        first, first_later = (enc(inp, torch.tensor([64])).hidden[0, 0] for inp in (x, later))
        changed = not torch.allclose(first, first_later, atol=1e-6)
        assert changed == sees_future, aum_type


def test_fo_bi_and_bi_bi_parameter_counts_differ_by_the_backward_branch():
    dim, layers, d_state, expand, d_conv = 32, 3, 4, 2, 4
    counts = {
        t: sum(p.numel() for p in AudioMamba(dim, layers, d_state, expand, aum_type=t).parameters())
        for t in ("Fo-Fo", "Fo-Bi", "Bi-Bi")
    }
    d_inner, dt_rank = expand * dim, 2  # dt_rank = ceil(dim / 16)
    A = d_inner * d_state
    branch = (
        d_inner * d_conv + d_inner  # depthwise conv + bias
        + d_inner * (dt_rank + 2 * d_state)  # x_proj
        + dt_rank * d_inner + d_inner  # dt_proj
        + A + d_inner  # A_log, D
    )  # fmt: skip
    assert counts["Fo-Bi"] - counts["Fo-Fo"] == layers * A  # Fo-Bi: only a backward A
    assert counts["Bi-Bi"] - counts["Fo-Fo"] == layers * branch  # Bi-Bi: a whole backward branch


def test_ast_tokens_in_front_padding_and_distillation():
    torch.manual_seed(3)
    enc = AudioSpectrogramTransformer(dim=32, layers=2, heads=4, dist_token=True).eval()
    x = torch.randn(2, 90, 128)
    lengths = torch.tensor([90, 37])
    out = enc(x, lengths)
    assert out.lengths.tolist() == [2 + 9 * 12, 2 + 4 * 12]  # stride 10: 9 and 4 time patches x 12
    assert enc.cls_index(out.lengths).tolist() == [0, 0] and enc.dist_index(out.lengths).tolist() == [1, 1]
    alone = enc(x[1:, :37], lengths[1:])
    assert torch.allclose(out.hidden[1, : out.lengths[1]], alone.hidden[0], atol=1e-5)
    plain = AudioSpectrogramTransformer(dim=32, layers=1, heads=4)
    assert plain.dist_index(out.lengths) is None and plain(x, lengths).lengths.tolist() == [109, 49]


def test_bad_aum_type_is_a_user_error():
    with pytest.raises(SpeechBudgetError, match="Bi-Bi"):
        AudioMamba(dim=32, layers=1, aum_type="v2")


# Published sizes: AuM Small ~25M, Base ~92M (GUIDE section 2); AST Base (DeiT-B) ~86-87M.
EXPECTED_M = {
    ("aum-tiny", "Fo-Bi"): (6.0, 7.0),
    ("aum-small", "Fo-Bi"): (23.0, 26.0),
    ("aum-small", "Bi-Bi"): (24.0, 26.5),
    ("aum-base", "Fo-Bi"): (89.0, 95.0),
    ("aum-base", "Bi-Bi"): (89.0, 99.0),
    ("ast-tiny", None): (5.0, 6.5),
    ("ast-small", None): (21.0, 23.0),
    ("ast-base", None): (85.0, 88.0),
}


@pytest.mark.parametrize("name,aum_type", list(EXPECTED_M))
def test_preset_sizes_match_the_papers(name, aum_type):
    assert name in preset_names()
    spec = {"preset": name, **({"aum_type": aum_type} if aum_type else {})}
    with torch.device("meta"):
        enc = build_encoder(spec)
    params = sum(p.numel() for p in enc.parameters()) / 1e6
    lo, hi = EXPECTED_M[(name, aum_type)]
    assert lo <= params <= hi, f"{name} {aum_type}: {params:.2f}M"
    assert enc.input_dim == 128
