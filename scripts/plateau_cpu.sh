#!/usr/bin/env bash
# scripts/plateau_gpu.sh's design without a GPU or a deadline: for each seed a stage 1 trained to a plateau
# (32 epochs, docs/RESULTS.md "Stage 1"), then scripts/evidence.sh's stage-2 runs of that seed from it, one at a
# time. Each seed is a lane of its own, LANES lanes at once (one CPU thread each by default), so that a lane's
# stage-2 runs start as soon as its own stage 1 ends. Stage 1 is resumed where stopped and every stage-2 run is
# skipped when finished or resumed, so the same command continues after a stop, in a later session as well.
#
#   SEEDS="66 67" bash scripts/plateau_cpu.sh OUT
#
# Runs land in OUT/stage1/s<seed> (log: OUT/stage1/s<seed>.log) and OUT/<recipe>/<variant>/s<seed> (evidence.sh:
# best.pt scored at K = 0..4 in eval_k4); each lane's own log is OUT/lane_s<seed>.log. Settings through the
# environment: SEEDS="66 67"  KINDS="authors/full authors/no_fusion paper/full paper/control" (RECIPE/VARIANT of
# evidence.sh, run in this order in every lane)  RUNS="RECIPE/VARIANT/SEED ..." (instead of SEEDS x KINDS: exactly
# these runs, each in its seed's lane, in this order)  STAGE1_EPOCHS=32  EPOCHS=6  LANES=2  THREADS=1  AMP=auto
# DATA=dataset/redocred  TRAIN=train_mini.json  DEV=dev_mini.json  MODEL= (--model_name_or_path; empty: the
# bundled encoder)  EXTRA= (more train.py flags for every run, stage 1 included)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/run_queue.sh  # train_or_resume
OUT=${1:?usage: SEEDS=\"66 67\" bash scripts/plateau_cpu.sh OUT}
SEEDS=${SEEDS:-66 67} KINDS=${KINDS:-authors/full authors/no_fusion paper/full paper/control}
STAGE1_EPOCHS=${STAGE1_EPOCHS:-32} LANES=${LANES:-2} THREADS=${THREADS:-1}
export DATA=${DATA:-dataset/redocred} TRAIN=${TRAIN:-train_mini.json} DEV=${DEV:-dev_mini.json}
export EPOCHS=${EPOCHS:-6} AMP=${AMP:-auto} THREADS
read -r -d '' -a runs <<< "${RUNS:-$(for s in $SEEDS; do for k in $KINDS; do echo "$k/$s"; done; done)}"
RUNS="${runs[*]}" CHECK_ONLY=1 bash scripts/evidence.sh - "$OUT" || exit 2  # a bad name now, not after stage 1
seeds=$(printf '%s\n' "${runs[@]##*/}" | awk '!seen[$0]++')  # in order of first appearance
read -r -a extra <<< "${EXTRA:-}"
stage1=(--data_dir "$DATA" --train_file "$TRAIN" --dev_file "$DEV" --test_file '' --amp "$AMP"
        --stage1_epochs "$STAGE1_EPOCHS" --stage2_epochs 0 --num_iterations 0 --classifier_lr 1e-3
        --train_batch_size 4 --threads "$THREADS")
[ -z "${MODEL:-}" ] || stage1+=(--model_name_or_path "$MODEL")

lane() {  # lane SEED: its stage 1 (skipped where finished, resumed where stopped), then its runs, one at a time
  local seed=$1 dir=$OUT/stage1/s$1 mine=() run
  for run in "${runs[@]}"; do [ "${run##*/}" = "$seed" ] && mine+=("$run"); done
  train_or_resume "$dir" "$THREADS" "${stage1[@]}" --seed "$seed" "${extra[@]}" >> "$dir.log" 2>&1
  [ -f "$dir/eval_scores.json" ] || { echo "stage 1 of seed $seed unfinished: $dir.log"; return 1; }
  RUNS="${mine[*]}" JOBS=1 EXTRA="--inference_lr 1e-3 ${EXTRA:-}" \
    bash scripts/evidence.sh "$OUT/stage1/s{seed}/best_stage1.pt" "$OUT"
}

mkdir -p "$OUT/stage1"
declare -A seed_of=()  # running lane's pid -> its seed
status=0
reap() {  # wait for the next lane to end; a lane that failed sets status 1, named on stderr
  local pid
  wait -n -p pid
  [ $? = 0 ] || { echo "lane of seed ${seed_of[$pid]} unfinished: $OUT/lane_s${seed_of[$pid]}.log" >&2; status=1; }
  unset "seed_of[$pid]"
}
for seed in $seeds; do
  [ "${#seed_of[@]}" -lt "$LANES" ] || reap
  lane "$seed" > "$OUT/lane_s$seed.log" 2>&1 &
  seed_of[$!]=$seed
done
while [ "${#seed_of[@]}" -gt 0 ]; do reap; done
[ "$status" = 0 ] && echo "finished: $OUT"
exit "$status"
