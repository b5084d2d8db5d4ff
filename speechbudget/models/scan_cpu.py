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
a frame's states are contiguous). Rows (b, d) are split across ``threads`` OpenMP threads.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..native import SIMD_PRELUDE, Kernel

MAX_STATE = 256  # state sizes above this use the PyTorch path (states live in registers / on the stack)
#: steps per time block: a thread scans all its rows over one block before the next (see ``fwd``
#: in the C source); results do not depend on it (tests run small blocks)
TIME_BLOCK = 64

_SOURCE = (
    SIMD_PRELUDE
    + r"""
namespace {

constexpr int MAXV = 32;  // vectors of state per row (MAX_STATE on the Python side)

// Steps [c0, c1) of one row's forward, from the state h (updated in place):
// h_s = exp(dt_s A) h_{s-1} + dt_s u_s B_s;  y_s = C_s . h_s + skip u_s.
// u, dt, y step by st elements per step; Bt, Ct by sv vectors (both negative for a reverse scan,
// the pointers then at the last frame). Steps outside [s0, s1) are padding: delta 0.
// NV vectors of state (0: runtime nv).
template <typename T, int NV>
inline void fwd_steps(int64_t c0, int64_t c1, int64_t s0, int64_t s1, int nvr, const T* u, const T* dt,
                      int64_t st, const T* A, const T* Bt, const T* Ct, int64_t sv, T skip, T* y,
                      typename V<T>::v* h) {
  typedef typename V<T>::v v;
  const int nv = NV ? NV : nvr;
  const v* a = (const v*)A;
  const v* bv = (const v*)Bt;
  const v* cv = (const v*)Ct;
  v hr[NV ? NV : MAXV];
  for (int i = 0; i < nv; ++i) hr[i] = h[i];
  for (int64_t s = c0; s < c1; ++s) {
    const T d = (s >= s0 && s < s1) ? dt[s * st] : T(0), du = d * u[s * st];
    v acc = v{};
    for (int i = 0; i < nv; ++i) {
      hr[i] = V<T>::exp(d * a[i]) * hr[i] + du * bv[s * sv + i];
      acc += hr[i] * cv[s * sv + i];
    }
    y[s * st] = V<T>::sum(acc) + skip * u[s * st];
  }
  for (int i = 0; i < nv; ++i) h[i] = hr[i];
}

// Backward of steps [c0, c1) of one row, from the state before c0 (h0) and the adjoint g after
// c1 - 1 (updated in place to the adjoint before c0): recompute and keep the chunk's states
// (scratch row 0 = h0) and decays, then run g_s = a_{s+1} g_{s+1} + gy_s C_s backwards.
// ga (dA), gskip and dB, dC (this thread's (L, nv) slice, stepping like Bt, Ct) accumulate.
template <typename T, int NV>
inline void bwd_steps(int64_t c0, int64_t c1, int64_t s0, int64_t s1, int nvr, const T* u, const T* dt,
                      int64_t st, const T* A, const T* Bt, const T* Ct, int64_t sv, T skip, const T* gy,
                      const typename V<T>::v* h0, typename V<T>::v* hs, T* du_out, T* ddt_out,
                      typename V<T>::v* gio, typename V<T>::v* gaio, T* gskip, T* dBp, T* dCp) {
  typedef typename V<T>::v v;
  const int nv = NV ? NV : nvr;
  const int64_t n = c1 - c0;
  const v* a = (const v*)A;
  const v* bv = (const v*)Bt;
  const v* cv = (const v*)Ct;
  v* ds = hs + (n + 1) * nv;  // the decays exp(dt_s A), kept from the recomputation
  v* dB = (v*)dBp;
  v* dC = (v*)dCp;
  v h[NV ? NV : MAXV], g[NV ? NV : MAXV], ga[NV ? NV : MAXV];
  for (int i = 0; i < nv; ++i) { h[i] = h0[i]; hs[i] = h0[i]; g[i] = gio[i]; ga[i] = gaio[i]; }
  for (int64_t s = c0; s < c1; ++s) {
    const int64_t k = (s - c0) * nv;
    const T d = (s >= s0 && s < s1) ? dt[s * st] : T(0), du = d * u[s * st];
    for (int i = 0; i < nv; ++i) {
      const v e = V<T>::exp(d * a[i]);
      ds[k + i] = e;
      h[i] = e * h[i] + du * bv[s * sv + i];
      hs[k + nv + i] = h[i];
    }
  }
  T gsk = 0;
  for (int64_t s = c1 - 1; s >= c0; --s) {
    const bool valid = s >= s0 && s < s1;
    const T d = valid ? dt[s * st] : T(0), ut = u[s * st], du = d * ut, gyt = gy[s * st];
    v sgb = v{}, sgla = v{};
    for (int i = 0; i < nv; ++i) {
      const int64_t j = s * sv + i, k = (s - c0) * nv + i;
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
    gsk += gyt * ut;
  }
  for (int i = 0; i < nv; ++i) { gio[i] = g[i]; gaio[i] = ga[i]; }
  *gskip += gsk;
}

// Row tensors (u, dt, y, gy, du, ddt) share element strides (sb, sd, st) over (batch, channel,
// time); Bt, Ct (and the dB, dC slices) are contiguous (Bsz, L, n). reverse: scan from the last
// frame to the first. chunk: steps per time block (below).
struct Layout {
  int64_t sb, sd, st;
  int reverse;
  const int64_t* lengths;  // per batch item, frames from lengths[b] on have delta 0; null: none
  int64_t chunk;
};

// The steps [s0, s1) whose delta is used: frames < lengths[b], in scan order.
inline void valid_steps(const Layout& lay, int64_t b, int64_t L, int64_t& s0, int64_t& s1) {
  int64_t n = lay.lengths ? lay.lengths[b] : L;
  n = n < 0 ? 0 : (n > L ? L : n);
  s0 = lay.reverse ? L - n : 0;
  s1 = lay.reverse ? L : n;
}

// One row (b, d)'s pointers, positioned at its first step in scan order.
struct Row {
  int64_t o, ob, s0, s1, d;
};

inline Row row_at(const Layout& lay, int64_t r, int64_t D, int64_t L, int64_t n) {
  Row w;
  const int64_t b = r / D;
  w.d = r % D;
  w.o = b * lay.sb + w.d * lay.sd + (lay.reverse ? (L - 1) * lay.st : 0);
  w.ob = b * L * n + (lay.reverse ? (L - 1) * n : 0);
  valid_steps(lay, b, L, w.s0, w.s1);
  return w;
}

// Time blocks outside, rows inside: a thread runs steps [c0, c0 + chunk) of all its rows before
// the next block, carrying each row's state. Rows (b, d) and (b, d + 1) read neighbouring floats
// of the same cache lines, so a block's lines are loaded once for 16 rows and stay in L1/L2 at
// any length; a whole row at a time re-read them from memory once the row outgrew the cache.
// starts (optional, (blocks, Bsz * D, n)): each row's state before each block, for the backward.
template <typename T, int NV>
void fwd(int64_t Bsz, int64_t D, int64_t L, int nv, const T* u, const T* dt, const T* A, const T* Bt,
         const T* Ct, const T* skip, T* y, T* starts, int threads, Layout lay) {
  typedef typename V<T>::v v;
  const int64_t n = (int64_t)nv * V<T>::W;
  const int64_t st = lay.reverse ? -lay.st : lay.st, sv = lay.reverse ? -nv : nv;
  parallel_rows(Bsz * D, threads, [=](int, int64_t r0, int64_t r1) {
    std::vector<v> h((r1 - r0) * nv, v{});
    for (int64_t c0 = 0, c = 0; c0 < L; c0 += lay.chunk, ++c) {
      const int64_t c1 = c0 + lay.chunk < L ? c0 + lay.chunk : L;
      for (int64_t r = r0; r < r1; ++r) {
        const Row w = row_at(lay, r, D, L, n);
        v* hr = h.data() + (r - r0) * nv;
        if (starts)
          for (int i = 0; i < nv; ++i) ((v*)starts)[(c * Bsz * D + r) * nv + i] = hr[i];
        fwd_steps<T, NV>(c0, c1, w.s0, w.s1, nv, u + w.o, dt + w.o, st, A + w.d * n, Bt + w.ob,
                         Ct + w.ob, sv, skip[w.d], y + w.o, hr);
      }
    }
  });
}

// dB, dC: (threads, Bsz, L, n) zeroed by the caller, summed over threads by the caller.
// The blocks run from the last to the first, each recomputing its own states from the row's state
// at its start (``starts``, kept by the forward): O(chunk N) scratch per thread besides them.
template <typename T, int NV>
void bwd(int64_t Bsz, int64_t D, int64_t L, int nv, const T* u, const T* dt, const T* A, const T* Bt,
         const T* Ct, const T* skip, const T* gy, const T* starts, T* du, T* ddt, T* dA, T* dskip,
         T* dB, T* dC, int threads, Layout lay) {
  const int64_t n = (int64_t)nv * V<T>::W;
  const int64_t st = lay.reverse ? -lay.st : lay.st, sv = lay.reverse ? -nv : nv;
  const int64_t blocks = L > 0 ? (L + lay.chunk - 1) / lay.chunk : 0;
  parallel_rows(Bsz * D, threads, [=](int tid, int64_t r0, int64_t r1) {
    typedef typename V<T>::v v;
    const int64_t rows = r1 - r0;
    std::vector<v> g(rows * nv, v{}), ga(rows * nv, v{});
    const int64_t span = lay.chunk < L ? lay.chunk : L;
    std::vector<v> hs((2 * span + 1) * nv);  // one block's states h_{c0-1..c1-1}, then decays
    std::vector<T> gskip(rows, T(0));
    const int64_t slice = (int64_t)tid * Bsz * L * n;
    for (int64_t c = blocks - 1; c >= 0; --c) {
      const int64_t c0 = c * lay.chunk, c1 = c0 + lay.chunk < L ? c0 + lay.chunk : L;
      for (int64_t r = r0; r < r1; ++r) {
        const Row w = row_at(lay, r, D, L, n);
        const int64_t q = (r - r0) * nv;
        bwd_steps<T, NV>(c0, c1, w.s0, w.s1, nv, u + w.o, dt + w.o, st, A + w.d * n, Bt + w.ob,
                         Ct + w.ob, sv, skip[w.d], gy + w.o, (const v*)starts + (c * Bsz * D + r) * nv,
                         hs.data(), du + w.o, ddt + w.o, g.data() + q, ga.data() + q,
                         gskip.data() + (r - r0), dB + slice + w.ob, dC + slice + w.ob);
      }
    }
    for (int64_t r = r0; r < r1; ++r) {
      for (int i = 0; i < nv; ++i) ((v*)(dA + r * n))[i] = ga[(r - r0) * nv + i];
      dskip[r] = gskip[r - r0];
    }
  });
}

}  // namespace

// nv = padded state size / vector width. Specialised for one and two vectors (N = 16 in fp32/fp64).
// skip: the D skip (y += D u), one value per channel; dskip: its gradient per row (b, d).
#define SB_EXPORT(T, SUF)                                                                          \
  extern "C" void sb_scan_fwd_##SUF(int64_t Bsz, int64_t D, int64_t L, int nv, const T* u,        \
                                     const T* dt, const T* A, const T* Bt, const T* Ct,           \
                                     const T* skip, T* y, T* starts, int threads, int64_t sb,     \
                                     int64_t sd,                                                  \
                                     int64_t st, int rev, const int64_t* lens, int64_t chunk) {                        \
    const Layout lay{sb, sd, st, rev, lens, chunk < 1 ? 1 : chunk};                                                             \
    if (nv == 1) fwd<T, 1>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, y, starts, threads, lay);                \
    else if (nv == 2) fwd<T, 2>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, y, starts, threads, lay);           \
    else fwd<T, 0>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, y, starts, threads, lay);                        \
  }                                                                                                \
  extern "C" void sb_scan_bwd_##SUF(int64_t Bsz, int64_t D, int64_t L, int nv, const T* u,        \
                                     const T* dt, const T* A, const T* Bt, const T* Ct,           \
                                     const T* skip, const T* gy, const T* starts, T* du, T* ddt,  \
                                     T* dA, T* dskip,                                             \
                                     T* dB, T* dC, int threads, int64_t sb, int64_t sd,           \
                                     int64_t st, int rev, const int64_t* lens, int64_t chunk) {                        \
    const Layout lay{sb, sd, st, rev, lens, chunk < 1 ? 1 : chunk};                                                             \
    if (nv == 1)                                                                                   \
      bwd<T, 1>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, gy, starts, du, ddt, dA, dskip, dB, dC, threads, lay); \
    else if (nv == 2)                                                                              \
      bwd<T, 2>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, gy, starts, du, ddt, dA, dskip, dB, dC, threads, lay); \
    else                                                                                           \
      bwd<T, 0>(Bsz, D, L, nv, u, dt, A, Bt, Ct, skip, gy, starts, du, ddt, dA, dskip, dB, dC, threads, lay); \
  }

SB_EXPORT(float, f32)
SB_EXPORT(double, f64)
"""
)


def _bind(lib: ctypes.CDLL) -> None:
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    for suffix in ("f32", "f64"):
        getattr(lib, f"sb_scan_fwd_{suffix}").argtypes = (
            [i64, i64, i64, i32] + [ptr] * 8 + [i32, i64, i64, i64, i32, ptr, i64]
        )
        getattr(lib, f"sb_scan_bwd_{suffix}").argtypes = (
            [i64, i64, i64, i32] + [ptr] * 14 + [i32, i64, i64, i64, i32, ptr, i64]
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
    time_block: Optional[int] = None,
    keep_starts: bool = False,
):
    """``y`` of the recurrence plus the skip ``D * u`` when ``D`` (D,) is given (no gate), in ``u``'s layout.

    ``lengths`` (B,): frames from ``lengths[b]`` on count as padding, their ``delta`` as 0 (the
    state passes through unchanged; their ``delta`` gets gradient 0).

    ``u``, ``delta``: (B, D, L) and ``B``, ``C``: (B, N, L); with ``time_major`` (B, L, D) and
    (B, L, N), the layout of a Linear's output, so no transposed copies are needed. ``reverse``
    scans from the last frame to the first (as flipping time, scanning and flipping back).
    ``time_block``: steps per time block of the kernel's loop (speed only; default :data:`TIME_BLOCK`).
    Returns ``(y, starts)``; with ``keep_starts`` ``starts`` holds every row's state at the start of
    every block, which spares :func:`scan_backward` (given the same ``time_block``) one
    recomputation of the states, else it is None.
    """
    lib = load()
    u, delta = u.contiguous(), delta.contiguous()
    a, bt, ct, nv = _padded(A, B, C, time_major)
    (batch, dim, length), strides = _layout(u, time_major)
    skip, lens = _skip(D, u, dim), _lengths(lengths)
    y = torch.empty_like(u)
    time_block = _time_block(time_block)
    blocks = -(-length // time_block)
    starts = u.new_empty(blocks, batch * dim, a.size(1)) if keep_starts else None
    getattr(lib, f"sb_scan_fwd_{_suffix(u.dtype)}")(
        batch,
        dim,
        length,
        nv,
        *map(_ptr, (u, delta, a, bt, ct, skip, y)),
        None if starts is None else _ptr(starts),
        _threads(threads),
        *strides,
        int(reverse),
        None if lens is None else _ptr(lens),
        time_block,
    )
    return y, starts


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
    time_block: Optional[int] = None,
    starts: Optional[torch.Tensor] = None,
):
    """Gradients (u, delta, A, B, C, D) of ``sum(grad_y * y)``, each in its input's layout (see
    :func:`scan_forward`; that of ``D`` is None without ``D``); states recomputed block by block
    from ``starts`` (:func:`scan_forward`'s, same ``time_block``; without them a forward pass makes
    them first); O(time_block N) scratch per thread besides the block starts."""
    lib = load()
    u, delta, gy = u.contiguous(), delta.contiguous(), grad_y.contiguous().to(u.dtype)
    a, bt, ct, nv = _padded(A, B, C, time_major)
    (batch, dim, length), strides = _layout(u, time_major)
    state, padded = A.size(1), a.size(1)
    nthreads = max(1, min(_threads(threads), batch * dim))
    skip, lens = _skip(D, u, dim), _lengths(lengths)
    block = _time_block(time_block)
    if starts is None:
        kw = {"time_major": time_major, "reverse": reverse, "D": D, "lengths": lengths}
        starts = scan_forward(u, delta, A, B, C, threads, time_block=block, keep_starts=True, **kw)[1]
    elif tuple(starts.shape) != (-(-length // block), batch * dim, padded):
        raise ValueError(f"starts {tuple(starts.shape)} were not kept by a forward with time_block {block}")
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
        *map(_ptr, (u, delta, a, bt, ct, skip, gy)),
        _ptr(_aligned(starts)),
        *map(_ptr, (du, ddelta, da_rows, dskip_rows, db, dc)),
        nthreads,
        *strides,
        int(reverse),
        None if lens is None else _ptr(lens),
        block,
    )
    grad_b = (db[0] if nthreads == 1 else db.sum(0))[..., :state]
    grad_c = (dc[0] if nthreads == 1 else dc.sum(0))[..., :state]
    if not time_major:
        grad_b, grad_c = grad_b.transpose(1, 2), grad_c.transpose(1, 2)
    grad_d = None if D is None else dskip_rows.sum(0).to(D.dtype)
    return du, ddelta, da_rows.sum(0)[:, :state], grad_b, grad_c, grad_d


def _time_block(time_block: Optional[int]) -> int:
    """Steps per block: the argument, or :data:`TIME_BLOCK` read at call time (a bench may set it)."""
    return max(1, int(TIME_BLOCK if time_block is None else time_block))


def _lengths(lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if lengths is None else lengths.to(device="cpu", dtype=torch.int64).contiguous()


def _skip(D: Optional[torch.Tensor], u: torch.Tensor, dim: int) -> torch.Tensor:
    """The skip weights the kernel reads: ``D`` in ``u``'s dtype, or zeros (no skip)."""
    return u.new_zeros(dim) if D is None else D.detach().to(u.dtype).contiguous()
