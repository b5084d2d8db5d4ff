#!/usr/bin/env bash
# Install everything speechbudget needs on a fresh machine (idempotent).
# System: espeak-ng (synthetic corpus) and sox, through apt-get when missing and we are root; flite
# (a second text-to-speech engine) and g++ (compiled CPU kernels) when apt-get can install them.
# Python: torch pinned to 2.13.0 (the CPU build here; an unpinned torch pulls GBs of CUDA wheels),
# then the package itself with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing espeak-ng and sox with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox >/dev/null
  else
    echo "[setup] espeak-ng (and sox) are missing: install them, e.g. 'sudo apt-get install espeak-ng sox'" >&2
    exit 1
  fi
fi

# flite: the second text-to-speech engine (`tts: {engine: flite}`, four voices from real recordings);
# only recipes that ask for it need it, the tests use it
if ! command -v flite >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing flite (tts.engine: flite) with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite >/dev/null \
    || echo "[setup] flite not installed: tts.engine: flite will stop with how to install it" >&2
fi

# g++ builds the compiled CPU kernels on first use (BiMamba's selective scan, ScaledAdam's update,
# the Zipformer's attention, Swoosh and depthwise convolution);
# without it their slower PyTorch paths run
if ! command -v g++ >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing g++ (the compiled CPU kernels) with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null \
    || echo "[setup] g++ not installed: the slower PyTorch scan, optimizer and Zipformer ops will run" >&2
fi

"$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "[setup] ok: $("$PY" -c 'import speechbudget, torch; print("speechbudget", speechbudget.__version__, "torch", torch.__version__)')"
echo "[setup] selective scan on CPU: $("$PY" -c 'from speechbudget.models import scan_cpu; print("compiled" if scan_cpu.available() else "PyTorch (no compiler)")')"
echo "[setup] ScaledAdam on CPU: $("$PY" -c 'from speechbudget.train import scaled_adam_cpu; print("compiled" if scaled_adam_cpu.load() else "PyTorch (no compiler)")')"
echo "[setup] Zipformer on CPU: $("$PY" -c 'from speechbudget.models import zipformer_cpu; print("compiled" if zipformer_cpu.load() else "PyTorch (no compiler)")')"
