#!/usr/bin/env bash
# DocRED, BERT-base (cased), the paper's Table 7 settings (as scripts/run_bert.sh) on several GPUs with
# DistributedDataParallel, one process per GPU started by torchrun (NCCL). See docs/DISTRIBUTED.md.
#
# The batch flags are PER GPU. Global batch = train_batch_size x GPUs (all nodes) x gradient_accumulation_steps;
# Table 7's batch 8 is, for example:
#   NGPU=4 BATCH=2            (default: 4 GPUs x 2 documents = 8)
#   NGPU=8 BATCH=1            (8 x 1)
#   NGPU=2 BATCH=4            (2 x 4)
#   NGPU=2 BATCH=2 ACCUM=2    (2 x 2 x 2 micro-batches)
#   NNODES=2 NGPU=4 BATCH=1   (2 nodes x 4 GPUs x 1)
# Learning rates are Table 7's for global batch 8; they are not rescaled for another global batch.
#
# Multi-node: run this script on every node with the same NNODES, MASTER_ADDR (a host name or address of
# node 0 that the other nodes can reach) and MASTER_PORT, and NODE_RANK=0..NNODES-1. --save_path should be
# on a filesystem every node sees for --resume (rank 0 writes all outputs; see docs/DISTRIBUTED.md).
#
# Extra flags are passed to train.py (the last value of a flag wins), e.g. --resume runs/docred_bert_ddp.
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-4}
BATCH=${BATCH:-2}
ACCUM=${ACCUM:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
GLOBAL=$((BATCH * NGPU * NNODES * ACCUM))
if [ "$GLOBAL" -ne 8 ]; then
  echo "note: global batch ${BATCH} x ${NGPU} GPUs x ${NNODES} nodes x ${ACCUM} = ${GLOBAL}, Table 7 uses 8" >&2
fi
# torchrun sets OMP_NUM_THREADS=1 per process unless it is set; the data loading here is light.
python -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NGPU" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  train.py --dataset docred --data_dir dataset/docred \
  --train_file train_annotated.json --dev_file dev.json --test_file test.json \
  --transformer_type bert --model_name_or_path bert-base-cased \
  --train_batch_size "$BATCH" --gradient_accumulation_steps "$ACCUM" --test_batch_size 16 --num_labels 4 \
  --stage1_epochs 30 --encoder_lr 5e-5 --classifier_lr 1e-4 \
  --stage2_epochs 15 --stage2_base_lr 1e-5 --inference_lr 1e-4 \
  --num_iterations 3 --num_inference_layers 2 --seed 66 \
  --save_path runs/docred_bert_ddp "$@"
