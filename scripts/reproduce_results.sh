#!/usr/bin/env bash
# The runs behind docs/RESULTS.md, at the scale set below: Re-DocRED mini (train_mini -> dev_mini) main result,
# Table 4 ablations and Table 2 (K x N_I), and CDR (train -> dev for selection, test reported).
#
#   bash scripts/reproduce_results.sh [SEED ...]        (default: one seed, 66)
#
# Every Re-DocRED stage-2 variant starts from the same stage-1 checkpoint (best_stage1.pt of the seed's
# stage-1 run), as the authors do; "w/o pre-training" (--skip_stage1) trains stage 2 from the raw encoder.
# A finished step (its eval_scores.json exists) is skipped and an interrupted one is resumed, so the script
# can be re-run after a stop. Settings through the environment (defaults: the CPU scale of docs/RESULTS.md;
# the paper's Table 7 scale is STAGE1_EPOCHS=30 STAGE2_EPOCHS=15 BATCH=8 with BERT-base, see scripts/run_*.sh):
#   DATA=dataset  OUT=runs/results  JOBS=2 (runs at once)  THREADS=1 (CPU threads per run, 0 = torch default)
#   STAGE1_EPOCHS=6 STAGE2_EPOCHS=2 BATCH=4  CDR_STAGE1_EPOCHS=3 CDR_STAGE2_EPOCHS=1  MODEL= (bundled encoder)
#   STAGE2_SEEDS= (e.g. "67 68": the full model's stage 2 again with these seeds, from the same stage 1: the
#                  stage-2 part of the seed-to-seed spread, for a machine that cannot afford whole extra seeds)
# Then: python scripts/summarize.py ... (the commands are printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-dataset} OUT=${OUT:-runs/results} JOBS=${JOBS:-2} THREADS=${THREADS:-1}
STAGE1_EPOCHS=${STAGE1_EPOCHS:-6} STAGE2_EPOCHS=${STAGE2_EPOCHS:-2} BATCH=${BATCH:-4}
CDR_STAGE1_EPOCHS=${CDR_STAGE1_EPOCHS:-3} CDR_STAGE2_EPOCHS=${CDR_STAGE2_EPOCHS:-1}
SEEDS=("${@:-66}")
model=()
[ -n "${MODEL:-}" ] && model=(--model_name_or_path "$MODEL")
re=(--data_dir "$DATA/redocred" --train_file train_mini.json --dev_file dev_mini.json --test_file ''
    --train_batch_size "$BATCH" --threads "$THREADS" --stage1_epochs "$STAGE1_EPOCHS"
    --stage2_epochs "$STAGE2_EPOCHS" "${model[@]}")
# Table 4 rows (name and stage-2 flags) and N_I = 1 (Table 2): all but no_pretraining start from the seed's
# stage 1. Then the extra stage-2 seeds of the full model (a later --seed wins).
ablations=("full:" "no_contrastive:--contrastive none" "ni1:--num_inference_layers 1" "no_fusion:--no_fusion"
           "no_eca:--eca full" "negative_pairs:--contrastive simclr" "freeze_base:--freeze_base"
           "no_pretraining:--skip_stage1")
variants=("${ablations[@]}")
for t in ${STAGE2_SEEDS:-}; do variants+=("full_seed$t:--seed $t"); done

# train DIR ARGS...: a fresh run, or the continuation of an interrupted one; nothing when it has finished.
train() {
  local dir=$1; shift
  if [ -f "$dir/eval_scores.json" ]; then echo "done: $dir"; return; fi
  if [ -f "$dir/last.pt" ]; then python train.py --resume "$dir" --threads "$THREADS"
  else python train.py "$@" --save_path "$dir"; fi
}

# evaluate CKPT OUTDIR K ARGS...: dev scores after every pass 0..K of a checkpoint (eval_scores.json dev_by_k).
evaluate() {
  local ckpt=$1 out=$2 k=$3; shift 3
  [ -f "$out/eval_scores.json" ] || python train.py --evaluate_only --load_path "$ckpt" --num_iterations "$k" \
    --save_path "$out" "$@"
}

wait_for_slot() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done; }

for seed in "${SEEDS[@]}"; do
  dir=$OUT/s$seed
  mkdir -p "$dir"
  train "$dir/re_stage1" "${re[@]}" --seed "$seed" --stage2_epochs 0
  for v in "${variants[@]}"; do
    name=${v%%:*}
    read -r -a flags <<< "${v#*:}"
    [ "$name" = no_pretraining ] || flags=(--load_path "$dir/re_stage1/best_stage1.pt" "${flags[@]}")
    wait_for_slot
    ( train "$dir/re_$name" "${re[@]}" --seed "$seed" "${flags[@]}"
      # Table 2: K = 0..4 from one evaluation; K = 0 alone: the base module's dev_result.json for the bootstrap.
      case $name in full|ni1) evaluate "$dir/re_$name/best.pt" "$dir/re_$name/eval_k4" 4 "${re[@]}" ;; esac
      [ "$name" != full ] || evaluate "$dir/re_$name/best.pt" "$dir/re_$name/eval_k0" 0 "${re[@]}" ) &
  done
  wait_for_slot
  train "$dir/cdr" --dataset cdr --data_dir "$DATA/cdr" --train_file train_filter.data \
    --dev_file dev_filter.data --test_file test_filter.data --num_labels 1 --train_batch_size "$BATCH" \
    --threads "$THREADS" --stage1_epochs "$CDR_STAGE1_EPOCHS" --stage2_epochs "$CDR_STAGE2_EPOCHS" \
    "${model[@]}" --seed "$seed" &
  wait
done

runs() { local out=(); for seed in "${SEEDS[@]}"; do out+=("$OUT/s$seed/$1"); done; (IFS=,; echo "${out[*]}"); }
cat <<EOF
Tables:
  python scripts/summarize.py --model both "Re-DocRED mini=$(runs re_full)" "CDR=$(runs cdr)"
  python scripts/summarize.py --model full "ATLOP (stage 1)=$(runs re_stage1)" $(for v in "${ablations[@]}"; do \
    n=${v%%:*}; printf '"%s=%s" ' "$n" "$(runs "re_$n")"; done)
  python scripts/summarize.py "full, stage-2 seeds=$(runs re_full)$(for t in ${STAGE2_SEEDS:-}; do \
    printf ',%s' "$(runs "re_full_seed$t")"; done)"
  python scripts/summarize.py --by_k "N_I 2=$(runs re_full/eval_k4)" "N_I 1=$(runs re_ni1/eval_k4)"
  python scripts/bootstrap.py --gold $DATA/redocred/dev_mini.json --train $DATA/redocred/train_mini.json \\
    --a $OUT/s${SEEDS[0]}/re_full/eval_k0/dev_result.json --b $OUT/s${SEEDS[0]}/re_full/dev_result.json
EOF
