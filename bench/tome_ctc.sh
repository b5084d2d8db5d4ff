#!/bin/bash
# ToMe + unmerge in CTC fine-tuning from scratch on the quickstart corpus: r = 0 vs r = 8 (same FLOP
# budget as the quickstart's fine-tuning, same seed), transformer-tiny, greedy WER on the 6 test voices.
# Usage: bash bench/tome_ctc.sh   (work folders under /tmp; ~45 min on 2 busy cores). Results: the
# *.train.json / *.decode.json files and /usr/bin/time's CPU seconds in *.train.err.
set -e
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=2
D=/tmp/qsfull/data/synthetic
speechbudget run recipes/quickstart.yaml exp_dir=/tmp/qsfull --stop-stage prepare > /tmp/qsfull.prepare.log 2>&1
for r in 0 8; do
  E=/tmp/qs-tome/r$r
  if [ ! -f $E/done.json ]; then
    /usr/bin/time -v speechbudget finetune recipes/quickstart.yaml exp_dir=$E train_cuts=$D/cuts_train.jsonl.gz dev_cuts=$D/cuts_dev.jsonl.gz \
      "encoder={preset: transformer-tiny, tome: {r: $r, unmerge: true}}" ctc.init_checkpoint=null ctc.freeze_encoder_steps=0 --json > $E.train.json 2> $E.train.err
    speechbudget decode $E $D/cuts_test.jsonl.gz --json > $E.decode.json 2> $E.decode.err
    cp $E.decode.json $E/done.json
  fi
done
