#!/usr/bin/env bash
# docs/RESULTS.md's GPU evidence in one command on a lent GPU machine (no ../shared, no package registry):
# the main comparison (D: both recipes) and Table 4 / Figure 5 (E: the authors' recipe without the contrastive
# loss, without fusion, without ECA, with a frozen base) for 5 seeds each, all from one stage-1 checkpoint,
# many runs at once on the one GPU, stopped at a deadline so that whatever finished comes back.
#
#   here:  python bench/gpu_carry.py --stage1 runs/re_stage1/best_stage1.pt --out .gpu     (about 50 MiB)
#          python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#            --platform manylinux_2_17_x86_64 -d .whl ujson     (only if the GPU machine's Python lacks ujson)
#   there: bash scripts/evidence_gpu.sh OUT        (OUT gets evidence.log, halves.json and runs.tar.gz)
#   CPU smoke test: TINY=1 bash scripts/evidence_gpu.sh /tmp/evidence_tiny
#
# Runs start in this order: D (paper/full, authors/full) for seeds 66-70, then E seed by seed, JOBS at a time
# (scripts/evidence.sh: 6 stage-2 epochs at inference LR 1e-3, then best.pt evaluated at K = 0..4). Settings
# through the environment: SEEDS="66 67 68 69 70"  VARIANTS="no_contrastive no_fusion no_eca freeze_base"
# JOBS=12  EPOCHS=6  BUDGET=470 (seconds from the start after which unfinished runs are stopped; they save
# last.pt and continue with the same command).
# Several processes share the GPU through CUDA MPS when nvidia-cuda-mps-control is there and a CUDA process
# starts under it; otherwise by time-slicing (evidence.log says which).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/evidence_gpu.sh OUT}
mkdir -p "$OUT"
LOG=$OUT/evidence.log
source scripts/gpu_lib.sh
SEEDS=${SEEDS:-66 67 68 69 70} VARIANTS=${VARIANTS:-no_contrastive no_fusion no_eca freeze_base}
BUDGET=${BUDGET:-470} RUNS_DIR=${RUNS_DIR:-runs/gpu_ev}
gpu_environment
gpu_ujson || exit 1

log "stage-1 checkpoint from .gpu/"
python bench/gpu_carry.py --rebuild .gpu/stage1.pt 2>&1 | tee -a "$LOG"
[ -f .gpu/stage1.pt ] || { log "no .gpu/stage1.pt: run bench/gpu_carry.py --stage1 first"; exit 1; }

if [ -n "${TINY:-}" ]; then
  EPOCHS=${EPOCHS:-1} JOBS=${JOBS:-2}
  EXTRA="--inference_lr 1e-3 --max_train_docs 8 --max_eval_docs 8"
else
  EPOCHS=${EPOCHS:-6} JOBS=${JOBS:-12}
  EXTRA="--inference_lr 1e-3"
  gpu_mps_start
fi

runs=""
for seed in $SEEDS; do runs+=" paper/full/$seed authors/full/$seed"; done
for seed in $SEEDS; do for v in $VARIANTS; do runs+=" authors/$v/$seed"; done; done
log "runs ($JOBS at a time, budget ${BUDGET}s):$runs"

# The stage-1 checkpoint itself on dev (the base module before stage 2, ATLOP), beside the first runs.
python train.py --evaluate_only --load_path .gpu/stage1.pt --data_dir .gpu/redocred --train_file train_mini.json \
  --dev_file dev_mini.json --test_file '' --save_path "$RUNS_DIR/stage1_eval" --overwrite \
  > "$OUT/stage1_eval.log" 2>&1 &

# evidence.sh in a session of its own, so that the deadline stops it with every run it started.
RUNS=$runs DATA=.gpu/redocred EPOCHS=$EPOCHS JOBS=$JOBS THREADS=1 EXTRA=$EXTRA \
  run_until "$BUDGET" 'echo "$(ls "$RUNS_DIR"/*/*/*/eval_k4/eval_scores.json 2>/dev/null | wc -l) runs done"' \
  "$OUT/evidence_sh.log" bash scripts/evidence.sh .gpu/stage1.pt "$RUNS_DIR"
wait
cat "$OUT/evidence_sh.log" >> "$LOG"
log "$(ls "$RUNS_DIR"/*/*/*/eval_k4/eval_scores.json 2>/dev/null | wc -l) runs done"

# Figure 5: mean |W_c| on the F half and the R half of every best.pt (of stopped runs too).
mapfile -t best < <(ls "$RUNS_DIR"/*/*/*/best.pt 2>/dev/null)
[ ${#best[@]} -gt 0 ] && python scripts/plot.py halves "${best[@]}" > "$OUT/halves.json" 2>> "$LOG"
gpu_finish
