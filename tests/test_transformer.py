"""HuBERT-style Transformer encoder: padding invariance, shapes, training, sizes, tracing."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import HiddenOnly
from encoder_checks import assert_padding_invariant, make_batch, with_junk_padding

from speechbudget.errors import SpeechBudgetError
from speechbudget.models.base import make_pad_mask
from speechbudget.models.presets import build_encoder, preset_names
from speechbudget.models.transformer import PRESETS, ConvPositionEmbedding, TransformerEncoder

torch.set_num_threads(1)

TINY = ["transformer-tiny", "transformer-tiny-slim", "transformer-tiny-wide"]


@pytest.mark.parametrize("frontend", ["fbank", "waveform"])
def test_padding_does_not_leak_into_real_frames(frontend):
    torch.manual_seed(0)
    model = build_encoder({"preset": "transformer-tiny", "frontend": frontend}).eval()
    assert_padding_invariant(model, frontend)


@pytest.mark.parametrize("preset", TINY[1:])
@pytest.mark.parametrize("norm_first", [True, False])
def test_padding_invariance_other_shapes_and_post_ln(preset, norm_first):
    torch.manual_seed(0)
    model = build_encoder({"preset": preset, "norm_first": norm_first}).eval()
    assert_padding_invariant(model, "fbank")


def test_padded_frames_would_leak_without_the_key_mask():
    """Guards the invariance test itself: attending to junk frames must show up above 1e-5."""
    torch.manual_seed(0)
    model = build_encoder("transformer-tiny").eval()
    x, lengths = make_batch("fbank")
    junk_x = with_junk_padding(x, lengths, 40)
    with torch.no_grad():
        ref = model(x, lengths).hidden
        full = torch.full_like(lengths, junk_x.size(1))
        leaky = model(junk_x, full).hidden  # treat the junk as real frames
    assert (ref[0, :50] - leaky[0, :50]).abs().max() > 1e-3


@pytest.mark.parametrize("frontend", ["fbank", "waveform"])
def test_output_shapes_rates_and_layers(frontend):
    model = build_encoder({"preset": "transformer-tiny", "frontend": frontend}).eval()
    x, lengths = make_batch(frontend)
    with torch.no_grad():
        out = model(x, lengths, return_layers=True)
        plain = model(x, lengths)
    t = int(out.lengths.max())
    assert out.hidden.shape == (2, t, 192)
    assert len(out.layers) == 4 and all(layer.shape == (2, t, 192) for layer in out.layers)
    assert plain.layers is None
    assert model.output_dim == 192 and model.frame_rate_hz == 50.0
    assert (model.input_rate_hz, model.input_dim) == ((100.0, 80) if frontend == "fbank" else (16000.0, 1))
    # 50 Hz output: about (input seconds) * 50 frames
    seconds = lengths.double() / model.input_rate_hz
    assert ((out.lengths - seconds * 50).abs() <= 2).all()
    # padded output frames are zero, so consumers that forget the mask get zeros, not junk
    assert out.hidden[1, out.lengths[1] :].abs().max() == 0


@pytest.mark.parametrize("kernel", [127, 128])
def test_position_conv_keeps_length_for_odd_and_even_kernels(kernel):
    pos = ConvPositionEmbedding(32, kernel=kernel, groups=4, weight_norm=kernel % 2 == 0)
    x = torch.randn(2, 50, 32)
    assert pos(x, torch.zeros(2, 50, dtype=torch.bool)).shape == x.shape


def test_empty_utterance_gives_finite_outputs():
    model = build_encoder("transformer-tiny").eval()
    x = torch.randn(2, 60, 80)
    with torch.no_grad():
        out = model(x, torch.tensor([60, 2]))  # 2 fbank frames -> 0 output frames
    assert out.lengths.tolist()[1] == 0
    assert torch.isfinite(out.hidden).all()


def test_backward_and_adam_reduce_a_simple_loss():
    torch.manual_seed(0)
    model = build_encoder({"preset": "transformer-tiny", "dropout": 0.0, "attention_dropout": 0.0}).train()
    x, lengths = make_batch("fbank")
    target = torch.randn(model.output_dim)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        out = model(x, lengths)
        valid = ~make_pad_mask(out.lengths, out.hidden.size(1))
        loss = ((out.hidden - target) ** 2).mean(-1)[valid].mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def count(spec) -> int:
    with torch.device("meta"):  # no memory, no init time
        model = build_encoder(spec)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_reference_models():
    # HuBERT Base (waveform CNN + 12 x 768) is 94.7M in fairseq, counting its prediction head;
    # the encoder alone comes to 94.4M here.
    base_wave = count({"preset": "transformer-base", "frontend": "waveform"})
    assert abs(base_wave - 94.7e6) / 94.7e6 < 0.01
    assert abs(count("transformer-base") - 90.27e6) / 90.27e6 < 0.01  # fbank front end
    # slim (deep, narrow) and small (few wide layers) have the same size
    small, slim = count("transformer-small"), count("transformer-slim")
    assert abs(slim - small) / small < 0.02
    assert PRESETS["transformer-slim"]["layers"] == 4 * PRESETS["transformer-small"]["layers"]
    tiny = [count(name) for name in TINY]
    assert max(tiny) < 3e6 and (max(tiny) - min(tiny)) / min(tiny) < 0.1


def test_presets_are_registered():
    names = set(preset_names())
    assert set(PRESETS) <= names
    assert {"transformer-base", "transformer-small", "transformer-slim"} <= names


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fvcore_can_trace_the_tiny_model():
    from fvcore.nn import FlopCountAnalysis

    model = build_encoder("transformer-tiny").eval()
    x, lengths = make_batch("fbank")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flops = FlopCountAnalysis(HiddenOnly(model), (x, lengths))
        flops.unsupported_ops_warnings(False)
        assert flops.total() > 0


@pytest.mark.parametrize(
    "config, message",
    [
        ({"frontend": "mfcc"}, "frontend"),
        ({"dim": 100, "heads": 3}, "divisible by heads"),
        ({"dim": 96, "heads": 4, "pos_conv_groups": 5}, "pos_conv_groups"),
        ({"frontend": "waveform", "input_dim": 80}, "mono"),
    ],
)
def test_bad_configs_raise_user_errors(config, message):
    with pytest.raises(SpeechBudgetError, match=message):
        TransformerEncoder(**{"dim": 96, "layers": 1, "heads": 4, "ffn_dim": 8, **config})


def test_wrong_feature_dim_raises_user_error():
    model = build_encoder("transformer-tiny")
    with pytest.raises(SpeechBudgetError, match="expects features"):
        model(torch.randn(1, 50, 40), torch.tensor([50]))


def test_unknown_config_key_raises_user_error():
    with pytest.raises(SpeechBudgetError):
        build_encoder({"preset": "transformer-tiny", "num_layers": 3})
