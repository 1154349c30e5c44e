#!/usr/bin/env bash
# DocRED, BERT-base (cased), the paper's Table 7 settings: stage 1 batch 8, 30 epochs, LR 5e-5 (encoder)
# / 1e-4 (classifier); stage 2 batch 8, 15 epochs, LR 1e-5 (base module) / 1e-4 (inference module).
# K = 3, N_I = 2. Data in dataset/docred (see dataset/README.md). Extra flags are passed to train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset docred --data_dir dataset/docred \
  --train_file train_annotated.json --dev_file dev.json --test_file test.json \
  --transformer_type bert --model_name_or_path bert-base-cased \
  --train_batch_size 8 --test_batch_size 16 --num_labels 4 \
  --stage1_epochs 30 --encoder_lr 5e-5 --classifier_lr 1e-4 \
  --stage2_epochs 15 --stage2_base_lr 1e-5 --inference_lr 1e-4 \
  --num_iterations 3 --num_inference_layers 2 --seed 66 \
  --save_path runs/docred_bert "$@"
