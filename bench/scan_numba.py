"""Candidate measured against the C++ kernel: the same scan as a numba JIT kernel (bench only).

Same algorithm as ``speechbudget/models/scan_cpu.py``: rows (b, d) in parallel (``prange``), the
time loop inside, states in a local array, backward recomputing the states then running the
adjoint backwards. ``fastmath`` lets LLVM vectorise over the 16 states; whether ``exp`` vectorises
depends on numba finding a vector math library (SVML), which a plain pip install does not bring.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def _fwd(u, dt, A, Bt, Ct, y):
    batch, dim, length = u.shape
    n = A.shape[1]
    for r in prange(batch * dim):
        b, d = r // dim, r % dim
        h = np.zeros(n, dtype=u.dtype)
        a = A[d]
        for t in range(length):
            dl = dt[b, d, t]
            du = dl * u[b, d, t]
            acc = 0.0
            for i in range(n):
                h[i] = np.exp(dl * a[i]) * h[i] + du * Bt[b, t, i]
                acc += h[i] * Ct[b, t, i]
            y[b, d, t] = acc


@njit(parallel=True, fastmath=True, cache=True)
def _bwd(u, dt, A, Bt, Ct, gy, du_out, ddt_out, da_rows, db_rows, dc_rows):
    batch, dim, length = u.shape
    n = A.shape[1]
    for r in prange(batch * dim):
        b, d = r // dim, r % dim
        a = A[d]
        hs = np.zeros((length + 1, n), dtype=u.dtype)
        for t in range(length):
            dl = dt[b, d, t]
            du = dl * u[b, d, t]
            for i in range(n):
                hs[t + 1, i] = np.exp(dl * a[i]) * hs[t, i] + du * Bt[b, t, i]
        g = np.zeros(n, dtype=u.dtype)
        for t in range(length - 1, -1, -1):
            dl, ut, gyt = dt[b, d, t], u[b, d, t], gy[b, d, t]
            du = dl * ut
            sgb = 0.0
            sgla = 0.0
            for i in range(n):
                gn = g[i] + gyt * Ct[b, t, i]
                dc_rows[r, t, i] = gyt * hs[t + 1, i]
                dec = np.exp(dl * a[i])
                gla = gn * dec * hs[t, i]
                sgla += gla * a[i]
                da_rows[r, i] += gla * dl
                sgb += gn * Bt[b, t, i]
                db_rows[r, t, i] = gn * du
                g[i] = gn * dec
            ddt_out[b, d, t] = sgla + sgb * ut
            du_out[b, d, t] = sgb * dl


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        bt, ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        y = torch.empty_like(u)
        _fwd(
            u.contiguous().numpy(),
            delta.contiguous().numpy(),
            A.contiguous().numpy(),
            bt.numpy(),
            ct.numpy(),
            y.numpy(),
        )
        ctx.save_for_backward(u, delta, A, bt, ct)
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, bt, ct = ctx.saved_tensors
        batch, dim, length = u.shape
        n = A.size(1)
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        da = u.new_zeros(batch * dim, n)
        # per-row dB/dC (summed over d afterwards): simple, at B*D*L*N memory (a candidate, not tuned)
        db, dc = u.new_empty(batch * dim, length, n), u.new_empty(batch * dim, length, n)
        args = (
            u.contiguous(),
            delta.contiguous(),
            A.contiguous(),
            bt,
            ct,
            gy.contiguous(),
            du,
            ddt,
            da,
            db,
            dc,
        )
        _bwd(*(t.numpy() for t in args))
        grad_b = db.view(batch, dim, length, n).sum(1).transpose(1, 2)
        grad_c = dc.view(batch, dim, length, n).sum(1).transpose(1, 2)
        return du, ddt, da.view(batch, dim, n).sum(0), grad_b, grad_c


def selective_scan_numba(u, delta, A, B, C, D=None):
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    y = _NumbaScan.apply(u, delta, A, B, C)
    return y if D is None else y + D[:, None] * u


__all__ = ["selective_scan_numba", "numba"]
