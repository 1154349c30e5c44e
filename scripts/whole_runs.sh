#!/usr/bin/env bash
# Whole train.py runs, stage 1 then stage 2 in one run, each with its own seed for both stages (scripts/evidence.sh
# starts every stage 2 from ONE stage-1 checkpoint instead):
#   bf16/SEED   the full model in bf16 (--amp bf16): stage 1 for STAGE1_EPOCHS at head LR 1e-3 (the schedule of
#               docs/RESULTS.md's stage 1), then STAGE2_EPOCHS of stage 2 at inference LR 1e-3
#   fp32/SEED   the same run in fp32 (--amp none)
#   nopre/SEED  Table 4's w/o pre-training in bf16: --skip_stage1, stage 2 alone for STAGE1_EPOCHS + STAGE2_EPOCHS
#               epochs (as many as the full model's two stages), from the raw encoder
#   ctrl/SEED   the control for the gain over stage 1 (docs/RESULTS.md, row 12): bf16/SEED with every stage-2 loss
#               but the base module's switched off (--loss_weights W,0,0,0 --contrastive none, W the recipe's
#               base-loss weight: 5 authors, 1 paper) and the stage-2 epoch selected at K = 0 (--num_iterations
#               0): the base module just trains longer
# Then best.pt is evaluated at K = 0..4 (DIR/eval_k4) and best_stage1.pt at K = 0 (DIR/eval_stage1).
#
#   RUNS="bf16/66 fp32/66 nopre/66" bash scripts/whole_runs.sh OUT
#
# Runs land in OUT/<kind>/s<seed> (log: OUT/<kind>/s<seed>.log); a finished one (eval_k4/eval_scores.json) is
# skipped and an interrupted one resumed, so the same command continues after a stop. Settings through the
# environment: RECIPE=authors  STAGE1_EPOCHS=16  STAGE2_EPOCHS=6  BATCH=4  JOBS=2 (runs at once)  THREADS=1
# DATA=dataset/redocred TRAIN=train_mini.json DEV=dev_mini.json  MODEL= (--model_name_or_path; empty: the
# bundled encoder)  EXTRA= (more train.py flags for every run)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/run_queue.sh
OUT=${1:?usage: RUNS="bf16/66 fp32/66 nopre/66" bash scripts/whole_runs.sh OUT}
read -r -a queue <<< "${RUNS:?RUNS=\"KIND/SEED ...\" (KIND: bf16, fp32, nopre or ctrl)}"
RECIPE=${RECIPE:-authors} STAGE1_EPOCHS=${STAGE1_EPOCHS:-16} STAGE2_EPOCHS=${STAGE2_EPOCHS:-6} BATCH=${BATCH:-4}
JOBS=${JOBS:-2} THREADS=${THREADS:-1}
DATA=${DATA:-dataset/redocred} TRAIN=${TRAIN:-train_mini.json} DEV=${DEV:-dev_mini.json}
read -r -a extra <<< "${EXTRA:-}"
data=(--data_dir "$DATA" --train_file "$TRAIN" --dev_file "$DEV" --test_file '' --threads "$THREADS")
[ -z "${MODEL:-}" ] || data+=(--model_name_or_path "$MODEL")

run() {  # run DIR KIND SEED
  local dir=$1 kind=$2 seed=$3 amp=bf16 control
  local stages=(--stage1_epochs "$STAGE1_EPOCHS" --stage2_epochs "$STAGE2_EPOCHS")
  [ "$kind" = fp32 ] && amp=none
  [ "$kind" = nopre ] && stages=(--skip_stage1 --stage2_epochs $((STAGE1_EPOCHS + STAGE2_EPOCHS)))
  if [ "$kind" = ctrl ]; then read -r -a control <<< "$(control_flags "$RECIPE")"; stages+=("${control[@]}"); fi
  [ -f "$dir/eval_k4/eval_scores.json" ] && { echo "done: $dir"; return; }
  train_or_resume "$dir" "$THREADS" "${data[@]}" --amp "$amp" --recipe "$RECIPE" --seed "$seed" "${stages[@]}" \
    --classifier_lr 1e-3 --inference_lr 1e-3 --train_batch_size "$BATCH" "${extra[@]}"
  if [ "$kind" != nopre ]; then
    python train.py "${data[@]}" --amp "$amp" --evaluate_only --load_path "$dir/best_stage1.pt" --num_iterations 0 \
      --save_path "$dir/eval_stage1" --overwrite
  fi
  python train.py "${data[@]}" --amp "$amp" --evaluate_only --load_path "$dir/best.pt" --num_iterations 4 \
    --save_path "$dir/eval_k4" --overwrite
}

for item in "${queue[@]}"; do
  case ${item%%/*} in
    bf16|fp32|nopre|ctrl) ;;
    *) echo "not KIND/SEED with KIND bf16, fp32, nopre or ctrl: $item" >&2; exit 2;;
  esac
  [[ ${item#*/} =~ ^[0-9]+$ ]] || { echo "not KIND/SEED with a numeric SEED: $item" >&2; exit 2; }
done
run_queue "$OUT" "${queue[@]}"
