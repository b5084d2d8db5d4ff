#!/usr/bin/env bash
# The main job on a fresh machine: install everything, then run recipes/quickstart.yaml on the
# embedded synthetic corpus (espeak-ng). Ends with a WER table; re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
speechbudget run recipes/quickstart.yaml "$@"
