"""Small C++ kernels, built on first use with the system ``g++`` and called through ``ctypes``.

Why not a torch C++ extension: these kernels include no torch headers, so each compiles in about
a second, and ``ctypes`` drops the GIL during the call. One place for what every kernel needs: the
compiler flags, a cache keyed by source, flags and CPU (built with ``-march=native``, so a cache
shared between machines must not mix CPUs), an atomic build (concurrent processes never load a
half-written library) and a one-line warning, once, when a kernel cannot be built; callers then use
their PyTorch path. ``SPEECHBUDGET_<NAME>=torch`` (e.g. ``SPEECHBUDGET_SCAN=torch``) skips a kernel.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)

FLAGS = [
    "-O3",
    "-march=native",
    "-fopenmp",  # parallel_rows runs on the OpenMP threads PyTorch already has (its libgomp)
    "-ffp-contract=fast",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-std=c++17",
    "-shared",
    "-fPIC",
]


#: C++ shared by the kernels (prepended to their sources): ``V<float>`` / ``V<double>``, one
#: 64-byte vector with a vectorised ``exp`` (Cody-Waite range reduction and a short polynomial, so
#: ``g++`` vectorises it without fast-math, which would flip the process's denormal mode, and
#: without libmvec) and a horizontal ``sum``; ``parallel_rows`` splits rows over the OpenMP threads
#: PyTorch's own ops run on. (Starting std::threads per call cost more than it saved at 2 threads:
#: PyTorch's OpenMP workers still spin for work after each op and took the cores from them.)
SIMD_PRELUDE = r"""
#include <cstddef>
#include <cstdint>
#include <omp.h>
#include <cstring>
#include <type_traits>
#include <vector>

namespace sb {

// exp on a vector of floats or doubles (any GCC vector type): 2^k p(r), r = x - k ln2,
// |r| <= ln2/2, a degree-7 (float: < 2 ulp) or degree-12 (double: ~1e-15 relative) Taylor
// polynomial. k is read from the bits of x log2(e) + 1.5 * 2^23 (2^52) rather than by a
// float-to-int conversion, so the template also compiles for dependent vector types.
template <typename v, typename vi> inline v exp_f32(v x) {
  const float lo = -87.3f, hi = 88.7f, magic = 12582912.f;  // 1.5 * 2^23 rounds to nearest
  v xc = x < lo ? lo : (x > hi ? hi : x);
  v t = xc * 1.44269504088896341f + magic;
  v k = t - magic;
  v r = xc - k * 0.693145751953125f - k * 1.42860682030941723212e-6f;
  v p = r * (1.f / 5040) + 1.f / 720;
  p = p * r + 1.f / 120; p = p * r + 1.f / 24; p = p * r + 1.f / 6; p = p * r + 0.5f;
  p = p * r + 1.f; p = p * r + 1.f;
  vi bits = ((vi)t - (vi)(v{} + magic) + 127) << 23;
  v out = p * (v)bits;
  return x < lo ? 0.f : out;
}
template <typename v, typename vi> inline v exp_f64(v x) {
  const double lo = -708.0, hi = 709.0, magic = 6755399441055744.0;  // 1.5 * 2^52
  v xc = x < lo ? lo : (x > hi ? hi : x);
  v t = xc * 1.4426950408889634074 + magic;
  v k = t - magic;
  v r = xc - k * 6.93147180369123816490e-01 - k * 1.90821492927058770002e-10;
  v p = r * (1.0 / 479001600) + 1.0 / 39916800;
  p = p * r + 1.0 / 3628800; p = p * r + 1.0 / 362880; p = p * r + 1.0 / 40320;
  p = p * r + 1.0 / 5040; p = p * r + 1.0 / 720; p = p * r + 1.0 / 120; p = p * r + 1.0 / 24;
  p = p * r + 1.0 / 6; p = p * r + 0.5; p = p * r + 1.0; p = p * r + 1.0;
  vi bits = ((vi)t - (vi)(v{} + magic) + 1023) << 52;
  v out = p * (v)bits;
  return x < lo ? 0.0 : out;
}

// One 64-byte vector of T (16 floats / 8 doubles), its exp and its sum. Without AVX-512, GCC
// carries out a select (``c ? a : b``) on a 64-byte vector lane by lane, ~6x slower: exp then
// works on two 32-byte halves.
template <typename T> struct V {
  typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type I;
  typedef T v __attribute__((vector_size(64)));
  typedef I vi __attribute__((vector_size(64)));
  typedef T h __attribute__((vector_size(32)));
  typedef I hi __attribute__((vector_size(32)));
  static constexpr int W = 64 / sizeof(T);
  template <typename X, typename XI> static inline X exp_of(X x) {
    if constexpr (sizeof(T) == 4) return exp_f32<X, XI>(x);
    else return exp_f64<X, XI>(x);
  }
  // The halves (and back) by shuffles, which stay in registers; a memcpy split went through memory.
  static inline h low(v x) {
    if constexpr (W == 16) return __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
    else return __builtin_shufflevector(x, x, 0, 1, 2, 3);
  }
  static inline h high(v x) {
    if constexpr (W == 16) return __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    else return __builtin_shufflevector(x, x, 4, 5, 6, 7);
  }
  static inline v join(h a, h b) {
    if constexpr (W == 16) return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    else return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7);
  }
  static inline v exp(v x) {
#ifdef __AVX512F__
    return exp_of<v, vi>(x);
#else
    return join(exp_of<h, hi>(low(x)), exp_of<h, hi>(high(x)));
#endif
  }
  // Lane i plus lane i + n/2, halving n down to one lane (the order every kernel's sums have had).
  static inline T sum(v x) {
    const h s = low(x) + high(x);
    T lanes[W / 2];
    std::memcpy(lanes, &s, sizeof s);
    for (int n = W / 4; n >= 1; n /= 2)
      for (int i = 0; i < n; ++i) lanes[i] += lanes[i + n];
    return lanes[0];
  }
};

// The machine's own vector width (64 bytes with AVX-512, else 32), for loops that need no fixed one.
#ifdef __AVX512F__
constexpr int NATIVE_BYTES = 64;
#else
constexpr int NATIVE_BYTES = 32;
#endif
typedef float vfn __attribute__((vector_size(NATIVE_BYTES)));
typedef int32_t vin __attribute__((vector_size(NATIVE_BYTES)));
constexpr int WN = NATIVE_BYTES / 4;  // floats per native vector

// fn(k) for every share k < shares, on up to `shares` of PyTorch's OpenMP threads. A thread takes
// every n-th share when OpenMP gives n < shares threads, so what a share covers (and the per-share
// scratch it fills) never depends on how many threads ran.
template <typename F> void parallel_shares(int shares, F fn) {
  if (shares <= 1) { fn(0); return; }
#pragma omp parallel num_threads(shares)
  {
    const int n = omp_get_num_threads();
    for (int k = omp_get_thread_num(); k < shares; k += n) fn(k);
  }
}

// fn(share, first row, end row) for `threads` even shares of the rows, in order; `share` indexes
// per-share scratch.
template <typename F> void parallel_rows(int64_t rows, int threads, F fn) {
  if (threads <= 1 || rows < 2) { fn(0, 0, rows); return; }
  if (threads > rows) threads = (int)rows;
  parallel_shares(threads, [&](int k) { fn(k, rows * k / threads, rows * (k + 1) / threads); });
}

}  // namespace sb
using sb::V;
using sb::vfn;
using sb::vin;
using sb::WN;
using sb::exp_f32;
using sb::parallel_rows;
using sb::parallel_shares;
"""


def cache_dir() -> Path:
    """Where built kernels, counted costs and calibrations are kept: $SPEECHBUDGET_CACHE_DIR, else
    ~/.cache/speechbudget."""
    return Path(os.environ.get("SPEECHBUDGET_CACHE_DIR") or "~/.cache/speechbudget").expanduser()


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _build(source: str, target: Path) -> None:
    """Compile to a temporary file, then rename into place."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "kernel.cpp", Path(tmp) / "kernel.so"
        src.write_text(source)
        proc = subprocess.run([cxx, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {proc.stderr.strip()[:300]}")
        os.replace(out, target)


class Kernel:
    """A lazily built library: ``load()`` returns the bound ``CDLL``, or None when it cannot run."""

    def __init__(self, name: str, env: str, source: str, bind: Callable[[ctypes.CDLL], None], fallback: str):
        self.name, self.env, self.source, self.bind, self.fallback = name, env, source, bind, fallback
        self._lock = threading.Lock()
        self._lib: Optional[ctypes.CDLL] = None
        self.failed: Optional[str] = None

    def load(self) -> Optional[ctypes.CDLL]:
        if self._lib is not None or self.failed is not None:
            return self._lib
        with self._lock:
            if self._lib is not None or self.failed is not None:
                return self._lib
            if os.environ.get(self.env, "").lower() == "torch":
                self.failed = f"disabled by {self.env}=torch"
                return None
            blob = "\n".join([self.source, " ".join(FLAGS), _cpu_signature()])
            target = cache_dir() / f"{self.name}_{hashlib.sha256(blob.encode()).hexdigest()[:16]}.so"
            try:
                if not target.exists():
                    _build(self.source, target)
                lib = ctypes.CDLL(str(target))
                self.bind(lib)
                self._lib = lib
            except Exception as err:  # any failure means: use the PyTorch path
                self.failed = str(err).splitlines()[0] if str(err) else type(err).__name__
                log.warning(
                    "compiled CPU %s unavailable (%s); %s",
                    self.name.replace("_", " "),
                    self.failed,
                    self.fallback,
                )
        return self._lib
