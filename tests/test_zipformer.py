"""Zipformer: reference model sizes, padding never leaks, layer outputs, learning, FLOP tracing."""

import pytest
import torch

from speechbudget.errors import SpeechBudgetError
from speechbudget.models.base import EncoderOutput, make_pad_mask
from speechbudget.models.zipformer import PRESETS, Zipformer, build
from speechbudget.models.zipformer_layers import Downsample, rel_to_abs, swoosh_l, swoosh_r

torch.set_num_threads(1)

# Encoder-only parameter counts of icefall's Zipformer2 (frontend excluded) for the same configs.
REFERENCE_PARAMS_M = {
    "zipformer-base": 89.87,
    "zipformer-large": 301.09,
    "zipformer-medium": 63.38,
    "zipformer-small": 21.38,
}


def _tiny(**overrides) -> Zipformer:
    torch.manual_seed(0)
    return build(**{**PRESETS["zipformer-tiny"], **overrides})


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS_M))
def test_param_counts_match_reference(name):
    with torch.device("meta"):  # no memory, no init time, even for the 300M model
        model = build(**PRESETS[name])
    ours = model.encoder_params() / 1e6
    assert abs(ours - REFERENCE_PARAMS_M[name]) / REFERENCE_PARAMS_M[name] < 0.02, ours
    frontend = sum(p.numel() for p in model.frontend.parameters())
    assert model.encoder_params() + frontend == sum(p.numel() for p in model.parameters())


def test_tiny_presets_are_small_and_comparable():
    for name in PRESETS:  # every preset builds
        with torch.device("meta"):
            assert build(**PRESETS[name]).frame_rate_hz == 50.0
    sizes = {}
    for name in ("zipformer-tiny", "zipformer-tiny-slim", "zipformer-tiny-wide"):
        with torch.device("meta"):
            sizes[name] = build(**PRESETS[name]).encoder_params()
    assert all(2e6 < n < 8e6 for n in sizes.values()), sizes
    assert max(sizes.values()) / min(sizes.values()) < 1.1, sizes
    depth = {n: sum(PRESETS[n]["num_layers"]) for n in sizes}
    assert depth["zipformer-tiny-wide"] < depth["zipformer-tiny"] < depth["zipformer-tiny-slim"]


def _inputs(frontend: str):
    """Two utterances with odd lengths at 50 Hz: a partial group at every downsampling level."""
    if frontend == "fbank":
        lengths = torch.tensor([157, 118])  # -> 77 and 57 frames at 50 Hz
        return torch.randn(2, 157, 80), lengths, 23
    lengths = torch.tensor([8720, 7000])  # 16 kHz samples -> 27 and 21 frames
    return torch.randn(2, 8720, 1), lengths, 1111


def _append_junk(x, lengths, extra):
    """Padded positions (old and new) get large random values, not zeros."""
    x = torch.cat([x, torch.zeros(x.size(0), extra, x.size(2))], dim=1).clone()
    for i, n in enumerate(lengths.tolist()):
        x[i, n:] = 50.0 * torch.randn_like(x[i, n:])
    return x


@pytest.mark.parametrize("frontend,out_ds", [("fbank", 1), ("fbank", 2), ("waveform", 1)])
def test_padding_never_leaks(frontend, out_ds):
    model = _tiny(frontend=frontend, output_downsampling=out_ds).eval()
    torch.manual_seed(1)
    x, lengths, extra = _inputs(frontend)
    with torch.no_grad():
        ref = model(x, lengths, return_layers=True)
        junk = model(_append_junk(x, lengths, extra), lengths, return_layers=True)
        alone = [model(x[i : i + 1, : int(n)], lengths[i : i + 1]) for i, n in enumerate(lengths)]
    assert torch.equal(ref.lengths, junk.lengths)
    assert junk.hidden.size(1) > ref.hidden.size(1)
    assert (model.frontend.output_lengths(lengths) % 2 == 1).all()
    for i, n in enumerate(ref.lengths.tolist()):
        assert (ref.hidden[i, :n] - junk.hidden[i, :n]).abs().max() < 1e-5
        assert (ref.hidden[i, :n] - alone[i].hidden[0, :n]).abs().max() < 1e-5
        for a, b in zip(ref.layers, junk.layers):
            assert (a[i, :n] - b[i, :n]).abs().max() < 1e-5
        assert (junk.hidden[i, n:] == 0).all()  # padded output frames are zeroed


def test_downsample_repeats_each_utterances_last_frame():
    ds = Downsample(4)
    with torch.no_grad():
        ds.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    x = torch.arange(12.0).reshape(1, 12, 1).repeat(2, 1, 1)
    out = ds(x, torch.tensor([12, 6]))
    w = ds.bias.softmax(0)
    assert out.shape == (2, 3, 1)
    # utterance 2 has frames 0..5: group 1 is frames 4, 5, 5, 5
    assert torch.allclose(out[1, 1, 0], (w * torch.tensor([4.0, 5.0, 5.0, 5.0])).sum())
    assert torch.equal(ds.output_lengths(torch.tensor([12, 6, 1])), torch.tensor([3, 2, 1]))


@pytest.mark.parametrize("out_ds", [1, 2])
def test_return_layers_shapes_and_rates(out_ds):
    model = _tiny(output_downsampling=out_ds).eval()
    x, lengths = torch.randn(2, 201, 80), torch.tensor([201, 150])  # 2 s of 100 Hz fbank
    with torch.no_grad():
        out = model(x, lengths, return_layers=True)
    assert isinstance(out, EncoderOutput)
    assert model.frame_rate_hz == 50.0 / out_ds and model.input_rate_hz == 100.0 and model.input_dim == 80
    b, t, d = out.hidden.shape
    assert (b, d) == (2, model.output_dim) and model.output_dim == max(model.dims)
    assert abs(t - 2.0 * model.frame_rate_hz) <= 2
    assert len(out.layers) == sum(model.num_layers) == len(model.layer_dims)
    for layer, dim in zip(out.layers, model.layer_dims):
        assert layer.shape == (2, t, dim)
    # the last stack's output is the first channels of the combined output
    assert torch.allclose(out.hidden[..., : model.dims[-1]], out.layers[-1])
    assert model(x, lengths).layers is None


def test_waveform_frontend_rates():
    model = _tiny(frontend="waveform")
    assert model.input_rate_hz == 16000.0 and model.input_dim == 1 and model.frame_rate_hz == 50.0
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 16000, 1), torch.tensor([16000]))
    assert out.hidden.shape[1] == out.lengths.item() == 49  # 1 s -> 49 frames, as wav2vec2


def test_backward_reaches_every_parameter_and_model_learns():
    """Regress a fixed random readout of the hidden states onto a projection of the input frames
    each output frame covers. The readout is frozen, so only the encoder can lower the loss."""
    model = _tiny().train()
    torch.manual_seed(2)
    x, lengths = torch.randn(2, 80, 80), torch.tensor([80, 61])
    readout = 0.05 * torch.randn(model.output_dim, 8)
    project = torch.randn(80, 8) / 40**0.5
    # plain Adam moves every weight by ~lr, so it needs a small lr with Zipformer's small inits
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for step in range(5):
        out = model(x, lengths)
        t = out.hidden.size(1)
        target = x[:, 1 : 2 * t + 1].reshape(2, t, 2, 80).mean(2) @ project
        real = ~make_pad_mask(out.lengths, t)
        loss = ((out.hidden @ readout - target) ** 2)[real].mean()
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, missing
            assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def _analytic_stack_macs(model: Zipformer, frames: int) -> int:
    """Multiply-adds of the stacks: linears, depthwise convs, and the attention products."""
    total = 0
    for stack in model.stacks:
        t = -(-frames // stack.factor)
        total += t * sum(m.weight.numel() for m in stack.modules() if isinstance(m, torch.nn.Linear))
        for blk in stack.blocks:
            aw, dim = blk.attn_weights, blk.norm.bias.numel()
            total += 2 * t * dim * blk.conv1.depthwise.kernel_size[0]
            total += aw.num_heads * t * t * aw.query_head_dim  # q . k
            total += aw.num_heads * t * (2 * t - 1) * aw.pos_head_dim  # p . pe for all offsets
            total += (2 * t - 1 - t) * aw.pos_proj.weight.numel()  # pos_proj runs on 2T-1 rows, not T
            total += 2 * t * t * blk.self_attn1.in_proj.out_features  # two self-attentions
            total += t * t * blk.nonlin_attn.out_proj.in_features  # non-linear attention
    return total


def test_fvcore_traces_and_counts_what_we_expect():
    import fvcore.nn as fvcore_nn

    model = _tiny().eval()
    x, lengths = torch.randn(1, 120, 80), torch.tensor([120])
    flops = fvcore_nn.FlopCountAnalysis(model, (x, lengths))
    flops.unsupported_ops_warnings(False)
    frames = int(model.frontend.output_lengths(lengths))
    assert flops.by_module()["stacks"] == _analytic_stack_macs(model, frames)
    assert flops.total() > flops.by_module()["stacks"]  # plus the frontend


def test_rel_to_abs_picks_offset_key_minus_query():
    t = 5
    by_offset = torch.arange(2 * t - 1.0).expand(2, 3, t, 2 * t - 1)  # value = offset index
    out = rel_to_abs(by_offset)
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    assert out.shape == (2, 3, t, t)
    assert torch.equal(out[1, 2], (j - i + t - 1).float())


def test_swoosh_shapes():
    x = torch.linspace(-10, 10, 101)
    assert abs(swoosh_r(torch.zeros(1)).item()) < 1e-6  # SwooshR(0) = 0 by construction
    assert (swoosh_l(x)[:10] > 0).all()  # negative inputs keep a small non-zero slope (not dead)
    assert torch.allclose(swoosh_l(torch.tensor(20.0)), torch.tensor(20 - 4 - 0.08 * 20 - 0.035), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dims=(64, 96)),  # wrong number of stacks
        dict(kernel_sizes=30),
        dict(output_downsampling=4),
        dict(frontend="mfcc"),
        dict(frontend="waveform", input_dim=80),
        dict(num_layers=(0, 1, 1, 1, 1, 1)),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs):
    with pytest.raises(SpeechBudgetError):
        _tiny(**kwargs)


def test_wrong_feature_dim_is_a_clear_error():
    with pytest.raises(SpeechBudgetError, match="input_dim"):
        _tiny()(torch.randn(1, 50, 40), torch.tensor([50]))


def test_utterance_cmn_makes_a_constant_level_change_invisible_and_ignores_padding():
    model, plain = _tiny(utterance_cmn=True).eval(), _tiny().eval()
    x, lengths = torch.randn(2, 150, 80), torch.tensor([150, 97])
    tilt = torch.linspace(-6.0, 3.0, 80)  # a quieter speaker through another microphone: per-bin offset
    shifted = x + tilt
    shifted[1, 97:] = 123.0  # padding holds anything: it must not enter the mean
    with torch.no_grad():
        a, b = model(x, lengths), model(shifted, lengths)
        assert torch.allclose(a.hidden[1, : b.lengths[1]], b.hidden[1, : b.lengths[1]], atol=1e-4)
        assert torch.allclose(a.hidden[0], b.hidden[0], atol=1e-4)
        assert (plain(x, lengths).hidden - plain(shifted, lengths).hidden).abs().max() > 0.1
    with pytest.raises(SpeechBudgetError, match="fbank"):
        _tiny(utterance_cmn=True, frontend="waveform")
