"""The dispatching selective scan (compiled CPU kernel, mamba_ssm on CUDA, PyTorch fallback)
against the sequential oracle, computed in float64."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speechbudget.cost.flops import count_macs
from speechbudget.models import scan_cpu
from speechbudget.models.selective_scan import (
    scan_backend,
    selective_scan,
    selective_scan_macs,
    selective_scan_reference,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None, reason="no g++: the compiled scan cannot build"
)


def make_inputs(batch, dim, state, length, seed=0, delta_scale=1.0, a_scale=1.0, pad=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u = rand(batch, dim, length)
    delta = F.softplus(rand(batch, dim, length)) * delta_scale
    if pad:  # the last item is padded: delta 0 there, as BiMamba does
        delta[-1, :, length - pad :] = 0.0
    A = -torch.exp(rand(dim, state)) * a_scale
    B, C = rand(batch, state, length), rand(batch, state, length)
    D, z = rand(dim), rand(batch, dim, length)
    return [t.to(dtype) for t in (u, delta, A, B, C, D, z)]


def value_and_grads(fn, inputs, weights):
    xs = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*xs)
    grads = torch.autograd.grad((y * weights.to(y.dtype)).sum(), xs)
    return y.detach().double(), [g.double() for g in grads]


def assert_matches_oracle(inputs, tol):
    """Forward and every input gradient within ``tol`` (relative to max(1, the largest entry))."""
    weights = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_ref, g_ref = value_and_grads(selective_scan_reference, [t.double() for t in inputs], weights)
    y, g = value_and_grads(selective_scan, inputs, weights)
    assert (y - y_ref).abs().max() <= tol * max(1.0, y_ref.abs().max().item())
    for name, a, b in zip("u delta A B C D z".split(), g_ref, g):
        assert (a - b).abs().max() <= tol * max(1.0, a.abs().max().item()), name


@needs_compiler
def test_cpu_uses_the_compiled_kernel():
    assert scan_backend(torch.zeros(1, 1, 1)) == "cpp"
    assert scan_backend(torch.zeros(1, 1, 1, dtype=torch.bfloat16)) == "cpp"  # scanned in float32
    assert scan_backend(torch.zeros(1, 1, 1, dtype=torch.float64)) == "cpp"


@needs_compiler
@pytest.mark.parametrize(
    "batch, dim, state, length, pad",
    [(1, 1, 1, 1, 0), (2, 5, 16, 37, 0), (3, 7, 5, 64, 20), (2, 4, 17, 50, 49), (1, 3, 40, 9, 0)],
)
def test_compiled_scan_matches_oracle_fp32(batch, dim, state, length, pad):
    assert_matches_oracle(make_inputs(batch, dim, state, length, pad=pad), 1e-5)


@needs_compiler
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_scan_matches_oracle_fp64_random_shapes(seed):
    g = torch.Generator().manual_seed(100 + seed)
    batch, dim, state, length = (
        int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in [(1, 4), (1, 9), (1, 34), (1, 80)]
    )
    assert_matches_oracle(make_inputs(batch, dim, state, length, seed=seed, dtype=torch.float64), 1e-10)


@needs_compiler
def test_compiled_scan_very_long_sequence():
    assert_matches_oracle(make_inputs(1, 2, 16, 20000, delta_scale=0.01, pad=3000), 1e-5)


@needs_compiler
@pytest.mark.parametrize("delta_scale, a_scale", [(30.0, 1.0), (5.0, 50.0)])
def test_compiled_scan_very_fast_decays(delta_scale, a_scale):
    """delta * A down to about -1e4: exp underflows to 0; nothing may overflow or turn NaN."""
    inputs = make_inputs(2, 4, 16, 300, delta_scale=delta_scale, a_scale=a_scale)
    assert_matches_oracle(inputs, 1e-5)


@needs_compiler
def test_views_with_odd_offsets_and_strides():
    """Inputs that are views (offset storage, transposed) give the same result as fresh tensors."""
    inputs = make_inputs(2, 3, 16, 11)
    views = []
    for t in inputs:
        big = torch.zeros(t.numel() + 3)
        big[3:] = t.reshape(-1)
        views.append(big[3:].view_as(t))  # contiguous, storage offset of 12 bytes
    views[3] = inputs[3].transpose(1, 2).contiguous().transpose(1, 2)  # B: non-contiguous
    assert torch.equal(selective_scan(*views), selective_scan(*inputs))


@needs_compiler
def test_threads_split_rows_without_changing_results():
    u, delta, A, B, C, _, _ = make_inputs(3, 5, 16, 40)
    gy = torch.randn_like(u)
    one = scan_cpu.scan_backward(u, delta, A, B, C, gy, threads=1)[:5]
    three = scan_cpu.scan_backward(u, delta, A, B, C, gy, threads=3)[:5]
    for a, b in zip(one, three):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(
        scan_cpu.scan_forward(u, delta, A, B, C, 1)[0], scan_cpu.scan_forward(u, delta, A, B, C, 3)[0]
    )


def _time_major(t):
    return t.transpose(1, 2).contiguous()


def assert_time_major_matches_oracle(inputs, reverse, tol):
    """``time_major`` (B, L, D) inputs, ``reverse`` time: forward and every input gradient equal the
    oracle run on the (B, D, L) inputs with time flipped before and after."""
    u, delta, A, B, C, D, z = inputs
    flip = (lambda t: t.flip(-1)) if reverse else (lambda t: t)

    def oracle(u, delta, A, B, C, D, z):
        y = selective_scan_reference(*map(flip, (u, delta)), A, *map(flip, (B, C)), D=D, z=flip(z))
        return flip(y)

    def ours(u, delta, A, B, C, D, z):
        tm = [_time_major(t) for t in (u, delta, B, C, z)]
        y = selective_scan(tm[0], tm[1], A, tm[2], tm[3], D=D, z=tm[4], time_major=True, reverse=reverse)
        return y.transpose(1, 2)

    weights = torch.randn(u.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_ref, g_ref = value_and_grads(oracle, [t.double() for t in inputs], weights)
    y, g = value_and_grads(ours, inputs, weights)
    assert (y - y_ref).abs().max() <= tol * max(1.0, y_ref.abs().max().item())
    for name, a, b in zip("u delta A B C D z".split(), g_ref, g):
        assert (a - b).abs().max() <= tol * max(1.0, a.abs().max().item()), name


@needs_compiler
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "batch, dim, state, length, pad, dtype, tol",
    [
        (2, 5, 16, 37, 0, torch.float32, 1e-5),
        (3, 7, 5, 64, 20, torch.float32, 1e-5),
        (2, 4, 17, 50, 49, torch.float64, 1e-10),
        (1, 3, 40, 9, 0, torch.float64, 1e-10),
    ],
)
def test_time_major_and_reverse_match_oracle(batch, dim, state, length, pad, dtype, tol, reverse):
    """The layout BiMamba uses: (B, L, D) rows read with a stride, the backward direction scanned
    from the last frame (trailing padding has delta 0, so the state is 0 until real frames)."""
    inputs = make_inputs(batch, dim, state, length, seed=length, pad=pad, dtype=dtype)
    assert_time_major_matches_oracle(inputs, reverse, tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_time_major_and_reverse_on_the_pytorch_path(reverse):
    """More states than the kernel takes (MAX_STATE) run the chunked PyTorch scan: same contract."""
    inputs = make_inputs(2, 3, scan_cpu.MAX_STATE + 1, 23, pad=5, dtype=torch.float64)
    assert_time_major_matches_oracle(inputs, reverse, 1e-10)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("state", [16, scan_cpu.MAX_STATE + 1])  # compiled kernel, PyTorch path
def test_lengths_act_as_zero_delta_on_padding(reverse, state):
    """``lengths``: frames past each length behave as if their delta were 0 (values and all
    gradients, delta's being 0 there), without the caller masking delta."""
    u, delta, A, B, C, D, z = (_time_major(t) if t.dim() == 3 else t for t in make_inputs(3, 4, state, 30))
    lengths = torch.tensor([30, 17, 1])
    pad = (torch.arange(30).unsqueeze(0) >= lengths.unsqueeze(1)).unsqueeze(-1)
    weights = torch.randn(u.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inputs = [u, delta, A, B, C, D]

    def masked(u, delta, A, B, C, D):
        delta = delta.masked_fill(pad, 0.0)
        return selective_scan(u, delta, A, B, C, D=D, time_major=True, reverse=reverse)

    def ours(u, delta, A, B, C, D):
        return selective_scan(u, delta, A, B, C, D=D, time_major=True, reverse=reverse, lengths=lengths)

    y_ref, g_ref = value_and_grads(masked, inputs, weights)
    y, g = value_and_grads(ours, inputs, weights)
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for name, a, b in zip("u delta A B C D".split(), g_ref, g):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), name
    assert g[1][pad.expand_as(g[1])].abs().max() == 0


@needs_compiler
def test_time_major_reverse_threads_split_rows_without_changing_results():
    u, delta, A, B, C, D, _ = (_time_major(t) if t.dim() == 3 else t for t in make_inputs(3, 5, 16, 40))
    gy = torch.randn_like(u)
    kw = {"time_major": True, "reverse": True, "D": D}
    one = scan_cpu.scan_backward(u, delta, A, B, C, gy, threads=1, **kw)
    three = scan_cpu.scan_backward(u, delta, A, B, C, gy, threads=3, **kw)
    for a, b in zip(one, three):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(
        scan_cpu.scan_forward(u, delta, A, B, C, 1, **kw)[0],
        scan_cpu.scan_forward(u, delta, A, B, C, 3, **kw)[0],
    )


@needs_compiler
def test_autocast_still_scans_in_float32():
    inputs = make_inputs(2, 5, 16, 30)
    plain = selective_scan(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = selective_scan(*inputs)
        from_bf16 = selective_scan(*(t.bfloat16() for t in inputs))
    assert under.dtype == torch.float32 and torch.equal(under, plain)
    assert from_bf16.dtype == torch.bfloat16
    exact = selective_scan(*(t.bfloat16().float() for t in inputs))  # bf16 inputs, fp32 arithmetic
    assert torch.equal(from_bf16, exact.bfloat16())


def test_falls_back_to_pytorch_with_one_warning_when_the_build_fails(tmp_path):
    """A broken compiler: one warning line, the PyTorch scan, the same numbers as the oracle."""
    script = (
        "import torch, warnings, logging\n"
        "logging.basicConfig(format='%(levelname)s %(message)s')\n"
        "from speechbudget.models.selective_scan import selective_scan, selective_scan_reference, scan_backend\n"
        "g = torch.Generator().manual_seed(0)\n"
        "u, dl, z = (torch.rand(2, 3, 20, generator=g, dtype=torch.float64) for _ in range(3))\n"
        "A = -torch.rand(3, 4, generator=g, dtype=torch.float64)\n"
        "B, C = (torch.randn(2, 4, 20, generator=g, dtype=torch.float64) for _ in range(2))\n"
        "for _ in range(3):\n"
        "    y = selective_scan(u, dl, A, B, C, z=z)\n"
        "print(scan_backend(u), float((y - selective_scan_reference(u, dl, A, B, C, z=z)).abs().max()))\n"
    )
    env = dict(
        os.environ, CXX=str(tmp_path / "no-such-compiler"), SPEECHBUDGET_CACHE_DIR=str(tmp_path / "cache")
    )
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    backend, err = proc.stdout.split()
    assert backend == "torch" and float(err) < 1e-10
    notes = [line for line in proc.stderr.splitlines() if "selective scan" in line]
    assert len(notes) == 1 and "using the PyTorch scan" in notes[0], proc.stderr


class FunctionalScan(nn.Module):
    """Calls the scan as a function (no SelectiveScan module): the op handle must count it."""

    def forward(self, u, delta, A, B, C, D=None):
        return selective_scan(u, delta, A, B, C, D=D)


def test_flop_counter_counts_the_scan_op():
    u, delta, A, B, C, _, _ = make_inputs(2, 6, 16, 25)
    report = count_macs(FunctionalScan(), (u, delta, A, B, C))
    assert report.macs == selective_scan_macs(u.shape, 16, skip=False)
    assert not any("SelectiveScan" in op for op in report.unsupported)


def test_flop_counter_counts_the_skip_inside_the_scan_op():
    """The D skip runs inside the Function (in the compiled kernel's loop): counted there."""
    u, delta, A, B, C, D, _ = make_inputs(2, 6, 16, 25)
    report = count_macs(FunctionalScan(), (u, delta, A, B, C, D))
    assert report.macs == selective_scan_macs(u.shape, 16, skip=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_dispatch_matches_oracle():
    """On CUDA: mamba_ssm's kernel when importable, else the PyTorch scan; both match the oracle."""
    from speechbudget.models.selective_scan import _mamba_ssm_scan

    inputs = [t.cuda() for t in make_inputs(2, 8, 16, 64)]
    expected = "mamba_ssm" if _mamba_ssm_scan() is not None else "torch"
    assert scan_backend(inputs[0]) == expected
    weights = torch.randn(inputs[0].shape, dtype=torch.float64)
    y_ref, g_ref = value_and_grads(selective_scan_reference, [t.double().cpu() for t in inputs], weights)
    y, g = value_and_grads(selective_scan, inputs, weights.cuda())
    assert (y.cpu() - y_ref).abs().max() <= 1e-4 * max(1.0, y_ref.abs().max().item())
    for name, a, b in zip("u delta A B C D z".split(), g_ref, g):
        assert (a - b.cpu()).abs().max() <= 1e-4 * max(1.0, a.abs().max().item()), name


@needs_compiler
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("block", [1, 3, 16])
def test_time_blocks_do_not_change_results(reverse, block):
    """The kernel scans all of a thread's rows over one block of steps before the next (cache
    reuse); block edges must carry each row's state and adjoint exactly: the same values as one
    block over the whole length, with padding inside a block and lengths not a multiple of it,
    whether the backward recomputes the block starts or takes the forward's."""
    u, delta, A, B, C, D, _ = (_time_major(t) if t.dim() == 3 else t for t in make_inputs(3, 5, 16, 41))
    lengths = torch.tensor([41, 23, 2])
    gy = torch.randn(u.shape, generator=torch.Generator().manual_seed(3))
    kw = {"time_major": True, "reverse": reverse, "D": D, "lengths": lengths, "threads": 2}
    y_whole, _ = scan_cpu.scan_forward(u, delta, A, B, C, time_block=10**6, **kw)
    y, starts = scan_cpu.scan_forward(u, delta, A, B, C, time_block=block, keep_starts=True, **kw)
    assert torch.equal(y, y_whole)
    whole = scan_cpu.scan_backward(u, delta, A, B, C, gy, time_block=10**6, **kw)
    for given in (None, starts):
        blocks = scan_cpu.scan_backward(u, delta, A, B, C, gy, time_block=block, starts=given, **kw)
        for name, a, b in zip("u delta A B C".split(), whole, blocks):  # same sums in the same order
            assert torch.equal(a, b), name
        # D's gradient sums a row's blocks separately: rounding only
        assert (whole[5] - blocks[5]).abs().max() <= 1e-6 * whole[5].abs().max()
