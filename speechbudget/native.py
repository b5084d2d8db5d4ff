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
    "-fopenmp-simd",
    "-ffp-contract=fast",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-std=c++17",
    "-shared",
    "-fPIC",
]


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
