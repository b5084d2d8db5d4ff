#!/bin/bash
# SSL + VGS at toy scale (BENCHMARKS.md section 10): the scenes-ssl-vgs recipe's three schedules for
# seeds 0 and 1, retrieval on the held-out scenes (dev + test: unseen scenes and voices), ABX on FSDD.
# Usage: bash bench/ssl_vgs.sh WORK   (then: python bench/ssl_vgs_summary.py WORK)
set -euo pipefail
W=${1:-/tmp/ssl-vgs}
export OMP_NUM_THREADS=1
sb="python3 -m speechbudget.cli"
mkdir -p "$W"
$sb prepare synthetic-scenes --scenes 160 --captions-per-scene 3 --voices 24 --image-size 32 --seed 0 --out "$W/data" --json > /dev/null
$sb kmeans "$W/data/synthetic-scenes" --out "$W/km" --num-clusters 50 --encoder zipformer-nano --json > /dev/null
python3 -c "from lhotse import CutSet as C; k='$W/km/cuts_'; (C.from_file(k+'dev.jsonl.gz') + C.from_file(k+'test.jsonl.gz')).to_file(k+'heldout.jsonl.gz')"
mkdir -p "$W/fsdd"  # 20 recordings (digits 0-9 twice) of each of 4 speakers
for s in george jackson nicolas theo; do for i in $(seq 0 19); do
  cp "../shared/data/fsdd/recordings/$((i % 10))_${s}_$((i / 10)).wav" "$W/fsdd/"; done; done
$sb prepare fsdd "$W/fsdd" --test-speakers theo --out "$W/fsdd-data" --json > /dev/null
for S in 0 1; do  # the two seeds run side by side, one thread each
  (
    E="$W/exp-s$S"
    $sb train-multi recipes/scenes-ssl-vgs.yaml seed=$S exp_dir="$E" train_cuts="$W/km/cuts_train.jsonl.gz" \
      dev_cuts="$W/km/cuts_dev.jsonl.gz" --json > "$E.train.json"
    for sch in sequential simultaneous vgs-only; do
      $sb evaluate-retrieval "$E/$sch" "$W/km/cuts_heldout.jsonl.gz" --json > /dev/null
      $sb probe abx "$E/$sch" "$W/fsdd-data/fsdd/cuts_train.jsonl.gz" --json > /dev/null
    done
  ) &
done
wait
