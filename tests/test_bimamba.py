"""Selective scan (fast vs sequential oracle) and the BiMamba encoder built on it."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import HiddenOnly
from encoder_checks import assert_padding_invariant, make_batch

from speechbudget.errors import SpeechBudgetError
from speechbudget.models.base import make_pad_mask
from speechbudget.models.bimamba import PRESETS, BiMambaEncoder, DepthwiseConvTime, flip_valid
from speechbudget.models.presets import build_encoder, preset_names
from speechbudget.models.selective_scan import (
    SelectiveScan,
    SelectiveScanFn,
    scan_flops,
    selective_scan,
    selective_scan_macs,
    selective_scan_reference,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- selective scan


def scan_inputs(batch=2, dim=5, state=4, length=37, dtype=torch.float64, seed=0, delta_scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = rand(batch, dim, length)
    delta = F.softplus(rand(batch, dim, length)) * delta_scale
    A = -torch.exp(rand(dim, state))  # negative, as in Mamba
    B, C = rand(batch, state, length), rand(batch, state, length)
    D, z = rand(dim), rand(batch, dim, length)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z)]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("length, chunk", [(37, None), (37, 5), (40, 8), (1, None), (9, 64), (64, 1)])
def test_fast_scan_matches_reference_values_and_gradients(dtype, tol, length, chunk):
    inputs = scan_inputs(length=length, dtype=dtype)
    ref = selective_scan_reference(*inputs)
    fast = selective_scan(*inputs, chunk_size=chunk)
    assert (ref - fast).abs().max() < tol
    weights = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * weights).sum(), inputs)
    g_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    for name, a, b in zip("u delta A B C D z".split(), g_ref, g_fast):
        assert (a - b).abs().max() < tol * max(1.0, a.abs().max().item()), name


def test_scan_backward_passes_gradcheck():
    u, delta, A, B, C, _, _ = (t.detach().requires_grad_() for t in scan_inputs(1, 3, 2, 7))
    assert torch.autograd.gradcheck(lambda *xs: SelectiveScanFn.apply(*xs, 3), (u, delta, A, B, C))


def test_scan_is_stable_when_chunks_decay_strongly():
    """Large steps make a chunk decay by far more than e^88: a naive exp(-cumsum) would overflow."""
    inputs = scan_inputs(length=200, dtype=torch.float32, delta_scale=30.0)
    fast = selective_scan(*inputs, chunk_size=50)
    ref = selective_scan_reference(*inputs)
    assert torch.isfinite(fast).all()
    assert (fast - ref).abs().max() < 1e-4 * ref.abs().max()
    fast.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


def test_zero_delta_leaves_the_state_unchanged():
    u, delta, A, B, C, _, _ = (t.detach() for t in scan_inputs(length=20))
    delta = delta.clone()
    delta[:, :, 10:15] = 0.0  # "padding" in the middle: the state must carry straight through
    y = selective_scan(u, delta, A, B, C)
    # with the same state, y_t = C_t . h; compare against removing those frames entirely
    keep = [t for t in range(20) if not 10 <= t < 15]
    y_cut = selective_scan(u[..., keep], delta[..., keep], A, B[..., keep], C[..., keep])
    assert (y[..., keep] - y_cut).abs().max() < 1e-10


def test_half_precision_is_scanned_in_float32():
    inputs = [t.detach() for t in scan_inputs(length=30, dtype=torch.float32)]
    y32 = selective_scan(*inputs)
    y16 = selective_scan(*(t.bfloat16() for t in inputs))
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - y32).abs().max() < 0.05 * y32.abs().max()


def test_macs_formula():
    # FLOPs per (b, d, t): 7 per state (delta*A, exp, *B, a*h+b, C*h) + delta*u + D skip (+ z gate)
    assert scan_flops(2, 8, 16, 10) == 2 * 8 * 10 * (7 * 16 + 3)
    assert selective_scan_macs((2, 8, 10), 16) == 2 * 8 * 10 * (7 * 16 + 3) // 2
    assert SelectiveScan().macs((2, 8, 10), 16, gate=True) == 2 * 8 * 10 * (7 * 16 + 4) // 2
    assert SelectiveScan().macs((1, 1, 1), 1, skip=False) == 4  # 8 FLOPs
    assert selective_scan_macs((1, 1, 1), 1) == 5  # 10 FLOPs


# ---------------------------------------------------------------- BiMamba encoder


def test_flip_valid_reverses_only_real_frames():
    x = torch.arange(6.0).view(1, 6, 1).repeat(2, 1, 1)
    out = flip_valid(x, torch.tensor([6, 4]))
    assert out[0, :, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert out[1, :, 0].tolist() == [3, 2, 1, 0, 4, 5]
    assert torch.equal(flip_valid(out, torch.tensor([6, 4])), x)


@pytest.mark.parametrize("frontend", ["fbank", "waveform"])
def test_padding_does_not_leak_into_real_frames(frontend):
    torch.manual_seed(0)
    model = build_encoder({"preset": "bimamba-xs", "frontend": frontend}).eval()
    assert_padding_invariant(model, frontend)


def test_padding_invariance_with_middle_cls_token():
    torch.manual_seed(0)
    model = build_encoder({"preset": "bimamba-xs", "cls_token": True}).eval()
    assert_padding_invariant(model, "fbank")


def test_backward_branch_sees_the_future():
    """Changing the last real frames must change the first output frame: the model is bidirectional."""
    torch.manual_seed(0)
    model = build_encoder("bimamba-xs").eval()
    x, lengths = make_batch("fbank")
    x2 = x.clone()
    x2[0, 115:121] += 5.0
    with torch.no_grad():
        a, b = model(x, lengths).hidden, model(x2, lengths).hidden
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4


def test_cls_token_goes_to_the_middle_and_comes_back_first():
    model = BiMambaEncoder(dim=4, layers=1, cls_token=True)
    x = torch.arange(1.0, 6.0).view(1, 5, 1).repeat(2, 1, 4)
    lengths = torch.tensor([5, 3])
    inserted, new_lengths = model._insert_cls(x, lengths)
    cls = model.cls.detach()
    assert new_lengths.tolist() == [6, 4]
    assert torch.equal(inserted[0, 2], cls) and torch.equal(inserted[1, 1], cls)
    assert inserted[0, :, 0].tolist()[:2] + inserted[0, :, 0].tolist()[3:] == [1, 2, 3, 4, 5]
    back = model._cls_first(inserted, new_lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(back[b, 0], cls)
        assert torch.equal(back[b, 1 : n + 1], x[b, :n])


@pytest.mark.parametrize("frontend", ["fbank", "waveform"])
def test_output_shapes_rates_and_layers(frontend):
    model = build_encoder({"preset": "bimamba-xs", "frontend": frontend}).eval()
    x, lengths = make_batch(frontend)
    with torch.no_grad():
        out = model(x, lengths, return_layers=True)
    t = int(out.lengths.max())
    assert out.hidden.shape == (2, t, 128)
    assert len(out.layers) == 4 and all(layer.shape == (2, t, 128) for layer in out.layers)
    assert model(x, lengths).layers is None
    assert model.frame_rate_hz == 50.0 and model.output_dim == 128
    assert (model.input_rate_hz, model.input_dim) == ((100.0, 80) if frontend == "fbank" else (16000.0, 1))
    assert out.hidden[1, out.lengths[1] :].abs().max() == 0


def test_backward_and_adam_reduce_a_simple_loss():
    torch.manual_seed(0)
    model = build_encoder("bimamba-xs").train()
    x, lengths = make_batch("fbank")
    target = torch.randn(model.output_dim)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        out = model(x, lengths)
        valid = ~make_pad_mask(out.lengths, out.hidden.size(1))
        loss = ((out.hidden - target) ** 2).mean(-1)[valid].mean()
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def count(spec, frontend_too: bool = True) -> int:
    with torch.device("meta"):
        model = build_encoder(spec)
    skip = 0 if frontend_too else sum(p.numel() for p in model.frontend.parameters())
    return sum(p.numel() for p in model.parameters()) - skip


def test_parameter_counts_match_audio_mamba():
    # AuM Small is about 25M; its blocks come to 25.0M here (+0.25M for the fbank front end)
    assert abs(count("bimamba-small", frontend_too=False) - 25.0e6) / 25.0e6 < 0.02
    assert count("bimamba-tiny", frontend_too=False) < 7.5e6
    assert count("bimamba-xs") < 2e6


def test_presets_are_registered():
    assert {"bimamba-tiny", "bimamba-small", "bimamba-xs"} <= set(PRESETS) <= set(preset_names())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fvcore_can_trace_the_tiny_model():
    from fvcore.nn import FlopCountAnalysis

    model = build_encoder("bimamba-xs").eval()
    x, lengths = torch.randn(2, 61, 80), torch.tensor([61, 45])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flops = FlopCountAnalysis(HiddenOnly(model), (x, lengths))
        flops.unsupported_ops_warnings(False)
        assert flops.total() > 0
        # the scan is opaque to fvcore: it shows up as one Python op per branch and layer
        assert flops.unsupported_ops().get("prim::PythonOp.SelectiveScanFn") == 8


def test_bad_configs_raise_user_errors():
    with pytest.raises(SpeechBudgetError, match="frontend"):
        BiMambaEncoder(dim=16, layers=1, frontend="mfcc")
    with pytest.raises(SpeechBudgetError, match="positive"):
        BiMambaEncoder(dim=16, layers=0)
    with pytest.raises(SpeechBudgetError, match="expects features"):
        BiMambaEncoder(dim=16, layers=1)(torch.randn(1, 30, 40), torch.tensor([30]))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [1, 3, 9])
def test_depthwise_conv_over_time_values_and_gradients(reverse, length):
    """The (B, T, D) depthwise conv with its hand-written backward: values equal Conv1d on the
    (flipped, if ``reverse``) sequence, gradients pass gradcheck, including T shorter than the kernel."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 5, 4, groups=5, padding=3).double()
    x = torch.randn(2, length, 5, dtype=torch.float64, requires_grad=True)
    flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
    expected = flip(conv(flip(x).transpose(1, 2))[..., :length].transpose(1, 2))
    got = DepthwiseConvTime.apply(x, conv.weight, conv.bias, reverse)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x, w, b: DepthwiseConvTime.apply(x, w, b, reverse), (x, conv.weight, conv.bias)
    )
