"""ScaledAdam's per-element work for a CPU in two passes over memory instead of ~20.

:class:`~speechbudget.train.optim.ScaledAdam` does ~25 small tensor ops per parameter tensor: on a
CPU that is ~50 ms per zipformer-tiny step (532 tensors), a sixth of a short-clip fine-tuning step.
Here the same update runs as two loops in C++ over every tensor of a step: ``reduce`` (per tensor,
sum(g * p) and sum(p * p), accumulated in double) and ``update`` (Adam moments, the direction and
the parameter step, one read and write of each element). The per-tensor scalars between the two
(the scale's Adam moments, the clamps) stay in PyTorch on vectors of one entry per tensor.

fp32 CPU tensors only; everything else takes ScaledAdam's PyTorch path, as does a machine without
a compiler (:mod:`speechbudget.native`; ``SPEECHBUDGET_ADAM=torch`` forces it).
"""

from __future__ import annotations

import ctypes
from typing import List, Optional, Sequence

import torch

from ..native import SIMD_PRELUDE, Kernel

_SOURCE = (
    SIMD_PRELUDE
    + r"""
#include <algorithm>
#include <cmath>

namespace {
// Calls f(k, i, lo, hi) over the elements [lo, hi) of tensor i, the elements of all n tensors
// split into `threads` contiguous shares (k = the share).
template <class F> void parallel(int n, const int64_t* numel, int threads, F f) {
  int64_t total = 0;
  for (int i = 0; i < n; ++i) total += numel[i];
  if (total < (int64_t)1 << 16) threads = 1;
  const int64_t per = (total + threads - 1) / threads;
  auto share = [&](int k) {
    const int64_t start = k * per, stop = std::min(total, start + per);
    int64_t off = 0;
    for (int i = 0; i < n && off < stop; ++i) {
      const int64_t lo = std::max(start - off, (int64_t)0), hi = std::min(stop - off, numel[i]);
      if (lo < hi) f(k, i, lo, hi);
      off += numel[i];
    }
  };
  parallel_shares(threads, share);
}
}  // namespace

extern "C" void sb_sadam_reduce_f32(int n, float* const* p, float* const* g, const int64_t* numel,
                                    float gscale, double* gp, double* pp, int threads) {
  std::vector<double> part((size_t)threads * 2 * n, 0.0);
  parallel(n, numel, threads, [&](int k, int i, int64_t lo, int64_t hi) {
    const float* __restrict pi = p[i];
    const float* __restrict gi = g[i];
    double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t j = lo; j < hi; ++j) {
      a += (double)(gi[j] * gscale) * (double)pi[j];
      b += (double)pi[j] * (double)pi[j];
    }
    part[((size_t)k * n + i) * 2] += a;
    part[((size_t)k * n + i) * 2 + 1] += b;
  });
  for (int i = 0; i < n; ++i) {
    gp[i] = 0.0;
    pp[i] = 0.0;
    for (int k = 0; k < threads; ++k) {
      gp[i] += part[((size_t)k * n + i) * 2];
      pp[i] += part[((size_t)k * n + i) * 2 + 1];
    }
  }
}

// m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  d = (m / bc1) / (sqrt(v / bc2) + eps);
// p <- p + a_i d + c_i p   (a_i = -lr rms_i, c_i = -lr scalar_lr_scale s_i)
extern "C" void sb_sadam_update_f32(int n, float* const* p, float* const* g, float* const* m,
                                    float* const* v, const int64_t* numel, const float* a,
                                    const float* c, float gscale, float b1, float b2, float bc1,
                                    float bc2, float eps, int threads) {
  parallel(n, numel, threads, [&](int, int i, int64_t lo, int64_t hi) {
    float* __restrict pi = p[i];
    const float* __restrict gi = g[i];
    float* __restrict mi = m[i];
    float* __restrict vi = v[i];
    const float ai = a[i], ci = c[i];
#pragma omp simd
    for (int64_t j = lo; j < hi; ++j) {
      const float gj = gi[j] * gscale;
      const float mj = mi[j] * b1 + gj * (1.f - b1);
      const float vj = vi[j] * b2 + gj * gj * (1.f - b2);
      mi[j] = mj;
      vi[j] = vj;
      const float d = (mj / bc1) / (std::sqrt(vj / bc2) + eps);
      pi[j] = pi[j] + (ai * d + ci * pi[j]);
    }
  });
}
"""
)


def _bind(lib: ctypes.CDLL) -> None:
    i32, ptr, f32 = ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    lib.sb_sadam_reduce_f32.argtypes = [i32, ptr, ptr, ptr, f32, ptr, ptr, i32]
    lib.sb_sadam_update_f32.argtypes = [i32, ptr, ptr, ptr, ptr, ptr, ptr, ptr] + [f32] * 6 + [i32]


_KERNEL = Kernel("scaled_adam", "SPEECHBUDGET_ADAM", _SOURCE, _bind, "ScaledAdam runs its PyTorch path")


def load() -> Optional[ctypes.CDLL]:
    return _KERNEL.load()


def supports(tensors: Sequence[torch.Tensor]) -> bool:
    """Contiguous fp32 CPU parameters with contiguous gradients."""
    return all(
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.is_contiguous()
        and t.grad is not None
        and t.grad.dtype == torch.float32
        and t.grad.is_contiguous()
        for t in tensors
    )


def _pointers(tensors: Sequence[torch.Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


class Pass:
    """The two passes over one step's tensors (all at the same ScaledAdam step)."""

    def __init__(self, lib: ctypes.CDLL, params: List[torch.Tensor], exp_avg, exp_avg_sq, threads: int):
        self.lib, self.n, self.threads = lib, len(params), max(1, threads)
        self.numel = torch.tensor([p.numel() for p in params], dtype=torch.int64)
        self.p, self.g = _pointers(params), _pointers([p.grad for p in params])
        self.m, self.v = _pointers(exp_avg), _pointers(exp_avg_sq)

    def reduce(self, grad_scale: float):
        """Per tensor: sum(g * grad_scale * p) and sum(p * p), as float64 vectors."""
        gp = torch.empty(self.n, dtype=torch.float64)
        pp = torch.empty(self.n, dtype=torch.float64)
        self.lib.sb_sadam_reduce_f32(
            self.n,
            self.p,
            self.g,
            self.numel.data_ptr(),
            grad_scale,
            gp.data_ptr(),
            pp.data_ptr(),
            self.threads,
        )
        return gp, pp

    def update(
        self, a: torch.Tensor, c: torch.Tensor, grad_scale: float, betas, bc1: float, bc2: float, eps: float
    ):
        a, c = a.float().contiguous(), c.float().contiguous()
        self.lib.sb_sadam_update_f32(
            self.n,
            self.p,
            self.g,
            self.m,
            self.v,
            self.numel.data_ptr(),
            a.data_ptr(),
            c.data_ptr(),
            grad_scale,
            betas[0],
            betas[1],
            bc1,
            bc2,
            eps,
            self.threads,
        )
