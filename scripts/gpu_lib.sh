# Sourced by the scripts that run on a lent GPU machine (no ../shared, no package registry; see
# scripts/evidence_gpu.sh): a log, the environment in it, ujson from a carried wheel, CUDA MPS, and a deadline
# for a group of runs. Set OUT and LOG before sourcing.
source "$(dirname "${BASH_SOURCE[0]}")/run_queue.sh"  # train_or_resume
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=$(command -v python || command -v python3)  # GPU images may have only python3
python() { "$PY" "$@"; }
export -f python
export PY
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

gpu_environment() {  # the GPU, driver, torch, CUDA and transformers versions (against requirements.txt)
  log "environment"
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$PY" - <<'PYEOF'
import platform, re, torch, transformers
need = {re.split(r"[<>=]", l)[0]: l.split(">=")[1].strip() for l in open("requirements.txt")
        if ">=" in l and not l.startswith("#")}
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "(requirements.txt: transformers>=%s)" % need["transformers"])
PYEOF
  } 2>&1 | tee -a "$LOG"
}

gpu_ujson() {  # prepro.py needs ujson, which GPU images may lack: install the carried wheel from .whl/
  "$PY" -c "import ujson" 2>/dev/null && return 0
  ls .whl/ujson-*.whl >/dev/null 2>&1 || { log "no ujson here and no .whl/ujson-*.whl carried"; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target /tmp/gpu_site .whl/ujson-*.whl || return 1
  export PYTHONPATH=/tmp/gpu_site${PYTHONPATH:+:$PYTHONPATH}
  log "ujson from .whl/"
}

gpu_mps_start() {  # several processes share the GPU through CUDA MPS where it starts, else by time-slicing
  if ! command -v nvidia-cuda-mps-control >/dev/null; then log "no nvidia-cuda-mps-control: time-slicing"; return; fi
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d &&
     timeout 60 "$PY" -c "import torch; print(torch.ones(2, device='cuda').sum().item())"
  then log "CUDA MPS on"
  else echo quit | nvidia-cuda-mps-control 2>/dev/null
       unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; log "CUDA MPS did not start: time-slicing"; fi
}

gpu_mps_stop() { [ -z "${CUDA_MPS_PIPE_DIRECTORY:-}" ] || echo quit | nvidia-cuda-mps-control; }

gpu_finish() {  # what comes back: the runs under RUNS_DIR without checkpoints (OUT/runs.tar.gz); then MPS off
  tar czf "$OUT/runs.tar.gz" --exclude='*.pt' --exclude='run.lock' -C "$(dirname "$RUNS_DIR")" \
    "$(basename "$RUNS_DIR")" 2>> "$LOG"
  gpu_mps_stop
  log "wrote $OUT: $(ls "$OUT" | tr '\n' ' ')"
}

gpu_stage1() {  # gpu_stage1 DIR TRAIN_ARGS...: train_or_resume DIR (one thread) in the background, output in DIR.log
  local dir=$1; shift
  train_or_resume "$dir" 1 "$@" >> "$dir.log" 2>&1 &
}

stage_counts() {  # finished runs under RUNS_DIR, for the log: stage 1 (RUNS_DIR/stage1/s*) and stage 2 (scored at K = 0..4)
  echo "stage 1 done: $(ls "$RUNS_DIR"/stage1/*/eval_scores.json 2>/dev/null | wc -l);" \
    "stage 2 done: $(find "$RUNS_DIR" -path '*/eval_k4/eval_scores.json' 2>/dev/null | wc -l)"
}

gpu_run_stages() {  # the caller's stage1_then_stage2 until BUDGET (run_until), its progress logged; then gpu_finish
  export -f stage1_then_stage2 gpu_stage1 train_or_resume
  run_until "$BUDGET" stage_counts "$OUT/runs_sh.log" bash -c stage1_then_stage2
  cat "$OUT/runs_sh.log" >> "$LOG"
  log "$(stage_counts)"
  gpu_finish
}

run_until() {  # run_until BUDGET PROGRESS_CMD CMD_LOG CMD...: CMD (its output to CMD_LOG) in a process session of
  # its own, stopped with every run it started (they save last.pt on SIGTERM) once the script has run BUDGET
  # seconds, or when the script itself is stopped; PROGRESS_CMD's output is logged every minute
  local budget=$1 progress=$2 cmd_log=$3; shift 3
  setsid "$@" > "$cmd_log" 2>&1 &
  RUN_UNTIL_GROUP=$!
  # A session of its own keeps the runs out of reach of a signal to this script: pass SIGINT/SIGTERM on, or a
  # stopped script (Ctrl-C, a command's time limit) leaves its runs going, and a second call finds them still
  # holding their run folders' locks.
  trap 'stop_group; exit 130' INT
  trap 'stop_group; exit 143' TERM
  while kill -0 "$RUN_UNTIL_GROUP" 2>/dev/null && [ "$SECONDS" -lt "$budget" ]; do
    sleep 5
    [ $((SECONDS % 60)) -lt 5 ] && log "$(eval "$progress")"
  done
  if kill -0 "$RUN_UNTIL_GROUP" 2>/dev/null; then
    log "budget reached: stopping the runs still going (they keep last.pt)"
    stop_group
  fi
  trap - INT TERM
  wait "$RUN_UNTIL_GROUP" 2>/dev/null || true
}

stop_group() {  # SIGTERM to run_until's process group (the runs save last.pt), SIGKILL to what is left after 30 s
  kill -TERM -- "-$RUN_UNTIL_GROUP" 2>/dev/null
  for _ in $(seq 30); do kill -0 -- "-$RUN_UNTIL_GROUP" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$RUN_UNTIL_GROUP" 2>/dev/null
}
