"""MAC counting: analytic counts, torch's FlopCounterMode as a second opinion, overrides, presets."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from speechbudget.cost.flops import count_macs, einsum_macs
from speechbudget.errors import SpeechBudgetError
from speechbudget.models.base import Encoder, EncoderOutput
from speechbudget.models.catalog import encoder_cost, training_flops_per_audio_second

torch.set_num_threads(1)


def close(a, b, tol=0.02):
    return abs(a - b) <= tol * abs(b)


def torch_macs(model, inputs):
    """torch's own counter, which counts 2 FLOPs per multiply-add."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() / 2


class LinearStack(nn.Module):
    def __init__(self, dims=(16, 64, 32, 8)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.norm = nn.LayerNorm(dims[-1])  # elementwise: must add nothing

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.norm(x)


class ConvNet(nn.Module):
    """Same-padded convs, so every count is exactly linear in T."""

    def __init__(self, d=24):
        super().__init__()
        self.pw = nn.Conv1d(d, 2 * d, 1)
        self.dw = nn.Conv1d(2 * d, 2 * d, 7, padding=3, groups=2 * d)
        self.full = nn.Conv1d(2 * d, d, 3, padding=1)

    def forward(self, x):  # (B, d, T)
        return self.full(F.silu(self.dw(self.pw(x))))


class SDPAAttention(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def test_linear_stack_matches_analytic_and_torch():
    x = torch.randn(3, 20, 16)
    report = count_macs(LinearStack(), (x,))
    analytic = 3 * 20 * (16 * 64 + 64 * 32 + 32 * 8)
    assert close(report.macs, analytic)
    assert report.flops == 2 * report.macs
    assert report.macs == torch_macs(LinearStack(), (x,))
    assert report.by_module["layers.0"] == 3 * 20 * 16 * 64
    assert report.unsupported == {}


def test_conv1d_dense_strided_and_depthwise():
    x = torch.randn(2, 24, 50)
    report = count_macs(ConvNet(), (x,))
    pw, dw, full = 2 * 50 * 24 * 48, 2 * 50 * 48 * 7, 2 * 50 * 48 * 24 * 3
    assert close(report.by_module["dw"], dw) and close(report.by_module["pw"], pw)
    assert close(report.macs, pw + dw + full)
    assert report.macs == torch_macs(ConvNet(), (x,))

    strided = nn.Conv1d(1, 32, 10, stride=5, bias=False)
    wav = torch.randn(1, 1, 1600)
    out_len = (1600 - 10) // 5 + 1
    assert close(count_macs(strided, (wav,)).macs, out_len * 32 * 10)


def test_conv2d_subsampling_style():
    conv = nn.Conv2d(8, 16, 3, stride=(2, 2), padding=(0, 1))
    x = torch.randn(2, 8, 41, 40)
    t_out, f_out = (41 - 3) // 2 + 1, (40 + 2 - 3) // 2 + 1
    analytic = 2 * 16 * t_out * f_out * 8 * 9
    assert close(count_macs(conv, (x,)).macs, analytic)
    assert count_macs(conv, (x,)).macs == torch_macs(conv, (x,))


def test_sdpa_handle_counts_dense_attention():
    b, t, d, h = 2, 30, 32, 4
    x = torch.randn(b, t, d)
    attn = SDPAAttention(d, h)
    proj = b * t * d * 3 * d + b * t * d * d
    scores = b * h * t * t * (d // h + d // h)
    report = count_macs(attn, (x,))
    assert report.unsupported == {}
    assert close(report.macs, proj + scores)
    # torch's counter gives 0 for SDPA on CPU: the gap is exactly our attention term
    assert close(report.macs - torch_macs(attn, (x,)), scores)
    # masks are counted dense
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    assert count_macs(attn, (x, mask)).macs == report.macs


def test_matmul_family_and_einsum():
    class Ops(nn.Module):
        def forward(self, a, w, c, v):
            y = a @ w  # (T, D) @ (B, D, E): the broadcast batch sits on the second operand
            y = torch.baddbmm(c, y, y.transpose(1, 2))
            y = torch.einsum("btd,bsd->bts", y, y)
            return torch.einsum("...ij,jk,k->...i", y, y[0], v) + (a @ a[0]).sum()

    b, t, d, e = 2, 6, 5, 7
    a, w, c, v = torch.randn(t, d), torch.randn(b, d, e), torch.randn(b, t, t), torch.randn(t)
    report = count_macs(Ops(), (a, w, c, v))
    expected = b * t * d * e + b * t * t * e + b * t * t * t + (b * t * t * t + b * t * t) + t * d
    assert report.macs == expected
    assert report.unsupported == {}
    # torch's counter has no rule for matrix-vector products (aten::mv): all else agrees
    assert report.macs - t * d == torch_macs(Ops(), (a, w, c, v))


def test_einsum_macs_directly():
    assert einsum_macs("bhld,bhmd->bhlm", [[2, 4, 10, 8], [2, 4, 12, 8]]) == 2 * 4 * 10 * 12 * 8
    assert einsum_macs("ij,jk", [[3, 4], [4, 5]]) == 60
    assert einsum_macs("ii->i", [[5, 5]]) == 0


def test_unsupported_ops_are_reported():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, 8, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    report = count_macs(Recurrent(), (torch.randn(1, 5, 8),))
    assert report.unsupported == {"aten::lstm": 1}


class _Square(torch.autograd.Function):
    """A custom op fvcore cannot see into (shows up as prim::PythonOp)."""

    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, g):
        return g


class Costed(nn.Module):
    """States its own cost; the Linear inside must not be added on top."""

    def __init__(self, d=16):
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.seen = []

    def forward(self, x, scale: float = 1.0):
        return _Square.apply(self.proj(x)) * scale

    def flop_macs(self, inputs, output):
        self.seen.append(len(inputs))
        return 1000 * inputs[0].shape[1]


def test_flop_macs_override_replaces_subtree():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Costed()
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            x = self.block(x)
            x = self.block(x, scale=0.5)  # called twice: both calls count
            return self.head(x)

    model = Outer()
    x = torch.randn(2, 7, 16)
    report = count_macs(model, (x,))
    head = 2 * 7 * 16 * 4
    assert report.macs == 2 * 7000 + head
    assert report.by_module == {"block": 14000, "head": head}
    assert report.unsupported == {}  # the PythonOp lives inside the overridden subtree
    assert model.block.seen == [2, 2]  # keyword and default arguments bound into place

    alone = count_macs(Costed(), (x,))
    assert alone.macs == 7000 and alone.unsupported == {}
    without = count_macs(nn.Sequential(Costed().proj), (x,))
    assert without.macs == 2 * 7 * 16 * 16 != alone.macs


def test_counts_scale_linearly_with_length():
    short = count_macs(ConvNet(), (torch.randn(1, 24, 40),)).macs
    long = count_macs(ConvNet(), (torch.randn(1, 24, 160),)).macs
    assert long == 4 * short
    lin_short = count_macs(LinearStack(), (torch.randn(1, 40, 16),)).macs
    assert count_macs(LinearStack(), (torch.randn(1, 120, 16),)).macs == 3 * lin_short


class ToyEncoder(Encoder):
    """Linear per input frame then stride-2 conv: cost known in closed form."""

    frame_rate_hz = 50.0

    def __init__(self, input_dim=80, input_rate_hz=100.0, dim=32):
        super().__init__()
        self.input_dim, self.input_rate_hz, self.output_dim = input_dim, input_rate_hz, dim
        self.proj = nn.Linear(input_dim, dim)
        self.conv = nn.Conv1d(dim, dim, 2, stride=2)

    def forward(self, features, lengths, return_layers=False):
        x = self.conv(self.proj(features).transpose(1, 2)).transpose(1, 2)
        return EncoderOutput(hidden=x, lengths=lengths // 2, layers=[x] if return_layers else None)

    def encoder_params(self):
        return sum(p.numel() for p in self.conv.parameters())

    @staticmethod
    def analytic_macs(frames, input_dim, dim=32):
        return frames * input_dim * dim + (frames // 2) * dim * dim * 2


def test_encoder_cost_fbank_and_waveform_inputs():
    cost = encoder_cost(ToyEncoder(), seconds=2.0)
    macs = ToyEncoder.analytic_macs(200, 80)
    assert close(cost["macs_per_audio_second"], macs / 2.0)
    assert close(cost["gflops_per_audio_second"], 2 * macs / 2.0 / 1e9)
    assert cost["params"] == sum(p.numel() for p in ToyEncoder().parameters())
    assert cost["encoder_params"] == 32 * 32 * 2 + 32
    assert cost["frame_rate_hz"] == 50.0 and cost["unsupported"] == {}
    assert close(sum(cost["by_module"].values()), cost["gflops_per_audio_second"])

    model = ToyEncoder(input_dim=1, input_rate_hz=16000.0).train()
    torch.manual_seed(3)
    expected_draw = torch.rand(1)
    torch.manual_seed(3)
    wave = encoder_cost(model, seconds=0.5, batch=2)
    assert torch.equal(torch.rand(1), expected_draw)  # the caller's RNG stream is untouched
    assert model.training  # and so is the model's mode
    assert close(wave["macs_per_audio_second"], ToyEncoder.analytic_macs(8000, 1) / 0.5)


def test_encoder_cost_rejects_bad_arguments():
    with pytest.raises(SpeechBudgetError):
        encoder_cost(ToyEncoder(), seconds=0)
    with pytest.raises(SpeechBudgetError):
        encoder_cost(ToyEncoder(), batch=0)


def test_encoder_cost_caches_per_config_and_seconds(monkeypatch, tmp_path):
    from speechbudget.cost import flops
    from speechbudget.models import catalog

    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path))  # no counts from earlier runs
    counted = []
    monkeypatch.setattr(
        catalog, "module_cost", lambda enc, *a: counted.append(enc) or flops.module_cost(enc, *a)
    )
    monkeypatch.setattr(catalog, "_COST_CACHE", {})
    one_layer = {"preset": "transformer-tiny", "layers": 1}
    first = encoder_cost(one_layer, seconds=1.0)
    first["by_module"].clear()  # callers get copies: mutating one must not touch the cache
    again = encoder_cost(one_layer, seconds=1.0)
    assert len(counted) == 1 and again["by_module"]
    encoder_cost(one_layer, seconds=2.0)
    encoder_cost({**one_layer, "layers": 2}, seconds=1.0)
    assert len(counted) == 3


def test_a_built_encoder_is_counted_once_per_config_and_parameter_shapes(monkeypatch, tmp_path):
    """Every training run counts its encoder; runs in one process (the folds, a run's fine-tune and
    scratch, the planner) share the count of an architecture, and a layer added in place is counted anew."""
    from speechbudget.cost import flops
    from speechbudget.models import catalog
    from speechbudget.models.presets import build_encoder

    counted = []

    def counting(encoder, *args):
        counted.append(encoder)
        return flops.module_cost(encoder, *args)

    monkeypatch.setattr(catalog, "module_cost", counting)
    monkeypatch.setattr(catalog, "_COST_CACHE", {})
    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path))
    a, b = build_encoder("zipformer-nano"), build_encoder({"preset": "zipformer-nano"})
    assert a.built_from == b.built_from
    first = encoder_cost(a, seconds=1.0)
    assert encoder_cost(b, seconds=1.0) == first == {**flops.module_cost(b, 1.0), "output_dim": 96}
    assert encoder_cost("zipformer-nano", seconds=1.0) == first  # the planner's look-up by name
    assert counted == [a]
    encoder_cost(b, seconds=2.0)
    b.extra = nn.Linear(4, 4)  # its shapes no longer those of the count
    encoder_cost(b, seconds=2.0)
    encoder_cost(ToyEncoder(), seconds=1.0)  # not built from a config: counted every call
    encoder_cost(ToyEncoder(), seconds=1.0)
    assert len(counted) == 5


def test_training_flops_are_three_forwards_plus_head():
    enc = ToyEncoder()
    forward = encoder_cost(enc, seconds=2.0)["gflops_per_audio_second"] * 1e9
    assert close(training_flops_per_audio_second(enc, seconds=2.0), 3 * forward)
    head = 256 * 500  # e.g. a 256-d projection onto 500 clusters per output frame
    with_head = training_flops_per_audio_second(enc, head_macs_per_frame=head, seconds=2.0)
    assert close(with_head, 3 * (forward + 2 * head * 50.0))


PRESETS = [("zipformer", "zipformer-tiny"), ("transformer", "transformer-tiny"), ("bimamba", "bimamba-xs")]


@pytest.mark.parametrize("family,name", PRESETS)
def test_presets_count_fully(family, name):
    cost = encoder_cost(name, seconds=1.0)
    assert cost["unsupported"] == {}, cost["unsupported"]
    assert cost["gflops_per_audio_second"] > 0
    assert cost["params"] > 0


def test_an_encoder_with_learned_positions_is_counted_on_the_longest_input_it_takes():
    """AuM with 128 frames of learned positions takes 1.28 s: counting it on 10 s raised (the Speech
    Commands recipe stopped at its first step); it is counted on 1.28 s, and says so."""
    from speechbudget.cost.flops import length_curve, module_cost
    from speechbudget.models.presets import build_encoder

    encoder = build_encoder({"preset": "aum-tiny", "max_frames": 128})
    assert encoder.max_input_frames == 128
    cost = module_cost(encoder, seconds=10.0)
    assert cost["seconds"] == pytest.approx(1.28) and cost["macs_per_audio_second"] > 0
    curve = length_curve(encoder)
    assert [sec for sec, _ in curve] == [0.25, 0.5, 1.0, 1.28]
    assert build_encoder("zipformer-tiny").max_input_frames is None
