"""The compiled Zipformer CPU kernels compute what the PyTorch path computes (fp32 to rounding,
checked against float64), for every thread count, and the model takes them on fp32 CPU input."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from speechbudget.models import zipformer_cpu
from speechbudget.models import zipformer_layers as zl
from speechbudget.models.presets import build_encoder

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the kernels cannot build")


@pytest.fixture
def torch_path(monkeypatch):
    """Run the layers on their PyTorch path (what SPEECHBUDGET_ZIPFORMER=torch does)."""

    def use_torch():
        monkeypatch.setattr(zipformer_cpu, "supports", lambda *tensors: False)

    return use_torch


def _attention_inputs(dtype=torch.float32, b=3, h=4, t=37, dq=8, dp=4):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, t, dq, generator=g, dtype=dtype)
    k = torch.randn(b, h, dq, t, generator=g, dtype=dtype)
    p = torch.randn(b, h, t, dp, generator=g, dtype=dtype)
    pos = torch.randn(1, h, dp, 2 * t - 1, generator=g, dtype=dtype)
    pad = torch.arange(t)[None, :] >= torch.tensor([t, t - 5, 11])[:, None]
    keep = (~pad[:, None, None, :]).to(dtype)
    grad = torch.randn(b, h, t, t, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, p, pos)], keep, grad


def _attention(inputs, keep, grad):
    """Weights, and gradients with the first head's copy taking a gradient of its own."""
    weights, head0 = zl._RelPosAttentionWeights.apply(*inputs, keep)
    assert torch.equal(head0, weights[:, 0])
    torch.autograd.backward([weights, head0], [grad, grad[:, 1].flip(-1)])
    grads = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    return weights.detach(), grads


@pytest.mark.parametrize("threads", [1, 3])
def test_attention_weights_match_float64(threads):
    assert zipformer_cpu.load() is not None
    inputs, keep, grad = _attention_inputs()
    inputs64 = [x.detach().double().requires_grad_() for x in inputs]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert zipformer_cpu.supports(*inputs, keep)
        weights, grads = _attention(inputs, keep, grad)
    finally:
        torch.set_num_threads(before)
    ref_weights, ref_grads = _attention(inputs64, keep.double(), grad.double())  # PyTorch path
    assert torch.allclose(weights.double(), ref_weights, atol=1e-6)
    assert (weights[2, :, :, 11:] == 0).all()  # padded keys get no weight
    for got, ref in zip(grads, ref_grads):
        assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_attention_weights_of_scores_far_below_the_mask_value_are_finite(monkeypatch):
    # a fine-tuning run (seed 2 of an FSDD fold) reached content scores below MASKED_SCORE
    # (-1000) on an unpadded utterance: the row maximum must be the scores', not the mask value's,
    # or every exp underflows to 0 and the weights are 0 / 0
    inputs, keep, grad = _attention_inputs()
    with torch.no_grad():
        inputs[0].copy_(inputs[0].abs() * 400.0)  # q >= 0, k <= 0: content scores of -several thousand
        inputs[1].copy_(-inputs[1].abs())
    assert ((inputs[0] @ inputs[1])[0] < -1000).float().mean() > 0.9  # utterance 0 has no padding
    weights, grads = _attention(inputs, keep, grad)
    assert torch.isfinite(weights).all() and all(torch.isfinite(g).all() for g in grads)
    monkeypatch.setattr(zipformer_cpu, "supports", lambda *tensors: False)
    ref_weights, _ = _attention(inputs, keep, grad)  # the PyTorch ops, same precision
    assert torch.allclose(weights, ref_weights, atol=1e-3)


def test_attention_weights_thread_count_changes_nothing():
    inputs, keep, grad = _attention_inputs(t=50)
    results = []
    before = torch.get_num_threads()
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        try:
            results.append(_attention(inputs, keep, grad))
        finally:
            torch.set_num_threads(before)
    for weights, grads in results[1:]:
        assert torch.equal(weights, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


@pytest.mark.parametrize("fn, shift, offset", [(zl.swoosh_l, 4.0, 0.035), (zl.swoosh_r, 1.0, 0.313261687)])
def test_swoosh_matches_float64(fn, shift, offset):
    x = torch.cat(
        [torch.randn(5, 7, 33) * 6, torch.tensor([-100.0, -20.0, 0.0, shift, 20.0, 100.0]).expand(5, 7, 6)],
        -1,
    )
    x = x.contiguous().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    grad = torch.randn_like(x)
    y = fn(x)
    y.backward(grad)
    ref = torch.nn.functional.softplus(x64 - shift) - 0.08 * x64 - offset
    ref.backward(grad.double())
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(x.grad.double(), x64.grad, rtol=1e-6, atol=1e-6)


def test_model_takes_the_kernels_and_agrees_with_the_pytorch_path(torch_path):
    """zipformer-tiny, fp32, padded batch: outputs and every gradient agree with its PyTorch ops."""
    torch.manual_seed(0)
    model = build_encoder("zipformer-tiny").train()
    x = torch.randn(3, 230, 80)
    lengths = torch.tensor([230, 180, 97])

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x, lengths)
        out.hidden.square().mean().backward()
        return out.hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    real = zipformer_cpu.relpos_softmax_
    zipformer_cpu.relpos_softmax_ = lambda *a: calls.append(1) or real(*a)
    try:
        hidden, grads = run()
    finally:
        zipformer_cpu.relpos_softmax_ = real
    assert calls, "the compiled attention was not used on fp32 CPU input"
    torch_path()
    ref_hidden, ref_grads = run()
    assert torch.allclose(hidden, ref_hidden, rtol=1e-4, atol=1e-5)
    # per tensor, relative to its own norm, with a floor for gradients that are differences of
    # near-equal terms (a downsampling softmax's two biases)
    total = torch.cat([g.flatten() for g in ref_grads.values()]).norm().item()
    for name, ref in ref_grads.items():
        assert (grads[name] - ref).norm().item() <= 1e-3 * ref.norm().item() + 1e-6 * total, name


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("length, kernel", [(41, 31), (9, 15), (1, 31)])  # shorter than the kernel too
def test_depthwise_convolution_matches_float64(threads, length, kernel):
    torch.manual_seed(0)
    conv = zl.ConvModule(24, kernel)
    x = torch.randn(3, length, 24, requires_grad=True)
    grad = torch.randn(3, length, 24)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = conv._depthwise_over_time(x)
        y.backward(grad)
    finally:
        torch.set_num_threads(before)
    w = conv.depthwise.weight.detach().double().requires_grad_()
    b = conv.depthwise.bias.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    ref = torch.nn.functional.conv1d(x64.transpose(1, 2), w, b, padding=kernel // 2, groups=24).transpose(
        1, 2
    )
    ref.backward(grad.double())
    for got, want in [
        (y, ref),
        (x.grad, x64.grad),
        (conv.depthwise.weight.grad, w.grad),
        (conv.depthwise.bias.grad, b.grad),
    ]:
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


_SHARES = """
import sys, torch
from speechbudget.models import zipformer_layers as zl
torch.manual_seed(0)
conv = zl.ConvModule(24, 15)
x = torch.randn(3, 41, 24, requires_grad=True)
torch.set_num_threads(int(sys.argv[1]))
conv._depthwise_over_time(x).backward(torch.randn(3, 41, 24))
torch.save([x.grad, conv.depthwise.weight.grad, conv.depthwise.bias.grad], sys.argv[2])
"""


def test_every_share_runs_when_openmp_gives_fewer_threads(tmp_path):
    # kernels split work into `threads` shares on PyTorch's OpenMP threads; with fewer threads than
    # shares (OMP_THREAD_LIMIT, a busy pool) each thread must take several shares, and the per-share
    # scratch (the depthwise backward's weight gradient) must come out the same
    def grads(threads, **env):
        out = tmp_path / f"g{threads}{len(env)}.pt"
        subprocess.run(
            [sys.executable, "-c", _SHARES, str(threads), str(out)], check=True, env={**os.environ, **env}
        )
        return torch.load(out)

    full = grads(3)
    limited = grads(3, OMP_THREAD_LIMIT="1")
    assert all(torch.equal(a, b) for a, b in zip(full, limited))
