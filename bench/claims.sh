#!/usr/bin/env bash
# The seed claims of BENCHMARKS.md, measured on this machine. Every step is an ordinary
# speechbudget command (resumable: re-running skips what is done). Results: exp/claims/,
# summarised by bench/claims_summary.py into bench/results/claims.{json,md}.
#   bash bench/claims.sh [b|c|d|all]
# Claim (a), pretrained vs scratch: bench/pretrain_vs_scratch.py; claim (e), the planner's law
# checked at a larger budget: bench/planner_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
E=exp/claims
R=bench/claims.yaml
what=${1:-all}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per run: runs may share the 2 cores

# one corpus and one set of MFCC k-means targets for every claim (0.5 h of synthetic connected
# digits, 20 dB noise: small enough a task that CTC reaches a measurable WER on this CPU)
speechbudget prepare synthetic --grammar digits --hours 0.5 --seed 1 --out $E/data -j 2 --noise-dir ../shared/data/noise --snr 20 --json >/dev/null
[ -f $E/km/cuts_train.jsonl.gz ] || speechbudget kmeans $E/data/synthetic --out $E/km --num-clusters 100 --max-frames 150000 --json >/dev/null
TEST=$E/data/synthetic/cuts_test.jsonl.gz

pretrain_finetune() {  # NAME ENCODER PRETRAIN_FLOPS [extra pretrain overrides...]
  local name=$1 enc=$2 flops=$3; shift 3
  speechbudget pretrain $R exp_dir=$E/$name/pt encoder=$enc budget.flops=$flops "$@" --json > /dev/null
  speechbudget finetune $R exp_dir=$E/$name/ft ctc.init_checkpoint=$E/$name/pt --json > /dev/null
  speechbudget decode $E/$name/ft $TEST --json > /dev/null
}

if [[ $what == all || $what == b ]]; then   # (b) Zipformer vs Transformer at the same pretraining FLOPs
  pretrain_finetune b-zipformer zipformer-tiny 1.5e12
  pretrain_finetune b-transformer transformer-tiny 1.5e12
fi
if [[ $what == all || $what == d ]]; then   # (d) fresh data vs looping 8x over an eighth of it
  speechbudget pretrain $R exp_dir=$E/d-eighth/pt train_hours=0.05 budget.flops=1.5e12 --json > /dev/null
fi
if [[ $what == all || $what == c ]]; then   # (c) slim vs usual vs wide at ~equal parameters and FLOPs
  for enc in zipformer-tiny-slim zipformer-tiny-wide; do
    speechbudget pretrain $R exp_dir=$E/c-$enc/pt encoder=$enc budget.flops=1.5e12 --json > /dev/null
  done
fi
python bench/claims_summary.py
