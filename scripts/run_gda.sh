#!/usr/bin/env bash
# GDA, SciBERT (cased), Table 7: stage 1 batch 6, 10 epochs, LR 2e-5 (encoder) / 8e-5 (classifier);
# stage 2 batch 6, 5 epochs, LR 2e-6 (base module) / 8e-5 (inference module). One relation (GDA).
# dev.data is the 5,839-document split of the GDA training set (Christopoulou et al., 2019).
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset gda --data_dir dataset/gda \
  --train_file train.data --dev_file dev.data --test_file test.data \
  --transformer_type bert --model_name_or_path allenai/scibert_scivocab_cased \
  --train_batch_size 6 --test_batch_size 16 --num_labels 1 \
  --stage1_epochs 10 --encoder_lr 2e-5 --classifier_lr 8e-5 \
  --stage2_epochs 5 --stage2_base_lr 2e-6 --inference_lr 8e-5 \
  --save_path runs/gda_scibert "$@"
