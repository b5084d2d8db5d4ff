#!/usr/bin/env bash
# The main job on a fresh machine: install, then run the quickstart recipe on the embedded
# synthetic corpus (espeak-ng), ending in a WER table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
noise=()
[ -d ../shared/data/noise ] && noise=(--noise-dir ../shared/data/noise --snr 20)
speechbudget prepare synthetic --hours 0.2 --out exp/quickstart/data -j 2 "${noise[@]}"
speechbudget data describe exp/quickstart/data/synthetic
