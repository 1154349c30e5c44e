#!/usr/bin/env bash
# DocRED, RoBERTa-large, Table 7: stage 1 batch 4, 30 epochs, LR 5e-5 / 1e-4; stage 2 batch 4,
# 15 epochs, LR 5e-6 (base module) / 1e-4 (inference module). K = 3, N_I = 2.
# Does not fit a small GPU at batch 4: see scripts/run_bert_ddp.sh and docs/DISTRIBUTED.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset docred --data_dir dataset/docred \
  --train_file train_annotated.json --dev_file dev.json --test_file test.json \
  --transformer_type roberta --model_name_or_path roberta-large \
  --train_batch_size 4 --test_batch_size 8 --num_labels 4 \
  --stage1_epochs 30 --encoder_lr 5e-5 --classifier_lr 1e-4 \
  --stage2_epochs 15 --stage2_base_lr 5e-6 --inference_lr 1e-4 \
  --num_iterations 3 --num_inference_layers 2 --seed 66 \
  --save_path runs/docred_roberta "$@"
