#!/usr/bin/env bash
# The synthetic mechanism test over seeds and recipes: scripts/run_demo.sh once per (recipe, seed), then the
# stated vs never-stated report over the seeds of each recipe (scripts/demo_report.py --runs), and the same
# models with the stated gold facts as the first pass's input (scripts/oracle_relations.py).
#
#   bash scripts/demo_seeds.sh OUT SEED [SEED ...]      e.g. bash scripts/demo_seeds.sh runs/f 1 2 3 4 5
#
# RECIPES (default "paper authors"), JOBS runs at a time (default 2), THREADS per run (default 1). A finished
# run (OUT/RECIPE/sSEED/demo_report.json) is skipped, so the command continues where it stopped. Needs no
# Re-DocRED copy in dataset/redocred (run_demo.sh would use that instead): DEMO_DIR picks the synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash scripts/demo_seeds.sh OUT SEED [SEED ...]" >&2; exit 2; }
OUT=$1; shift
RECIPES=${RECIPES:-paper authors} JOBS=${JOBS:-2} THREADS=${THREADS:-1}
if [ -f dataset/redocred/train_mini.json ]; then
  echo "demo_seeds.sh: dataset/redocred is present, so run_demo.sh would train on Re-DocRED; move it aside" >&2
  exit 2
fi
DEMO_DIR=${DEMO_DIR:-dataset/demo}
python scripts/make_demo_data.py --out "$DEMO_DIR" ${DEMO_GEN:-}
for seed in "$@"; do
  for recipe in $RECIPES; do
    dir=$OUT/$recipe/s$seed
    [ -f "$dir/demo_report.json" ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    mkdir -p "$OUT/$recipe"
    DEMO_DIR=$DEMO_DIR SAVE=$dir bash scripts/run_demo.sh --seed "$seed" --recipe "$recipe" \
      --threads "$THREADS" > "$dir.log" 2>&1 &
  done
done
wait || true
for recipe in $RECIPES; do
  runs=()
  for seed in "$@"; do
    [ -f "$OUT/$recipe/s$seed/demo_report.json" ] && runs+=("$OUT/$recipe/s$seed")
  done
  [ ${#runs[@]} -gt 0 ] || { echo "$recipe: no finished run (see $OUT/$recipe/s*.log)" >&2; continue; }
  echo "## $recipe (${#runs[@]} seeds)"
  python scripts/demo_report.py --gold "$DEMO_DIR/dev.json" --runs "${runs[@]}" --json "$OUT/$recipe/seeds.json"
  python scripts/oracle_relations.py --gold "$DEMO_DIR/dev.json" --checkpoint "${runs[@]/%//best.pt}" \
    --json "$OUT/$recipe/oracle.json"
done
