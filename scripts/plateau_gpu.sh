#!/usr/bin/env bash
# On a lent GPU machine (no ../shared, no package registry): a stage 1 trained to a plateau (32 epochs,
# docs/RESULTS.md "stage 1 to a plateau") for each seed, then scripts/evidence.sh's stage-2 runs, each from the
# stage 1 of its own seed: by default the paper recipe's full model and its control (the base loss alone) and
# the authors' full model, 5 seeds; stopped at a deadline so that whatever finished comes back.
#
#   here:  python bench/gpu_carry.py --out .gpu     (Re-DocRED mini + the bundled encoder in fp16: 47 MiB)
#          the ujson wheel in .whl/ (scripts/evidence_gpu.sh says how)
#   there: bash scripts/plateau_gpu.sh OUT           (OUT gets plateau.log and runs.tar.gz, without checkpoints)
#   CPU smoke test: TINY=1 SEEDS=1 bash scripts/plateau_gpu.sh /tmp/plateau_tiny
#
# Runs land in RUNS_DIR/stage1/s<seed> (stage 1: train.py's defaults, head LR 1e-3, batch 4, bf16, its best
# epoch scored at K = 0 in dev_result.json) and RUNS_DIR/<recipe>/<variant>/s<seed> (evidence.sh: 6 stage-2
# epochs at inference LR 1e-3, best.pt scored at K = 0..4). Settings through the environment:
# SEEDS="66 67 68 69 70"  KINDS="paper/full paper/control authors/full" (RECIPE/VARIANT of evidence.sh)
# RUNS="RECIPE/VARIANT/SEED ..." (instead of SEEDS x KINDS: exactly these runs, started in this order, and a stage 1
# for each of their seeds)
# STAGE1_EPOCHS=32  EPOCHS=6  JOBS=15 (stage-2 runs at once)  AMP=bf16 (TINY: auto)  BUDGET=540 (seconds from
# the start after which unfinished runs are stopped; they save last.pt)  RUNS_DIR=runs/gpu_plateau
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/plateau_gpu.sh OUT}
mkdir -p "$OUT"
LOG=$OUT/plateau.log
source scripts/gpu_lib.sh
export SEEDS=${SEEDS:-66 67 68 69 70} KINDS=${KINDS:-paper/full paper/control authors/full}
export RUNS_DIR=${RUNS_DIR:-runs/gpu_plateau} BUDGET=${BUDGET:-540}
gpu_environment
gpu_ujson || exit 1
if [ -n "${TINY:-}" ]; then
  export STAGE1_EPOCHS=${STAGE1_EPOCHS:-1} EPOCHS=${EPOCHS:-1} JOBS=${JOBS:-3} LIMITS="--max_train_docs 8 --max_eval_docs 8"
  export AMP=${AMP:-auto}  # a CPU: bf16 only where it has the instructions for it (docs/PERFORMANCE.md 1.2)
else
  export STAGE1_EPOCHS=${STAGE1_EPOCHS:-32} EPOCHS=${EPOCHS:-6} JOBS=${JOBS:-15} LIMITS="" AMP=${AMP:-bf16}
  gpu_mps_start
fi
if [ -n "${RUNS:-}" ]; then  # exactly these runs, in this order, and a stage 1 for each of their seeds
  read -r -d '' -a runs <<< "$RUNS"
  RUNS="${runs[*]}"  # on one line, as evidence.sh reads it
  SEEDS=$(printf '%s\n' "${runs[@]##*/}" | sort -un | paste -sd' ')
else
  runs=""
  for seed in $SEEDS; do for kind in $KINDS; do runs+=" $kind/$seed"; done; done
  RUNS=${runs# }
fi
export SEEDS RUNS
log "stage 1 ($STAGE1_EPOCHS epochs) for seeds $SEEDS, then ($JOBS at a time, budget ${BUDGET}s): $RUNS"

stage1_then_stage2() {  # every seed's stage 1 at once (resumed where stopped), then the stage-2 runs from them
  local seed
  local -a limits
  read -r -a limits <<< "$LIMITS"
  mkdir -p "$RUNS_DIR/stage1"
  for seed in $SEEDS; do
    gpu_stage1 "$RUNS_DIR/stage1/s$seed" --data_dir .gpu/redocred --train_file train_mini.json \
      --dev_file dev_mini.json --test_file '' --model_name_or_path .gpu/encoder --amp "$AMP" --seed "$seed" \
      --stage1_epochs "$STAGE1_EPOCHS" --stage2_epochs 0 --num_iterations 0 --classifier_lr 1e-3 \
      --train_batch_size 4 --threads 1 "${limits[@]}"
  done
  wait
  DATA=.gpu/redocred THREADS=1 EXTRA="--inference_lr 1e-3 $LIMITS" \
    bash scripts/evidence.sh "$RUNS_DIR/stage1/s{seed}/best_stage1.pt" "$RUNS_DIR"
}

gpu_run_stages
