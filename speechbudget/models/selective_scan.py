"""Selective scan (the S6 layer of Mamba), so BiMamba runs anywhere, fast where it can.

The recurrence, per batch ``b``, channel ``d`` and state ``n``::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = sum_n C_t[n] * h_t[n]  (+ D * u_t)  (* silu(z_t))

Shapes: ``u``, ``delta``, ``z``: (B, D, L); ``A``: (D, N); ``B``, ``C``: (B, N, L); ``D``: (D,).

:func:`selective_scan_reference` is the plain time loop (the test oracle). :func:`selective_scan`
dispatches (see :func:`scan_backend`):

* CUDA tensors and ``mamba-ssm`` importable (extra ``[cuda]``): its fused ``selective_scan_fn``.
* CPU, fp32/fp64: the compiled kernel of :mod:`.scan_cpu` (the time loop inside, the 16 states of
  a (batch, channel) row in one AVX-512 register, backward as the reverse scan recomputing the
  states). 13-20x faster than the chunked scan below (BENCHMARKS.md section 7).
* Otherwise (no compiler, other devices): the chunked pure-PyTorch scan, with a one-line warning
  when the compiled kernel could not be built.

The chunked PyTorch scan:

* Time is cut into chunks of ``T`` frames. Pass 1 runs all chunks *at once*, each from a zero
  state, in ``T`` vectorised steps; a loop over the ``L / T`` chunks then carries the true state
  across chunk borders, decayed by each chunk's ``exp(sum(delta) * A)``. Pass 2 reruns all chunks
  from their true start states, reading out ``y``. That is ``2 T + L / T`` Python steps instead of
  ``L`` (``T = ceil(sqrt(L / 2))`` by default), and the (B, D, L, N) states are never all in memory.
* Only ``exp(delta * A)`` with ``delta * A <= 0`` (for the usual ``A < 0``) is taken. The
  "cumsum of log-decays" trick ``exp(S_t) * cumsum(exp(-S_s) x_s)`` is avoided: ``exp(-S)``
  overflows float32 once a chunk decays by more than e^88. The Mamba-2 matmul form is avoided
  too: with S6's per-(d, n) decays its ``T x T`` decay matrix costs T times the states' memory.
* Backward is written by hand (:class:`SelectiveScanFn`): it saves only the inputs, recomputes
  the states, and runs the same chunked scan backwards in time for the state gradients. Autograd
  through the loops would keep several (B, D, L, N) tensors per layer alive, N = 16 times the
  activations of a Transformer block of the same width.

The scan always runs in float32 (or float64) even under autocast: a bf16 recurrence drifts.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..cost.flops import register_op_handle
from . import scan_cpu


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The sequential recurrence, one frame at a time. Slow but obviously right: the test oracle."""
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.size(1))
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        drive = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        h = decay * h + drive
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return _skip_and_gate(y, u, D, z)


def _skip_and_gate(y, u, D, z, time_major: bool = False):
    if D is not None:
        y = y + _per_channel(D, time_major) * u
    if z is not None:
        y = y * F.silu(z)
    return y


def default_chunk_size(length: int) -> int:
    """``ceil(sqrt(L / 2))`` minimises the number of Python steps ``2 T + L / T``."""
    return max(1, math.ceil(math.sqrt(length / 2)))


def _to_chunks(x: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """(B, C, L) -> time-major (n_chunks, chunk, B, C), zero-padded at the end of time.

    Zero ``delta`` on the padding makes its decay 1 and its drive 0: the state passes unchanged.
    """
    x = F.pad(x, (0, n_chunks * chunk - x.size(-1)))
    return x.permute(2, 0, 1).reshape(n_chunks, chunk, x.size(0), x.size(1))


def _from_chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`_to_chunks`: (n_chunks, chunk, B, C) -> (B, C, L)."""
    return x.reshape(-1, x.size(2), x.size(3))[:length].permute(1, 2, 0)


def _step(h, dl_t, x_t, m_t, A):
    """One step of ``h = exp(dl A) h + x m`` for every chunk at once: h (n_chunks, B, D, N)."""
    return torch.addcmul(torch.exp(dl_t.unsqueeze(-1) * A) * h, x_t.unsqueeze(-1), m_t.unsqueeze(-2))


def _chunk_starts(dl, x, m, A) -> torch.Tensor:
    """State entering each chunk of ``h_t = exp(dl_t A) h_{t-1} + x_t m_t`` (h before time = 0).

    ``dl``, ``x``: (n_chunks, T, B, D); ``m``: (n_chunks, T, B, N). Every chunk first runs from a
    zero state (all chunks in parallel), then a loop over chunks adds the carried-in state, decayed
    by the chunk's total ``exp(sum(dl) A) <= 1``.
    """
    n_chunks, chunk = dl.shape[:2]
    h = dl.new_zeros(n_chunks, dl.size(2), dl.size(3), A.size(1))
    for t in range(chunk):
        h = _step(h, dl[:, t], x[:, t], m[:, t], A)
    chunk_decay = torch.exp(dl.sum(1).unsqueeze(-1) * A)
    starts = torch.empty_like(h)
    carry = torch.zeros_like(h[0])
    for c in range(n_chunks):
        starts[c] = carry
        carry = chunk_decay[c] * carry + h[c]
    return starts


class SelectiveScanFn(torch.autograd.Function):
    """``y = C . h`` of the S6 recurrence, plus the skip ``D * u`` when ``D`` is given, with a
    memory-light hand-written backward.

    ``time_major``: ``u``, ``delta``, ``y`` are (B, L, D) and ``B``, ``C`` (B, L, N); ``reverse``:
    the recurrence runs from the last frame to the first; ``lengths`` (B,): frames from
    ``lengths[b]`` on are padding, their ``delta`` taken as 0 (and given gradient 0). The compiled
    kernel reads all of these directly and adds the skip inside its time loop; the PyTorch path
    masks, transposes and flips around the (B, D, L) scan.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk, time_major=False, reverse=False, D=None, lengths=None):
        ctx.compiled = _use_compiled(u, delta, A, B, C)
        ctx.chunk, ctx.time_major, ctx.reverse = chunk, time_major, reverse
        ctx.pad = None if ctx.compiled else _pad_mask(lengths, u, time_major)
        ctx.lengths = lengths
        with torch.autocast(u.device.type, enabled=False):
            if ctx.compiled:
                # the state at each time block's start spares the backward one recomputation
                kw = {"time_major": time_major, "reverse": reverse, "D": D, "lengths": lengths}
                keep = any(ctx.needs_input_grad)
                y, ctx.starts = scan_cpu.scan_forward(u, delta, A, B, C, keep_starts=keep, **kw)
            else:
                if ctx.pad is not None:
                    delta = delta.masked_fill(ctx.pad, 0.0)
                to = functools.partial(_canonical, time_major=time_major, reverse=reverse)
                back = functools.partial(_uncanonical, time_major=time_major, reverse=reverse)
                y = back(_scan_forward(to(u), to(delta), A, to(B), to(C), chunk))
                if D is not None:
                    y = y + _per_channel(D.to(y.dtype), time_major) * u
        ctx.save_for_backward(u, delta, A, B, C, D)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D = ctx.saved_tensors
        tm, rev = ctx.time_major, ctx.reverse
        with torch.autocast(u.device.type, enabled=False):
            if ctx.compiled:
                kw = {"time_major": tm, "reverse": rev, "D": D, "lengths": ctx.lengths, "starts": ctx.starts}
                grads = scan_cpu.scan_backward(u, delta, A, B, C, grad_y, **kw)
                ctx.starts = None
            else:
                to = functools.partial(_canonical, time_major=tm, reverse=rev)
                back = functools.partial(_uncanonical, time_major=tm, reverse=rev)
                du, dd, da, db, dc = _scan_backward(to(u), to(delta), A, to(B), to(C), to(grad_y), ctx.chunk)
                du, grad_d = back(du), None
                if D is not None:
                    du = du + _per_channel(D.to(du.dtype), tm) * grad_y
                    grad_d = (grad_y * u).sum((0, 1) if tm else (0, 2)).to(D.dtype)
                dd = back(dd)
                if ctx.pad is not None:
                    dd = dd.masked_fill(ctx.pad, 0.0)
                grads = (du, dd, da, back(db), back(dc), grad_d)
        du, dd, da, db, dc, grad_d = grads
        return du, dd, da, db, dc, None, None, None, grad_d, None


def _pad_mask(lengths: Optional[torch.Tensor], u: torch.Tensor, time_major: bool) -> Optional[torch.Tensor]:
    """True on padded frames, shaped to broadcast over ``u`` ((B, L, 1) or (B, 1, L)); None without lengths."""
    if lengths is None:
        return None
    length = u.size(1 if time_major else 2)
    pad = torch.arange(length, device=u.device).unsqueeze(0) >= lengths.to(u.device).unsqueeze(1)
    return pad.unsqueeze(-1) if time_major else pad.unsqueeze(1)


def _per_channel(D: torch.Tensor, time_major: bool) -> torch.Tensor:
    """``D`` (D,) shaped to broadcast over (B, L, D) or (B, D, L)."""
    return D if time_major else D[:, None]


def _canonical(x: torch.Tensor, time_major: bool, reverse: bool) -> torch.Tensor:
    """(B, L, C) -> (B, C, L) when ``time_major``, then time flipped when ``reverse``."""
    x = x.transpose(1, 2) if time_major else x
    return x.flip(2) if reverse else x


def _uncanonical(x: torch.Tensor, time_major: bool, reverse: bool) -> torch.Tensor:
    """Inverse of :func:`_canonical`."""
    x = x.flip(2) if reverse else x
    return x.transpose(1, 2) if time_major else x


def _use_compiled(*tensors: torch.Tensor) -> bool:
    return scan_cpu.supports(*tensors) and scan_cpu.available()


@functools.cache
def _mamba_ssm_scan():
    """``mamba_ssm``'s fused CUDA ``selective_scan_fn``, or None when the package is missing/broken
    (looked up once: a failing import is slow to repeat every call)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a build that does not match this torch/CUDA
        return None
    return selective_scan_fn


def scan_backend(u: torch.Tensor, dtype: Optional[torch.dtype] = None) -> str:
    """Which implementation :func:`selective_scan` uses for ``u``: "mamba_ssm", "cpp" or "torch".

    ``dtype`` is the working precision (float32 for half inputs); mamba_ssm takes float32 only here.
    """
    dtype = dtype or _work_dtype(u.dtype)
    if u.is_cuda and dtype == torch.float32 and _mamba_ssm_scan() is not None:
        return "mamba_ssm"
    probe = u.new_empty(0, dtype=dtype)
    if scan_cpu.supports(probe, probe, probe.new_empty(1, 1)) and scan_cpu.available():
        return "cpp"
    return "torch"


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _scan_forward(u, delta, A, B, C, chunk) -> torch.Tensor:
    """Find every chunk's start state, then rerun the chunks from it, reading out ``C . h``.

    States are never stored for all frames at once: memory is (B, D, N) per chunk.
    """
    length = u.size(-1)
    n_chunks = -(-length // chunk)
    dl, x = _to_chunks(delta, n_chunks, chunk), _to_chunks(delta * u, n_chunks, chunk)
    b, c = _to_chunks(B, n_chunks, chunk), _to_chunks(C, n_chunks, chunk)
    h = _chunk_starts(dl, x, b, A)
    y = torch.empty_like(dl)
    for t in range(chunk):
        h = _step(h, dl[:, t], x[:, t], b[:, t], A)
        y[:, t] = torch.matmul(h, c[:, t].unsqueeze(-1)).squeeze(-1)
    return _from_chunks(y, length)


def _scan_backward(u, delta, A, B, C, grad_y, chunk) -> Tuple[torch.Tensor, ...]:
    """Gradients of ``y = C . h`` w.r.t. (u, delta, A, B, C).

    With ``a_t = exp(delta_t A)`` and ``b_t = delta_t u_t B_t``, the state gradient ``g_t`` obeys
    the same recurrence backwards in time, ``g_t = a_{t+1} g_{t+1} + gy_t C_t``, so it reuses the
    chunked scan on time-reversed inputs. Then ``d/d(delta_t A) = g_t a_t h_{t-1}`` and
    ``d/d(delta_t u_t) = g_t . B_t``; the chain rule does the rest.
    """
    length = u.size(-1)
    n_chunks = -(-length // chunk)
    dl, x = _to_chunks(delta, n_chunks, chunk), _to_chunks(delta * u, n_chunks, chunk)
    uc, gy = _to_chunks(u, n_chunks, chunk), _to_chunks(grad_y, n_chunks, chunk)
    b, c = _to_chunks(B, n_chunks, chunk), _to_chunks(C, n_chunks, chunk)

    # forward again, keeping h_{t-1} for every frame (the one full-size buffer) and dL/dC
    h = _chunk_starts(dl, x, b, A)
    h_prev = h.new_empty((n_chunks, chunk) + h.shape[1:])
    grad_c = torch.empty_like(c)
    for t in range(chunk):
        h_prev[:, t] = h
        h = _step(h, dl[:, t], x[:, t], b[:, t], A)
        grad_c[:, t] = torch.matmul(h.transpose(-1, -2), gy[:, t].unsqueeze(-1)).squeeze(-1)

    # backward in time: the decay met when stepping from t+1 to t is a_{t+1}
    dl_next = torch.cat([dl.flatten(0, 1)[1:], torch.zeros_like(dl[0, :1])]).view_as(dl)
    g = _chunk_starts(dl_next.flip((0, 1)), gy.flip((0, 1)), c.flip((0, 1)), A).flip(0)
    grad_u, grad_delta = torch.empty_like(dl), torch.empty_like(dl)
    grad_b = torch.empty_like(b)
    grad_a = torch.zeros_like(h)  # summed over (chunk, batch) at the end
    for t in reversed(range(chunk)):
        g = _step(g, dl_next[:, t], gy[:, t], c[:, t], A)
        g_log_a = g * torch.exp(dl[:, t].unsqueeze(-1) * A) * h_prev[:, t]
        g_x = torch.matmul(g, b[:, t].unsqueeze(-1)).squeeze(-1)  # d/d(delta u): (n_chunks, B, D)
        grad_u[:, t] = g_x * dl[:, t]
        grad_delta[:, t] = (g_log_a * A).sum(-1) + g_x * uc[:, t]
        grad_a.addcmul_(g_log_a, dl[:, t].unsqueeze(-1))
        grad_b[:, t] = torch.matmul(g.transpose(-1, -2), x[:, t].unsqueeze(-1)).squeeze(-1)
    return (
        _from_chunks(grad_u, length),
        _from_chunks(grad_delta, length),
        grad_a.sum((0, 1)),
        _from_chunks(grad_b, length),
        _from_chunks(grad_c, length),
    )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    time_major: bool = False,
    reverse: bool = False,
    lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fast selective scan; same result as :func:`selective_scan_reference`. Returns (B, D, L).

    ``delta`` is used as given (apply softplus and bias before). ``chunk_size`` (chunked PyTorch
    path only) defaults to ``ceil(sqrt(L / 2))``. Half-precision inputs are scanned in float32 and
    the result cast back, autocast or not. ``time_major``: ``u``, ``delta``, ``z`` and the result
    are (B, L, D), ``B`` and ``C`` (B, L, N) (a Linear's layout: no transposed copies on CPU).
    ``reverse``: the recurrence runs from the last frame to the first, as if time were flipped
    before and after (zero ``delta`` on trailing padding keeps the state at 0 until real frames).
    ``lengths`` (B,): frames from ``lengths[b]`` on are padding, their ``delta`` taken as 0 (as
    ``delta.masked_fill(padding, 0)`` before the call, without the masked copy on CPU).
    """
    out_dtype = u.dtype
    work = _work_dtype(out_dtype)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if scan_backend(u, work) == "mamba_ssm":
        pad = _pad_mask(lengths, u, time_major)
        delta = delta if pad is None else delta.masked_fill(pad, 0.0)
        to = functools.partial(_canonical, time_major=time_major, reverse=reverse)
        D = None if D is None else D.to(work)
        z = None if z is None else to(z.to(work))
        with torch.autocast("cuda", enabled=False):
            y = _mamba_ssm_scan()(to(u), to(delta), A, to(B), to(C), D=D, z=z)
        return _uncanonical(y, time_major, reverse).to(out_dtype)
    length = u.size(1 if time_major else -1)
    chunk = int(chunk_size) if chunk_size else default_chunk_size(length)
    D, z = (None if t is None else t.to(work) for t in (D, z))
    y = SelectiveScanFn.apply(u, delta, A, B, C, chunk, time_major, reverse, D, lengths)
    y = _skip_and_gate(y, u, None, z, time_major)
    return y.to(out_dtype)


def scan_flops(batch: int, dim: int, state: int, length: int, skip: bool = True, gate: bool = False) -> int:
    """Elementwise floating-point operations of one selective scan: the one place for its formula.

    Per (b, d, t) and state n: ``delta*A`` (1), its ``exp`` (1, counted as one operation),
    ``(delta*u)*B`` (1), the update ``a*h + drive`` (2) and the readout ``C*h`` accumulated (2)
    = 7; per (b, d, t): ``delta*u`` (1), the skip ``y + D*u`` (2, if ``skip``) and the gate
    product ``y * silu(z)`` (1, if ``gate``; SiLU itself is not counted, as elsewhere)::

        FLOPs = B * D * L * (7 * N + 1 + 2 * skip + gate)
    """
    per_frame = 7 * int(state) + 1 + 2 * int(skip) + int(gate)
    return int(batch) * int(dim) * int(length) * per_frame


def selective_scan_macs(u_shape: Sequence[int], d_state: int, skip: bool = True, gate: bool = False) -> int:
    """The scan's cost in the budget's currency, MACs = FLOPs / 2 (rounded up): see :func:`scan_flops`.

    ``u_shape`` is (B, D, L).
    """
    batch, dim, length = (int(s) for s in u_shape)
    return -(-scan_flops(batch, dim, d_state, length, skip=skip, gate=gate) // 2)


class SelectiveScan(nn.Module):
    """Module wrapper so the FLOP counter can find every scan and ask for its analytic cost."""

    def __init__(self, chunk_size: Optional[int] = None):
        super().__init__()
        self.chunk_size = chunk_size

    def forward(
        self, u, delta, A, B, C, D=None, z=None, time_major=False, reverse=False, lengths=None
    ) -> torch.Tensor:
        return selective_scan(
            u,
            delta,
            A,
            B,
            C,
            D=D,
            z=z,
            chunk_size=self.chunk_size,
            time_major=time_major,
            reverse=reverse,
            lengths=lengths,
        )

    def macs(self, u_shape: Sequence[int], d_state: int, skip: bool = True, gate: bool = False) -> int:
        """See :func:`selective_scan_macs` for the formula."""
        return selective_scan_macs(u_shape, d_state, skip=skip, gate=gate)

    def flop_macs(self, inputs: tuple, output) -> int:
        """Hook for :func:`speechbudget.cost.flops.count_macs`: fvcore cannot see the scan's
        elementwise arithmetic, so the whole module is counted analytically."""
        u, delta, A, B, C, D, z = inputs[:7]
        return self.macs(tuple(u.shape), A.shape[-1], skip=D is not None, gate=z is not None)

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size or 'sqrt(L/2)'}"


def _scan_op_macs(inputs, outputs) -> int:
    """fvcore handle for :class:`SelectiveScanFn` (tensor inputs u, delta, A, B, C and, for the
    skip, D): its elementwise recurrence, by the formula above (the gate runs outside)."""
    u_shape = inputs[0].type().sizes()
    d_state = inputs[2].type().sizes()[-1]
    skip = len(inputs) > 5 and inputs[5].type().scalarType() != "Long"  # D, not lengths
    return selective_scan_macs(u_shape, d_state, skip=skip, gate=False)


register_op_handle("prim::PythonOp.SelectiveScanFn", _scan_op_macs)
