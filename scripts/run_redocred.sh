#!/usr/bin/env bash
# Re-DocRED (Tan et al., 2022), BERT-base with the DocRED settings of Table 7. Ign F1 is computed
# against the file given as --train_file. Data in dataset/redocred (see dataset/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset docred --data_dir dataset/redocred \
  --train_file train_revised.json --dev_file dev_revised.json --test_file test_revised.json \
  --transformer_type bert --model_name_or_path bert-base-cased \
  --train_batch_size 8 --test_batch_size 16 --num_labels 4 \
  --stage1_epochs 30 --encoder_lr 5e-5 --classifier_lr 1e-4 \
  --stage2_epochs 15 --stage2_base_lr 1e-5 --inference_lr 1e-4 \
  --save_path runs/redocred_bert "$@"
