"""Compiled CPU selective scan: a small C++ kernel built on first use with the system ``g++``.

Why C++ and not numba/torch.compile: the scan is a time loop over (batch, channel) rows whose
work per frame is 16 states, i.e. one AVX-512 vector. Only a compiled loop with the states in
registers gets near the elementwise floor, and only a vectorised ``exp`` keeps it there: ours is
a short polynomial (Cody-Waite range reduction), so ``g++`` vectorises it without fast-math (which
would flip the process's denormal mode) and without libmvec. Measured against numba in
BENCHMARKS.md section 7.

The library is plain C (no torch headers, so it compiles in about a second), is called through
``ctypes`` on raw pointers (``ctypes`` drops the GIL), and is cached per source hash under
``$SPEECHBUDGET_CACHE_DIR`` or ``~/.cache/speechbudget`` (as calibrations). When it cannot be built or loaded,
:func:`load` returns None and callers use the PyTorch path (a one-line warning, once).

Layout: ``u``, ``delta``, ``y``: (B, D, L), or (B, L, D) ("time-major", strided rows); ``A``: (D, N);
``Bt``, ``Ct``: (B, L, N) (time-major so
a frame's states are contiguous). Rows (b, d) are split across ``threads`` std::threads.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..native import Kernel

MAX_STATE = 256  # state sizes above this use the PyTorch path (states live in registers / on the stack)

_SOURCE = r"""
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

// One 64-byte vector of T (16 floats / 8 doubles); the state dimension is padded to whole vectors.
template <typename T> struct V;
template <> struct V<float> {
  typedef float v __attribute__((vector_size(64)));
  typedef int32_t vi __attribute__((vector_size(64)));
  static constexpr int W = 16;
  static inline v exp(v x) {  // 2^k p(r), r = x - k ln2, |r| <= ln2/2, degree-7 Taylor: < 2 ulp
    const float lo = -87.3f, hi = 88.7f, magic = 12582912.f;  // 1.5 * 2^23 rounds to nearest
    v xc = x < lo ? lo : (x > hi ? hi : x);
    v k = (xc * 1.44269504088896341f + magic) - magic;
    v r = xc - k * 0.693145751953125f - k * 1.42860682030941723212e-6f;
    v p = r * (1.f / 5040) + 1.f / 720;
    p = p * r + 1.f / 120; p = p * r + 1.f / 24; p = p * r + 1.f / 6; p = p * r + 0.5f;
    p = p * r + 1.f; p = p * r + 1.f;
    vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
    v out = p * (v)bits;
    return x < lo ? 0.f : out;
  }
  static inline float sum(v x) {
    typedef float v8 __attribute__((vector_size(32)));
    typedef float v4 __attribute__((vector_size(16)));
    v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
  }
};
template <> struct V<double> {
  typedef double v __attribute__((vector_size(64)));
  typedef int64_t vi __attribute__((vector_size(64)));
  static constexpr int W = 8;
  static inline v exp(v x) {  // as above, degree-12 Taylor: ~1e-15 relative
    const double lo = -708.0, hi = 709.0, magic = 6755399441055744.0;  // 1.5 * 2^52
    v xc = x < lo ? lo : (x > hi ? hi : x);
    v k = (xc * 1.4426950408889634074 + magic) - magic;
    v r = xc - k * 6.93147180369123816490e-01 - k * 1.90821492927058770002e-10;
    v p = r * (1.0 / 479001600) + 1.0 / 39916800;
    p = p * r + 1.0 / 3628800; p = p * r + 1.0 / 362880; p = p * r + 1.0 / 40320;
    p = p * r + 1.0 / 5040; p = p * r + 1.0 / 720; p = p * r + 1.0 / 120; p = p * r + 1.0 / 24;
    p = p * r + 1.0 / 6; p = p * r + 0.5; p = p * r + 1.0; p = p * r + 1.0;
    vi bits = (__builtin_convertvector(k, vi) + 1023) << 52;
    v out = p * (v)bits;
    return x < lo ? 0.0 : out;
  }
  static inline double sum(v x) {
    typedef double v4 __attribute__((vector_size(32)));
    v4 a = __builtin_shufflevector(x, x, 0, 1, 2, 3) + __builtin_shufflevector(x, x, 4, 5, 6, 7);
    return (a[0] + a[2]) + (a[1] + a[3]);
  }
};

constexpr int MAXV = 32;  // vectors of state per row (MAX_STATE on the Python side)

template <typename F> void parallel_rows(int64_t rows, int threads, F fn) {
  if (threads <= 1 || rows < 2) { fn(0, 0, rows); return; }
  if (threads > rows) threads = (int)rows;
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i)
    pool.emplace_back(fn, i, rows * i / threads, rows * (i + 1) / threads);
  fn(0, 0, rows / threads);
  for (auto& th : pool) th.join();
}

// Forward of one row: h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;  y_t = C_t . h_t, for steps
// s = 0 .. L-1. u, dt, y step by st elements per frame; Bt, Ct by sv vectors (both negative for
// a reverse scan, the pointers then at the last frame). NV vectors of state (0: runtime nv).
template <typename T, int NV>
void fwd_row(int64_t L, int64_t s0, int64_t s1, int nvr, const T* u, const T* dt, int64_t st,
             const T* A, const T* Bt, const T* Ct, int64_t sv, T skip, T* y) {
  typedef typename V<T>::v v;
  const int nv = NV ? NV : nvr;
  const v* a = (const v*)A;
  const v* bv = (const v*)Bt;
  const v* cv = (const v*)Ct;
  v h[NV ? NV : MAXV];
  for (int i = 0; i < nv; ++i) h[i] = v{} ;
  for (int64_t s = 0; s < L; ++s) {
    const T d = (s >= s0 && s < s1) ? dt[s * st] : T(0), du = d * u[s * st];
    v acc = v{};
    for (int i = 0; i < nv; ++i) {
      h[i] = V<T>::exp(d * a[i]) * h[i] + du * bv[s * sv + i];
      acc += h[i] * cv[s * sv + i];
    }
    y[s * st] = V<T>::sum(acc) + skip * u[s * st];
  }
}

// Backward of one row: recompute and keep h_s (row 0 of hs is h_{-1} = 0), then run the adjoint
// g_s = a_{s+1} g_{s+1} + gy_s C_s backwards. dB, dC accumulate into this thread's (L, nv) slices,
// which step like Bt, Ct.
template <typename T, int NV>
void bwd_row(int64_t L, int64_t s0, int64_t s1, int nvr, const T* u, const T* dt, int64_t st, const T* A, const T* Bt,
             const T* Ct, int64_t sv, T skip, const T* gy, T* hsp, T* du_out, T* ddt_out, T* dA_row,
             T* dskip, T* dBp, T* dCp) {
  typedef typename V<T>::v v;
  const int nv = NV ? NV : nvr;
  const v* a = (const v*)A;
  const v* bv = (const v*)Bt;
  const v* cv = (const v*)Ct;
  v* hs = (v*)hsp;
  v* ds = hs + (L + 1) * nv;  // the decays exp(dt_s A), kept from the recomputation
  v* dB = (v*)dBp;
  v* dC = (v*)dCp;
  v h[NV ? NV : MAXV], g[NV ? NV : MAXV], ga[NV ? NV : MAXV];
  for (int i = 0; i < nv; ++i) { h[i] = v{}; g[i] = v{}; ga[i] = v{}; hs[i] = v{}; }
  T gskip = 0;
  for (int64_t s = 0; s < L; ++s) {
    const T d = (s >= s0 && s < s1) ? dt[s * st] : T(0), du = d * u[s * st];
    for (int i = 0; i < nv; ++i) {
      const v e = V<T>::exp(d * a[i]);
      ds[s * nv + i] = e;
      h[i] = e * h[i] + du * bv[s * sv + i];
      hs[(s + 1) * nv + i] = h[i];
    }
  }
  for (int64_t s = L - 1; s >= 0; --s) {
    const bool valid = s >= s0 && s < s1;
    const T d = valid ? dt[s * st] : T(0), ut = u[s * st], du = d * ut, gyt = gy[s * st];
    v sgb = v{}, sgla = v{};
    for (int i = 0; i < nv; ++i) {
      const int64_t j = s * sv + i, k = s * nv + i;
      v gn = g[i] + gyt * cv[j];
      dC[j] += gyt * hs[k + nv];
      const v dec = ds[k];
      v gla = gn * dec * hs[k];
      sgla += gla * a[i];
      ga[i] += gla * d;
      sgb += gn * bv[j];
      dB[j] += gn * du;
      g[i] = gn * dec;
    }
    const T sb = V<T>::sum(sgb);
    ddt_out[s * st] = valid ? V<T>::sum(sgla) + sb * ut : T(0);
    du_out[s * st] = sb * d + skip * gyt;
    gskip += gyt * ut;
  }
  for (int i = 0; i < nv; ++i) ((v*)dA_row)[i] = ga[i];
  *dskip = gskip;
}

// Row tensors (u, dt, y, gy, du, ddt) share element strides (sb, sd, st) over (batch, channel,
// time); Bt, Ct (and the dB, dC slices) are contiguous (Bsz, L, n). reverse: scan from the last
// frame to the first.
struct Layout {
  int64_t sb, sd, st;
  int reverse;
  const int64_t* lengths;  // per batch item, frames from lengths[b] on have delta 0; null: none
};

// The steps [s0, s1) whose delta is used: frames < lengths[b], in scan order.
inline void valid_steps(const Layout& lay, int64_t b, int64_t L, int64_t& s0, int64_t& s1) {
  int64_t n = lay.lengths ? lay.lengths[b] : L;
  n = n < 0 ? 0 : (n > L ? L : n);
  s0 = lay.reverse ? L - n : 0;
  s1 = lay.reverse ? L : n;
}

template <typename T, int NV>
void fwd(int64_t Bsz, int64_t D, int64_t L, int nv, const T* u, const T* dt, const T* A, const T* Bt,
         const T* Ct, const T* skip, T* y, int threads, Layout lay) {
  const int64_t n = (int64_t)nv * V<T>::W;
  const int64_t first = lay.reverse ? (L - 1) * lay.st : 0, st = lay.reverse ? -lay.st : lay.st;
  const int64_t bfirst = lay.reverse ? (L - 1) * n : 0, sv = lay.reverse ? -nv : nv;
  parallel_rows(Bsz * D, threads, [=](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / D, d = r % D, o = b * lay.sb + d * lay.sd + first;
      const int64_t ob = b * L * n + bfirst;
      int64_t s0, s1;
      valid_steps(lay, b, L, s0, s1);
      fwd_row<T, NV>(L, s0, s1, nv, u + o, dt + o, st, A + d * n, Bt + ob, Ct + ob, sv, skip[d], y + o);
    }
  });
}

// dB, dC: (threads, Bsz, L, n) zeroed by the caller, summed over threads by the caller.
template <typename T, int NV>
void bwd(int64_t Bsz, int64_t D, int64_t L, int nv, const T* u, const T* dt, const T* A, const T* Bt,
         const T* Ct, const T* skip, const T* gy, T* du, T* ddt, T* dA, T* dskip, T* dB, T* dC,
         int threads, Layout lay) {
  const int64_t n = (int64_t)nv * V<T>::W;
  const int64_t first = lay.reverse ? (L - 1) * lay.st : 0, st = lay.reverse ? -lay.st : lay.st;
  const int64_t bfirst = lay.reverse ? (L - 1) * n : 0, sv = lay.reverse ? -nv : nv;
  parallel_rows(Bsz * D, threads, [=](int tid, int64_t r0, int64_t r1) {
    typedef typename V<T>::v v;
    std::vector<v> hs((2 * L + 1) * nv);  // states h_{-1..L-1}, then decays
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / D, d = r % D, o = b * lay.sb + d * lay.sd + first;
      const int64_t ob = b * L * n + bfirst;
      const int64_t slice = (int64_t)tid * Bsz * L * n + ob;
      int64_t s0, s1;
      valid_steps(lay, b, L, s0, s1);
      bwd_row<T, NV>(L, s0, s1, nv, u + o, dt + o, st, A + d * n, Bt + ob, Ct + ob, sv, skip[d], gy + o,
                     (T*)hs.data(), du + o, ddt + o, dA + r * n, dskip + r, dB + slice, dC + slice);
    }
  });
}

}  // namespace

// nv = padded state size / vector width. Specialised for one and two vectors (N = 16 in fp32/fp64).
// skip: the D skip (y += D u), one value per channel; dskip: its gradient per row (b, d).
#define SB_EXPORT(T, SUF)                                                                          \
  extern "C" void sb_scan_fwd_##SUF(int64_t Bsz, int64_t D, int64_t L, int nv, const T* u,        \
                                     const T* dt, const T* A, const T* Bt, const T* Ct,           \
                                     const T* skip, T* y, int threads, int64_t sb, int64_t sd,    \
                                     int64_t st, int rev, const int64_t* lens) {                                       \
    const Layout lay{sb, sd, st, rev, lens};                                                             \
    if (nv == 1) fwd<T, 1>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, y, threads, lay);                \
    else if (nv == 2) fwd<T, 2>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, y, threads, lay);           \
    else fwd<T, 0>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, y, threads, lay);                        \
  }                                                                                                \
  extern "C" void sb_scan_bwd_##SUF(int64_t Bsz, int64_t D, int64_t L, int nv, const T* u,        \
                                     const T* dt, const T* A, const T* Bt, const T* Ct,           \
                                     const T* skip, const T* gy, T* du, T* ddt, T* dA, T* dskip,  \
                                     T* dB, T* dC, int threads, int64_t sb, int64_t sd,           \
                                     int64_t st, int rev, const int64_t* lens) {                                       \
    const Layout lay{sb, sd, st, rev, lens};                                                             \
    if (nv == 1)                                                                                   \
      bwd<T, 1>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, gy, du, ddt, dA, dskip, dB, dC, threads, lay); \
    else if (nv == 2)                                                                              \
      bwd<T, 2>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, gy, du, ddt, dA, dskip, dB, dC, threads, lay); \
    else                                                                                           \
      bwd<T, 0>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, gy, du, ddt, dA, dskip, dB, dC, threads, lay); \
  }

SB_EXPORT(float, f32)
SB_EXPORT(double, f64)
"""


def _bind(lib: ctypes.CDLL) -> None:
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    for suffix in ("f32", "f64"):
        getattr(lib, f"sb_scan_fwd_{suffix}").argtypes = (
            [i64, i64, i64, i32] + [ptr] * 7 + [i32, i64, i64, i64, i32, ptr]
        )
        getattr(lib, f"sb_scan_bwd_{suffix}").argtypes = (
            [i64, i64, i64, i32] + [ptr] * 13 + [i32, i64, i64, i64, i32, ptr]
        )


_KERNEL = Kernel("selective_scan", "SPEECHBUDGET_SCAN", _SOURCE, _bind, "using the PyTorch scan")


def load() -> Optional[ctypes.CDLL]:
    """The compiled library, building it on first use; None (warned once) when that fails.

    ``SPEECHBUDGET_SCAN=torch`` skips it (the PyTorch path), e.g. to compare the two.
    """
    return _KERNEL.load()


def available() -> bool:
    return load() is not None


def supports(*tensors: torch.Tensor) -> bool:
    """The kernel handles contiguous-able fp32/fp64 CPU tensors with at most MAX_STATE states."""
    t0 = tensors[0]
    return (
        t0.device.type == "cpu"
        and t0.dtype in (torch.float32, torch.float64)
        and all(t.device.type == "cpu" and t.dtype == t0.dtype for t in tensors)
        and tensors[2].size(-1) <= MAX_STATE
    )


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 64-byte aligned: the kernel loads A, B, C (and stores their gradients) as
    whole vectors. Fresh CPU allocations are aligned; a view with an offset is copied."""
    t = t.contiguous()
    return t if t.data_ptr() % 64 == 0 else t.clone()


def _suffix(dtype: torch.dtype) -> str:
    return "f32" if dtype == torch.float32 else "f64"


def _threads(threads: Optional[int]) -> int:
    return max(1, int(threads or torch.get_num_threads()))


def _padded(A, B, C, time_major: bool = False):
    """States padded to whole 64-byte vectors: A (D, n), B and C time-major (B, L, n), n = nv * width.

    ``B``, ``C`` come as (B, N, L), or (B, L, N) with ``time_major``. Padded states have
    A = B = C = 0: decay 1, no drive, no readout, so they stay 0 and change nothing.
    """
    width = 64 // A.element_size()
    state = A.size(1)
    nv = -(-state // width)
    extra = nv * width - state
    if not time_major:
        B, C = B.transpose(1, 2), C.transpose(1, 2)
    a = _aligned(torch.nn.functional.pad(A, (0, extra)))
    bt = _aligned(torch.nn.functional.pad(B, (0, extra)))
    ct = _aligned(torch.nn.functional.pad(C, (0, extra)))
    return a, bt, ct, nv


def _layout(u: torch.Tensor, time_major: bool):
    """(batch, dim, length) and the element strides (batch, channel, time) of contiguous ``u``."""
    if time_major:
        batch, length, dim = u.shape
        return (batch, dim, length), (length * dim, 1, dim)
    batch, dim, length = u.shape
    return (batch, dim, length), (dim * length, length, 1)


def scan_forward(
    u,
    delta,
    A,
    B,
    C,
    threads: Optional[int] = None,
    time_major: bool = False,
    reverse: bool = False,
    D: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``y`` of the recurrence plus the skip ``D * u`` when ``D`` (D,) is given (no gate), in ``u``'s layout.

    ``lengths`` (B,): frames from ``lengths[b]`` on count as padding, their ``delta`` as 0 (the
    state passes through unchanged; their ``delta`` gets gradient 0).

    ``u``, ``delta``: (B, D, L) and ``B``, ``C``: (B, N, L); with ``time_major`` (B, L, D) and
    (B, L, N), the layout of a Linear's output, so no transposed copies are needed. ``reverse``
    scans from the last frame to the first (as flipping time, scanning and flipping back).
    """
    lib = load()
    u, delta = u.contiguous(), delta.contiguous()
    a, bt, ct, nv = _padded(A, B, C, time_major)
    (batch, dim, length), strides = _layout(u, time_major)
    skip, lens = _skip(D, u, dim), _lengths(lengths)
    y = torch.empty_like(u)
    getattr(lib, f"sb_scan_fwd_{_suffix(u.dtype)}")(
        batch,
        dim,
        length,
        nv,
        *map(_ptr, (u, delta, a, bt, ct, skip, y)),
        _threads(threads),
        *strides,
        int(reverse),
        None if lens is None else _ptr(lens),
    )
    return y


def scan_backward(
    u,
    delta,
    A,
    B,
    C,
    grad_y,
    threads: Optional[int] = None,
    time_major: bool = False,
    reverse: bool = False,
    D: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
):
    """Gradients (u, delta, A, B, C, D) of ``sum(grad_y * y)``, each in its input's layout (see
    :func:`scan_forward`; that of ``D`` is None without ``D``); states recomputed, O(L N) scratch
    per thread."""
    lib = load()
    u, delta, gy = u.contiguous(), delta.contiguous(), grad_y.contiguous().to(u.dtype)
    a, bt, ct, nv = _padded(A, B, C, time_major)
    (batch, dim, length), strides = _layout(u, time_major)
    state, padded = A.size(1), a.size(1)
    nthreads = max(1, min(_threads(threads), batch * dim))
    skip, lens = _skip(D, u, dim), _lengths(lengths)
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    da_rows = u.new_empty(batch, dim, padded)
    dskip_rows = u.new_empty(batch, dim)
    db = u.new_zeros(nthreads, batch, length, padded)
    dc = u.new_zeros(nthreads, batch, length, padded)
    getattr(lib, f"sb_scan_bwd_{_suffix(u.dtype)}")(
        batch,
        dim,
        length,
        nv,
        *map(_ptr, (u, delta, a, bt, ct, skip, gy, du, ddelta, da_rows, dskip_rows, db, dc)),
        nthreads,
        *strides,
        int(reverse),
        None if lens is None else _ptr(lens),
    )
    grad_b = (db[0] if nthreads == 1 else db.sum(0))[..., :state]
    grad_c = (dc[0] if nthreads == 1 else dc.sum(0))[..., :state]
    if not time_major:
        grad_b, grad_c = grad_b.transpose(1, 2), grad_c.transpose(1, 2)
    grad_d = None if D is None else dskip_rows.sum(0).to(D.dtype)
    return du, ddelta, da_rows.sum(0)[:, :state], grad_b, grad_c, grad_d


def _lengths(lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if lengths is None else lengths.to(device="cpu", dtype=torch.int64).contiguous()


def _skip(D: Optional[torch.Tensor], u: torch.Tensor, dim: int) -> torch.Tensor:
    """The skip weights the kernel reads: ``D`` in ``u``'s dtype, or zeros (no skip)."""
    return u.new_zeros(dim) if D is None else D.detach().to(u.dtype).contiguous()
