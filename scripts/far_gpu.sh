#!/usr/bin/env bash
# On a lent GPU machine (no ../shared, no package registry): docs/RESULTS.md's test "Facts the encoder cannot
# compose" at full size. The CPU runs keep the two hops of a never-stated fact apart with 96 words of filler and a
# 96-token encoder window (a stand-in); here the filler is 512 words and the encoder reads ATLOP's 512-token
# windows, so every document is longer than 512 tokens (about 690) and no window holds both hops, as in a long
# real document. Per seed a stage 1 (bilinear pair features, 4 epochs), then from it the paper recipe and the
# authors' recipe with positives withheld from R_0 (--withhold_max 1.0), 4 stage-2 epochs each; stopped at a
# deadline so that whatever finished comes back.
#
#   here:  python bench/gpu_carry.py --out .gpu     (the bundled encoder in fp16; the script writes the documents)
#          the ujson wheel in .whl/ (scripts/evidence_gpu.sh says how)
#   there: bash scripts/far_gpu.sh OUT     (OUT gets far.log and runs.tar.gz: the runs without checkpoints, and
#          the data, for scripts/demo_report.py --gold RUNS_DIR/data/dev.json --runs RUNS_DIR/paper/full/s*)
#   CPU smoke test: TINY=1 SEEDS=2 bash scripts/far_gpu.sh /tmp/far_tiny
#
# Runs land in RUNS_DIR/data (scripts/make_demo_data.py --gap GAP --seed 1), RUNS_DIR/stage1/s<seed> and, through
# scripts/evidence.sh (best.pt scored at K = 0..4), RUNS_DIR/paper/full/s<seed> (the paper recipe) and
# RUNS_DIR/withhold/authors/full/s<seed> (the authors' recipe with --withhold_max 1.0). Settings through the
# environment: SEEDS="2 3 4 5"  GAP=512  TRAIN_DOCS=1000  DEV_DOCS=200  STAGE1_EPOCHS=4  EPOCHS=4
# AMP=bf16 (TINY: auto)  BUDGET=540 (seconds from the start)  RUNS_DIR=runs/gpu_far
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/far_gpu.sh OUT}
mkdir -p "$OUT"
LOG=$OUT/far.log
source scripts/gpu_lib.sh
export SEEDS=${SEEDS:-2 3 4 5} GAP=${GAP:-512} RUNS_DIR=${RUNS_DIR:-runs/gpu_far} BUDGET=${BUDGET:-540}
gpu_environment
gpu_ujson || exit 1
if [ -n "${TINY:-}" ]; then
  export TRAIN_DOCS=${TRAIN_DOCS:-8} DEV_DOCS=${DEV_DOCS:-4} STAGE1_EPOCHS=${STAGE1_EPOCHS:-1} EPOCHS=${EPOCHS:-1}
  export AMP=${AMP:-auto}  # a CPU: bf16 only where it has the instructions for it (docs/PERFORMANCE.md 1.2)
else
  export TRAIN_DOCS=${TRAIN_DOCS:-1000} DEV_DOCS=${DEV_DOCS:-200} STAGE1_EPOCHS=${STAGE1_EPOCHS:-4} EPOCHS=${EPOCHS:-4}
  export AMP=${AMP:-bf16}
  gpu_mps_start
fi
mkdir -p "$RUNS_DIR/stage1"
python scripts/make_demo_data.py --out "$RUNS_DIR/data" --train "$TRAIN_DOCS" --dev "$DEV_DOCS" --test 0 \
  --gap "$GAP" --seed 1 2>&1 | tee -a "$LOG"
log "seeds $SEEDS: stage 1 ($STAGE1_EPOCHS epochs), then paper and withhold ($EPOCHS epochs; budget ${BUDGET}s)"

stage1_then_stage2() {  # every seed's stage 1 at once, then both recipes from each seed's own stage 1
  local seed paper="" withhold=""
  for seed in $SEEDS; do
    gpu_stage1 "$RUNS_DIR/stage1/s$seed" --data_dir "$RUNS_DIR/data" --train_file train.json --dev_file dev.json \
      --test_file '' --model_name_or_path .gpu/encoder --amp "$AMP" --seed "$seed" --stage1_epochs "$STAGE1_EPOCHS" \
      --stage2_epochs 0 --encoder_lr 1e-4 --classifier_lr 1e-3 --train_batch_size 4 --threads 1 \
      --pair_features bilinear
    paper+=" paper/full/$seed" withhold+=" authors/full/$seed"
  done
  wait
  # every run of both recipes at once: JOBS = the number of seeds in each evidence.sh
  export DATA=$RUNS_DIR/data TRAIN=train.json DEV=dev.json THREADS=1 EPOCHS JOBS=$(wc -w <<< "$SEEDS")
  RUNS=$paper EXTRA="--inference_lr 1e-3" \
    bash scripts/evidence.sh "$RUNS_DIR/stage1/s{seed}/best_stage1.pt" "$RUNS_DIR" &
  RUNS=$withhold EXTRA="--inference_lr 1e-3 --withhold_max 1.0" \
    bash scripts/evidence.sh "$RUNS_DIR/stage1/s{seed}/best_stage1.pt" "$RUNS_DIR/withhold" &
  wait
}

gpu_run_stages
