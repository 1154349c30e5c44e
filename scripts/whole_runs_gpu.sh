#!/usr/bin/env bash
# scripts/whole_runs.sh on a lent GPU machine (no ../shared, no package registry), many runs at once under CUDA
# MPS, stopped at a deadline so that whatever finished comes back: whole runs (stage 1 + stage 2) in bf16 over
# 5 seeds, the same in fp32 over 3, and w/o pre-training over 3, all from the bundled encoder (RUNS takes any
# KIND/SEED of whole_runs.sh, ctrl/SEED included).
#
#   here:  python bench/gpu_carry.py --out .gpu     (Re-DocRED mini + the bundled encoder in fp16: 47 MiB)
#          the ujson wheel in .whl/ (scripts/evidence_gpu.sh says how)
#   there: bash scripts/whole_runs_gpu.sh OUT       (OUT gets whole.log and runs.tar.gz, without checkpoints)
#   CPU smoke test: TINY=1 bash scripts/whole_runs_gpu.sh /tmp/whole_tiny
#
# Settings through the environment: RUNS (default below), JOBS=11, BUDGET=480 (seconds from the start after
# which unfinished runs are stopped), RUNS_DIR=runs/gpu_whole; whole_runs.sh's own (STAGE1_EPOCHS, ...) pass on.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/whole_runs_gpu.sh OUT}
mkdir -p "$OUT"
LOG=$OUT/whole.log
source scripts/gpu_lib.sh
RUNS=${RUNS:-bf16/66 bf16/67 bf16/68 bf16/69 bf16/70 fp32/66 fp32/67 fp32/68 nopre/66 nopre/67 nopre/68}
BUDGET=${BUDGET:-480} RUNS_DIR=${RUNS_DIR:-runs/gpu_whole}
gpu_environment
gpu_ujson || exit 1
if [ -n "${TINY:-}" ]; then
  export STAGE1_EPOCHS=${STAGE1_EPOCHS:-1} STAGE2_EPOCHS=${STAGE2_EPOCHS:-1}
  export EXTRA="--max_train_docs 8 --max_eval_docs 8"
  JOBS=${JOBS:-3}
else
  JOBS=${JOBS:-11}
  gpu_mps_start
fi
log "runs ($JOBS at a time, budget ${BUDGET}s): $RUNS"
RUNS=$RUNS JOBS=$JOBS DATA=.gpu/redocred MODEL=.gpu/encoder \
  run_until "$BUDGET" 'echo "$(ls "$RUNS_DIR"/*/*/eval_k4/eval_scores.json 2>/dev/null | wc -l) runs done;" \
    "stage.epoch of each: $(tail -qn1 "$RUNS_DIR"/*/*/metrics.jsonl 2>/dev/null |
      sed -E "s/^[{]\"stage\": ([0-9]+), \"epoch\": ([0-9]+).*/\1.\2/" | paste -sd" ")"' \
  "$OUT/whole_runs_sh.log" bash scripts/whole_runs.sh "$RUNS_DIR"
cat "$OUT/whole_runs_sh.log" >> "$LOG"
log "$(ls "$RUNS_DIR"/*/*/eval_k4/eval_scores.json 2>/dev/null | wc -l) runs done"
gpu_finish
