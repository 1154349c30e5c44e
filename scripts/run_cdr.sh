#!/usr/bin/env bash
# CDR, SciBERT (cased), Table 7: stage 1 batch 8, 20 epochs, LR 1e-5 (encoder) / 5e-5 (classifier);
# stage 2 batch 8, 10 epochs, LR 1e-6 (base module) / 5e-5 (inference module). One relation (CID):
# at most one label per pair. F1 on the positive class over the candidate pairs, as ATLOP reports.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset cdr --data_dir dataset/cdr \
  --train_file train_filter.data --dev_file dev_filter.data --test_file test_filter.data \
  --transformer_type bert --model_name_or_path allenai/scibert_scivocab_cased \
  --train_batch_size 8 --test_batch_size 16 --num_labels 1 \
  --stage1_epochs 20 --encoder_lr 1e-5 --classifier_lr 5e-5 \
  --stage2_epochs 10 --stage2_base_lr 1e-6 --inference_lr 5e-5 \
  --save_path runs/cdr_scibert "$@"
