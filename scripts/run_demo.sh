#!/usr/bin/env bash
# The main job on a machine with no GPU and no model hub: both training stages with the bundled
# all-MiniLM-L6-v2 encoder on CPU, then dev scores and result.json.
# Data: the Re-DocRED mini split in dataset/redocred when present (first DEMO_TRAIN_DOCS documents),
# otherwise a synthetic dataset written by scripts/make_demo_data.py.
# Scaled down for a CPU: few epochs and documents. Extra flags are passed to train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
SAVE=${SAVE:-runs/demo}
if [ -f dataset/redocred/train_mini.json ] && [ -f dataset/redocred/dev_mini.json ]; then
  TEST=dataset/docred/test.json; [ -f "$TEST" ] || TEST=""
  DATA=(--data_dir dataset/redocred --train_file train_mini.json --dev_file dev_mini.json --test_file "$TEST"
        --max_train_docs "${DEMO_TRAIN_DOCS:-64}" --max_eval_docs "${DEMO_EVAL_DOCS:-32}")
else
  [ -f dataset/demo/train.json ] || python scripts/make_demo_data.py --out dataset/demo
  DATA=(--data_dir dataset/demo --train_file train.json --dev_file dev.json --test_file test.json)
fi
python train.py "${DATA[@]}" --save_path "$SAVE" --overwrite \
  --train_batch_size 4 --stage1_epochs "${STAGE1_EPOCHS:-3}" --stage2_epochs "${STAGE2_EPOCHS:-1}" "$@"
