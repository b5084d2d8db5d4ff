"""Compiled CPU loops for the Zipformer's memory-bound work: attention weights, Swoosh, depthwise conv.

On a CPU a small Zipformer's step is not its matmuls alone: the ops between them pass over memory
once each. The worst were the relative-position attention weights: PyTorch computes the positional
scores ``p . pos`` as a ``(B, H, T, 2T-1)`` matmul with an inner dimension of 4 (memory-bound, and
slow in oneDNN at that shape), views its band, then masks and softmaxes in further passes; the
backward zero-fills another ``(B, H, T, 2T-1)`` buffer, copies the score gradient into its band and
runs two more skinny matmuls over it. Here each query row (a few KB, in L1) is finished in one
visit: the content scores ``q k^T`` come from ``torch.bmm``, then the kernel adds the row's band of
positional scores, masks padded keys and softmaxes in place; the backward does the softmax
gradient, the mask, ``grad p`` and ``grad pos`` in one visit of each row too. Swoosh (softplus and
its derivative) is one pass each way, and the depthwise convolution one loop over (B, T, D) each way.

Same math as the PyTorch ops in :mod:`.zipformer_layers`, to rounding (the shared polynomial
``exp``, a series for ``log1p``). fp32 CPU tensors outside autocast only; everything else, or a
machine without a compiler, takes the PyTorch ops (``SPEECHBUDGET_ZIPFORMER=torch`` forces them).
Measured in BENCHMARKS.md section 2 (``bench/zipformer_cpu.py``).
"""

from __future__ import annotations

import ctypes
from typing import Optional, Tuple

import torch

from ..native import SIMD_PRELUDE, Kernel

_SOURCE = (
    SIMD_PRELUDE
    + r"""
#include <algorithm>

namespace {

// row[j] <- exp(row[j] - m) / sum_j exp(row[j] - m): whole vectors, then the tail through a
// buffer padded with scores 1000 below the maximum (their exp is 0).
inline void softmax_row(float* row, int64_t t, float m) {
  vfn acc = vfn{};
  int64_t j = 0;
  for (; j + WN <= t; j += WN) {
    vfn x;
    std::memcpy(&x, row + j, sizeof x);
    x = exp_f32<vfn, vin>(x - m);
    std::memcpy(row + j, &x, sizeof x);
    acc += x;
  }
  if (j < t) {
    float buf[WN];
    for (int l = 0; l < WN; ++l) buf[l] = j + l < t ? row[j + l] : m - 1000.f;
    vfn x;
    std::memcpy(&x, buf, sizeof x);
    x = exp_f32<vfn, vin>(x - m);
    acc += x;
    std::memcpy(buf, &x, sizeof x);
    for (int l = 0; j + l < t; ++l) row[j + l] = buf[l];
  }
  float total = 0.f;
  for (int l = 0; l < WN; ++l) total += acc[l];
  const float inv = 1.f / total;
#pragma omp simd
  for (int64_t k = 0; k < t; ++k) row[k] *= inv;
}

// Swoosh(x) = softplus(x - shift) - 0.08 x - offset, and its derivative sigmoid(x - shift) - 0.08.
// With e = exp(-|z|) (z = x - shift): softplus(z) = max(z, 0) + log1p(e), and log1p(e) =
// 2 atanh(e / (2 + e)) by its odd series (e in (0, 1], so the ratio is <= 1/3: 9 terms reach
// float precision, and small e keeps full relative precision, unlike log(1 + e)).
inline vfn log1p_unit(vfn e) {
  const vfn s = e / (2.f + e), s2 = s * s;
  vfn p = s2 * (1.f / 17) + 1.f / 15;
  p = p * s2 + 1.f / 13; p = p * s2 + 1.f / 11; p = p * s2 + 1.f / 9; p = p * s2 + 1.f / 7;
  p = p * s2 + 1.f / 5; p = p * s2 + 1.f / 3; p = p * s2 + 1.f;
  return 2.f * s * p;
}

inline vfn swoosh_vec(vfn x, float shift, float offset) {
  const vfn z = x - shift;
  const vfn az = z < 0.f ? -z : z;
  const vfn e = exp_f32<vfn, vin>(-az);
  return ((z > 0.f ? z : 0.f) + log1p_unit(e)) - 0.08f * x - offset;
}

inline vfn swoosh_grad_vec(vfn x, vfn g, float shift) {
  const vfn z = x - shift;
  const vfn az = z < 0.f ? -z : z;
  const vfn e = exp_f32<vfn, vin>(-az);
  const vfn sig = (z >= 0.f ? 1.f : e) / (1.f + e);
  return (sig - 0.08f) * g;
}

// len (<= WN) floats as a vector, zero-padded; and back.
inline vfn load(const float* p, int64_t len) {
  vfn v = vfn{};
  if (len == WN) std::memcpy(&v, p, sizeof v);
  else std::memcpy(&v, p, len * sizeof(float));
  return v;
}
inline void store(float* p, vfn v, int64_t len) {
  if (len == WN) std::memcpy(p, &v, sizeof v);
  else std::memcpy(p, &v, len * sizeof(float));
}

// f(offset, len) over n elements in vectors (the last one partial). Threads split the array
// (not a small one: starting a thread costs about as much as 32 K elements of Swoosh).
template <typename F> void elementwise(int64_t n, int threads, F f) {
  const int64_t vecs = n / WN;
  if (n < ((int64_t)1 << 15)) threads = 1;
  parallel_rows(vecs + 1, threads, [=](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) f(r * WN, r < vecs ? WN : n - vecs * WN);
  });
}

}  // namespace

extern "C" void sb_swoosh_f32(const float* x, float* y, int64_t n, float shift, float offset, int threads) {
  elementwise(n, threads, [=](int64_t o, int64_t len) {
    store(y + o, swoosh_vec(load(x + o, len), shift, offset), len);
  });
}

extern "C" void sb_swoosh_bwd_f32(const float* x, const float* g, float* gx, int64_t n, float shift,
                                  int threads) {
  elementwise(n, threads, [=](int64_t o, int64_t len) {
    store(gx + o, swoosh_grad_vec(load(x + o, len), load(g + o, len), shift), len);
  });
}

// Depthwise convolution over time on channels-last (B, T, D) data, kernel K (odd), "same" zero
// padding: y[b, t] = bias + sum_k w[k] * x[b, t + k - K/2] (w is (K, D): a channel's taps apart by D,
// so every inner loop runs over contiguous channels). Threads split the (b, t) rows.
extern "C" void sb_depthwise_f32(const float* x, const float* w, const float* bias, float* y, int64_t B,
                                 int64_t T, int64_t D, int64_t K, int threads) {
  const int64_t P = K / 2;
  parallel_rows(B * T, threads, [=](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r % T;
      float* __restrict out = y + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] = bias[d];
      const int64_t k0 = std::max<int64_t>(0, P - t), k1 = std::min<int64_t>(K, T + P - t);
      for (int64_t k = k0; k < k1; ++k) {
        const float* __restrict xr = x + (b * T + t + k - P) * D;
        const float* __restrict wk = w + k * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) out[d] += wk[d] * xr[d];
      }
    }
  });
}

// Its backward: gx (B, T, D); gw (threads, K, D) and gb (threads, D), zeroed by the caller, each
// thread adding its rows' share to its own slice (the caller sums the slices).
extern "C" void sb_depthwise_bwd_f32(const float* x, const float* w, const float* g, float* gx, float* gw,
                                     float* gb, int64_t B, int64_t T, int64_t D, int64_t K, int threads) {
  const int64_t P = K / 2;
  parallel_rows(B * T, threads, [=](int tid, int64_t r0, int64_t r1) {
    float* __restrict gwt = gw + tid * K * D;
    float* __restrict gbt = gb + tid * D;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r % T;
      float* __restrict out = gx + r * D;
      const float* __restrict gr = g + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        out[d] = 0.f;
        gbt[d] += gr[d];
      }
      // gx[t] = sum_k w[k] g[t + P - k] (frame t + P - k read frame t through tap k): a gather,
      // so no other row is written
      const int64_t j0 = std::max<int64_t>(0, t + P - (T - 1)), j1 = std::min<int64_t>(K, t + P + 1);
      for (int64_t k = j0; k < j1; ++k) {
        const float* __restrict wk = w + k * D;
        const float* __restrict gs = g + (b * T + t + P - k) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) out[d] += wk[d] * gs[d];
      }
      const int64_t k0 = std::max<int64_t>(0, P - t), k1 = std::min<int64_t>(K, T + P - t);
      for (int64_t k = k0; k < k1; ++k) {
        const float* __restrict xr = x + (b * T + t + k - P) * D;
        float* __restrict gwk = gwt + k * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) gwk[d] += gr[d] * xr[d];
      }
    }
  });
}

// S (B*H, T, T): content scores in, attention weights out. P (B*H, T, dp) position queries,
// POS (H, dp, 2T-1) projected offset embeddings (offset index j - i + T - 1), keep (B, T): 1 at
// real keys, 0 at padded ones (their score becomes `masked`).
extern "C" void sb_relpos_softmax_f32(float* S, const float* P, const float* POS, const float* keep,
                                      int64_t B, int64_t H, int64_t T, int64_t dp, float masked,
                                      int threads) {
  const int64_t R = 2 * T - 1;
  parallel_rows(B * H, threads, [=](int, int64_t r0, int64_t r1) {
    for (int64_t bh = r0; bh < r1; ++bh) {
      const int64_t h = bh % H;
      const float* __restrict kp = keep + (bh / H) * T;
      for (int64_t i = 0; i < T; ++i) {
        float* __restrict row = S + (bh * T + i) * T;
        const float* pi = P + (bh * T + i) * dp;
        for (int64_t c = 0; c < dp; ++c) {
          const float pc = pi[c];
          const float* __restrict band = POS + (h * dp + c) * R + (T - 1 - i);
#pragma omp simd
          for (int64_t j = 0; j < T; ++j) row[j] += pc * band[j];
        }
        // the row's maximum after masking (keep is 0 or 1: the PyTorch path's masking, as
        // arithmetic); not started at `masked`, which real scores can lie below
        float m = -__builtin_inff();
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < T; ++j) {
          const float x = row[j] * kp[j] + (1.f - kp[j]) * masked;
          row[j] = x;
          m = std::max(m, x);
        }
        softmax_row(row, T, m);
      }
    }
  });
}

// The backward: G (B*H, T, T) the weights' gradient, plus G0 (B, T, T) the first head's (a copy
// of it went to another consumer; null: none), Wt the weights -> GS the scores' gradient
// (zero at padded keys), GP (B*H, T, dp), GPOS (H, dp, 2T-1) (accumulated: zeroed by the
// caller). Threads split heads, so no two threads add to the same GPOS row.
extern "C" void sb_relpos_softmax_bwd_f32(const float* G, const float* G0, const float* Wt, const float* keep,
                                          const float* P, const float* POS, float* GS, float* GP,
                                          float* GPOS, int64_t B, int64_t H, int64_t T, int64_t dp,
                                          int threads) {
  const int64_t R = 2 * T - 1;
  parallel_rows(H, threads, [=](int, int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t bh = b * H + h;
        const float* __restrict kp = keep + b * T;
        for (int64_t i = 0; i < T; ++i) {
          const int64_t o = (bh * T + i) * T;
          const float* __restrict g = G + o;
          const float* __restrict w = Wt + o;
          float* __restrict gs = GS + o;
          if (G0 && h == 0) {
            const float* __restrict g0 = G0 + (b * T + i) * T;
#pragma omp simd
            for (int64_t j = 0; j < T; ++j) gs[j] = g[j] + g0[j];
          } else {
            std::memcpy(gs, g, sizeof(float) * T);
          }
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < T; ++j) dot += gs[j] * w[j];
#pragma omp simd
          for (int64_t j = 0; j < T; ++j) gs[j] = kp[j] * (w[j] * (gs[j] - dot));
          const float* pi = P + (bh * T + i) * dp;
          float* gpi = GP + (bh * T + i) * dp;
          for (int64_t c = 0; c < dp; ++c) {
            const float* __restrict band = POS + (h * dp + c) * R + (T - 1 - i);
            float* __restrict gband = GPOS + (h * dp + c) * R + (T - 1 - i);
            const float pc = pi[c];
            float acc = 0.f;
#pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < T; ++j) {
              acc += gs[j] * band[j];
              gband[j] += gs[j] * pc;
            }
            gpi[c] = acc;
          }
        }
      }
  });
}
"""
)


def _bind(lib: ctypes.CDLL) -> None:
    i64, i32, ptr, f32 = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    lib.sb_relpos_softmax_f32.argtypes = [ptr] * 4 + [i64] * 4 + [f32, i32]
    lib.sb_relpos_softmax_bwd_f32.argtypes = [ptr] * 9 + [i64] * 4 + [i32]
    lib.sb_swoosh_f32.argtypes = [ptr, ptr, i64, f32, f32, i32]
    lib.sb_swoosh_bwd_f32.argtypes = [ptr, ptr, ptr, i64, f32, i32]
    lib.sb_depthwise_f32.argtypes = [ptr] * 4 + [i64] * 4 + [i32]
    lib.sb_depthwise_bwd_f32.argtypes = [ptr] * 6 + [i64] * 4 + [i32]


_KERNEL = Kernel("zipformer", "SPEECHBUDGET_ZIPFORMER", _SOURCE, _bind, "Zipformer runs its PyTorch ops")


def load() -> Optional[ctypes.CDLL]:
    return _KERNEL.load()


def supports(*tensors: torch.Tensor) -> bool:
    """fp32 CPU tensors, outside autocast (whose bf16 matmuls belong to the PyTorch path)."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
        and load() is not None
    )


def _threads() -> int:
    return max(1, torch.get_num_threads())


def relpos_softmax_(
    scores: torch.Tensor, p: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor, masked: float
):
    """In place: ``scores`` (B*H, T, T) content scores -> attention weights.

    p (B*H, T, dp), pos (H, dp, 2T-1), keep (B, T), all contiguous fp32.
    """
    bh, t, _ = scores.shape
    h, dp, _ = pos.shape
    load().sb_relpos_softmax_f32(
        scores.data_ptr(),
        p.data_ptr(),
        pos.data_ptr(),
        keep.data_ptr(),
        bh // h,
        h,
        t,
        dp,
        masked,
        _threads(),
    )
    return scores


def relpos_softmax_backward(
    grad: torch.Tensor,
    grad_head0: Optional[torch.Tensor],
    weights: torch.Tensor,
    keep: torch.Tensor,
    p: torch.Tensor,
    pos: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the scores (B*H, T, T), of p (B*H, T, dp) and of pos (H, dp, 2T-1), from the
    weights' gradient ``grad`` plus ``grad_head0`` (B, T, T) on the first head (None: nothing)."""
    grad = grad.contiguous()
    grad_head0 = None if grad_head0 is None else grad_head0.contiguous()
    bh, t, _ = weights.shape
    h, dp, _ = pos.shape
    grad_scores = torch.empty_like(weights)
    grad_p = torch.empty_like(p)
    grad_pos = torch.zeros_like(pos)
    load().sb_relpos_softmax_bwd_f32(
        grad.data_ptr(),
        None if grad_head0 is None else grad_head0.data_ptr(),
        weights.data_ptr(),
        keep.data_ptr(),
        p.data_ptr(),
        pos.data_ptr(),
        grad_scores.data_ptr(),
        grad_p.data_ptr(),
        grad_pos.data_ptr(),
        bh // h,
        h,
        t,
        dp,
        _threads(),
    )
    return grad_scores, grad_p, grad_pos


def swoosh(x: torch.Tensor, shift: float, offset: float) -> torch.Tensor:
    """softplus(x - shift) - 0.08 x - offset, for contiguous fp32 ``x``."""
    y = torch.empty_like(x)
    load().sb_swoosh_f32(x.data_ptr(), y.data_ptr(), x.numel(), shift, offset, _threads())
    return y


def swoosh_backward(x: torch.Tensor, grad: torch.Tensor, shift: float) -> torch.Tensor:
    """(sigmoid(x - shift) - 0.08) * grad."""
    grad = grad.contiguous()
    out = torch.empty_like(x)
    load().sb_swoosh_bwd_f32(x.data_ptr(), grad.data_ptr(), out.data_ptr(), x.numel(), shift, _threads())
    return out


def depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution over time of contiguous (B, T, D) ``x``; ``weight`` (K, D), ``bias`` (D,)."""
    b, t, d = x.shape
    y = torch.empty_like(x)
    load().sb_depthwise_f32(
        x.data_ptr(), weight.data_ptr(), bias.data_ptr(), y.data_ptr(), b, t, d, weight.size(0), _threads()
    )
    return y


def depthwise_backward(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor):
    """Gradients of x (B, T, D), weight (K, D) and bias (D,)."""
    grad = grad.contiguous()
    b, t, d = x.shape
    k = weight.size(0)
    threads = max(1, min(_threads(), b * t))
    grad_x = torch.empty_like(x)
    grad_w = x.new_zeros(threads, k, d)
    grad_b = x.new_zeros(threads, d)
    load().sb_depthwise_bwd_f32(
        x.data_ptr(),
        weight.data_ptr(),
        grad.data_ptr(),
        grad_x.data_ptr(),
        grad_w.data_ptr(),
        grad_b.data_ptr(),
        b,
        t,
        d,
        k,
        threads,
    )
    return grad_x, grad_w.sum(0), grad_b.sum(0)
