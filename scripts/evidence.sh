#!/usr/bin/env bash
# Stage-2 runs behind docs/RESULTS.md's claims table: every recipe x variant x seed from ONE stage-1 checkpoint,
# then an evaluation of each best.pt at K = 4 (dev scores after every pass 0..4, and dev_result_k*.json).
#
#   bash scripts/evidence.sh STAGE1_CKPT OUT SEED [SEED ...]
#
# A STAGE1_CKPT holding {seed} names one checkpoint per seed instead (runs/stage1/s{seed}/best_stage1.pt: each
# run starts from the stage 1 of its own seed).
# Runs land in OUT/<recipe>/<variant>/s<seed>; a finished run (eval_k4/eval_scores.json exists) is skipped and an
# interrupted one resumed, so the script can be re-run after a stop. Settings through the environment:
#   RECIPES="paper authors"   VARIANTS="full"   (also: no_contrastive no_fusion no_eca freeze_base ni1, and
#   control: the base module's loss alone, at the recipe's weight, selected at K = 0; its passes are untrained)
#   DATA=dataset/redocred TRAIN=train_mini.json DEV=dev_mini.json TEST= (a labelled test file: scored too)
#   DATASET=docred  EPOCHS=8  BATCH=4
#   JOBS=2 (runs at once)  THREADS=1 (CPU threads per run)  EXTRA= (more train.py flags for every run)
#   AMP=auto (train.py --amp, for the training run and for its final evaluation alike)
#   RUNS="RECIPE/VARIANT/SEED ..." (instead of RECIPES x VARIANTS x SEEDS: exactly these runs, started in this
#   order; no SEED arguments then)   CHECK_ONLY=1 (check the runs' names, exit 2 naming a bad one, train nothing)
# The stage-1 checkpoint fixes the encoder and the data flags it was trained with (train.py reads them from it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/run_queue.sh
if [ $# -lt 2 ] || { [ $# -eq 2 ] && [ -z "${RUNS:-}" ]; }; then
  echo "usage: bash scripts/evidence.sh STAGE1_CKPT OUT SEED [SEED ...]  (or RUNS=... and no SEED)" >&2; exit 2
fi
CKPT=$1 OUT=$2; shift 2
RECIPES=${RECIPES:-paper authors} VARIANTS=${VARIANTS:-full}
queue=()  # RECIPE/VARIANT/SEED, in the order the runs start (seed by seed unless RUNS says otherwise)
if [ -n "${RUNS:-}" ]; then
  read -r -a queue <<< "$RUNS"
else
  for seed in "$@"; do for recipe in $RECIPES; do for variant in $VARIANTS; do
    queue+=("$recipe/$variant/$seed"); done; done; done
fi
DATA=${DATA:-dataset/redocred} TRAIN=${TRAIN:-train_mini.json} DEV=${DEV:-dev_mini.json} TEST=${TEST:-}
DATASET=${DATASET:-docred} AMP=${AMP:-auto}
EPOCHS=${EPOCHS:-8} BATCH=${BATCH:-4} JOBS=${JOBS:-2} THREADS=${THREADS:-1}
read -r -a extra <<< "${EXTRA:-}"
data=(--dataset "$DATASET" --data_dir "$DATA" --train_file "$TRAIN" --dev_file "$DEV" --test_file "$TEST"
      --threads "$THREADS" --amp "$AMP")
declare -A flags=([full]="" [no_contrastive]="--contrastive none" [no_fusion]="--no_fusion" [no_eca]="--eca full"
                  [freeze_base]="--freeze_base" [ni1]="--num_inference_layers 1" [control]="")

run() {  # run DIR RECIPE VARIANT SEED: train stage 2 (or resume it), then evaluate best.pt at K = 4
  local dir=$1 recipe=$2 variant=$3 seed=$4
  [ -f "$dir/eval_k4/eval_scores.json" ] && { echo "done: $dir"; return; }
  if [ "$variant" = control ]; then read -r -a vflags <<< "$(control_flags "$recipe")"  # its weights by recipe
  else read -r -a vflags <<< "${flags[$variant]}"; fi
  train_or_resume "$dir" "$THREADS" "${data[@]}" --load_path "${CKPT//\{seed\}/$seed}" --recipe "$recipe" \
    --seed "$seed" --stage2_epochs "$EPOCHS" --train_batch_size "$BATCH" "${vflags[@]}" "${extra[@]}"
  python train.py "${data[@]}" --evaluate_only --load_path "$dir/best.pt" --num_iterations 4 \
    --save_path "$dir/eval_k4" --overwrite
}

for item in "${queue[@]}"; do
  IFS=/ read -r recipe variant seed <<< "$item"
  if ! [[ $seed =~ ^[0-9]+$ ]] || [ -z "${flags[$variant]+set}" ]; then
    echo "not RECIPE/VARIANT/SEED with a known variant and a numeric seed: $item" >&2; exit 2
  fi
done
[ -z "${CHECK_ONLY:-}" ] || exit 0  # the runs are well formed; nothing is trained (scripts/plateau_cpu.sh)
run_queue "$OUT" "${queue[@]}"
