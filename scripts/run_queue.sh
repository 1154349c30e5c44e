# Sourced by scripts/evidence.sh, scripts/whole_runs.sh, scripts/plateau_cpu.sh and scripts/gpu_lib.sh: their
# shared queue of runs, and the one rule for a run that may have finished or stopped before.
train_or_resume() {  # train_or_resume DIR THREADS TRAIN_ARGS...: nothing where DIR's run finished (train.py wrote
  # DIR/eval_scores.json), resumed from DIR/last.pt where it stopped, else train.py TRAIN_ARGS saving into DIR
  local dir=$1 threads=$2; shift 2
  if [ -f "$dir/eval_scores.json" ]; then return 0
  elif [ -f "$dir/last.pt" ]; then python train.py --resume "$dir" --threads "$threads"
  else python train.py --save_path "$dir" --overwrite "$@"  # TRAIN_ARGS last: a caller's extra flags win
  fi
}

run_queue() {  # run_queue OUT ITEM...: for each ITEM A/.../SEED, the caller's `run DIR A ... SEED` in the background
  # with DIR = OUT/A/.../sSEED and its output in DIR.log, at most JOBS at once; then exit status 1 (naming them) if
  # any run has no DIR/eval_k4/eval_scores.json
  local out=$1 item dir missing=""; shift
  local -a fields
  for item in "$@"; do
    dir=$out/${item%/*}/s${item##*/}
    IFS=/ read -r -a fields <<< "$item"
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    mkdir -p "$dir"
    run "$dir" "${fields[@]}" > "$dir.log" 2>&1 &
  done
  wait || true
  for item in "$@"; do
    dir=$out/${item%/*}/s${item##*/}
    [ -f "$dir/eval_k4/eval_scores.json" ] || missing+="$dir"$'\n'
  done
  [ -z "$missing" ] || { echo "unfinished (see DIR.log): ${missing%$'\n'}" >&2; return 1; }
  echo "finished: $out"
}

control_flags() {  # control_flags RECIPE: stage 2 with every loss but the base module's switched off, at the recipe's
  # base-loss weight (paper 1, authors 5: it matters through gradient clipping), its epoch selected at K = 0
  local weight=1
  [ "$1" = authors ] && weight=5
  echo "--loss_weights $weight,0,0,0 --contrastive none --num_iterations 0"
}
