#!/usr/bin/env bash
# What a run could do when: scripts/eval_quadratic.py on the validation split for each given
# checkpoint (exact match overall, by kind, and the two-root answers by the segment in which
# the steps computed x1), one result per checkpoint, named by its update count. A checkpoint
# already evaluated is skipped. scripts/plot.py quadratic draws these beside the run's curve.
#
# Usage: examples/quadratic/valid_by_update.sh OUT_DIR CHECKPOINT [CHECKPOINT ...]
#   e.g. examples/quadratic/valid_by_update.sh runs/quadratic23/rmt runs/quadratic23/rmt/checkpoint_*_*.pt
#   (cpu_runs.sh keeps the checkpoint of every 1,000th update)
#   env: DATA (default data-bin/quadratic-100k), THREADS (default 1)
# Writes OUT_DIR/valid_update<N>.json (eval_quadratic.py's JSON) and valid_update<N>.misses.tsv.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 2 ]] || { echo "usage: $0 OUT_DIR CHECKPOINT [CHECKPOINT ...]" >&2; exit 2; }
out=$1; shift
DATA=${DATA:-data-bin/quadratic-100k}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
[[ -d $out ]] || { echo "valid_by_update.sh: error: OUT_DIR $out is not a directory" >&2; exit 2; }
for ckpt in "$@"; do
    [[ -f $ckpt ]] || { echo "valid_by_update.sh: error: no checkpoint $ckpt" >&2; exit 2; }
done
for ckpt in "$@"; do
    n=$(python -c "import sys; sys.path.insert(0, 'examples/quadratic'); from resume_point import updates; print(updates(sys.argv[1]))" "$ckpt")
    [[ $n != None ]] || { echo "valid_by_update.sh: error: cannot read $ckpt" >&2; exit 1; }
    json=$out/valid_update$n.json
    [[ ! -s $json ]] || continue
    python scripts/eval_quadratic.py --path "$ckpt" --data "$DATA" --split valid \
        --misses "$out/valid_update$n.misses.tsv" > "$out/valid_update$n.log" 2>&1 \
        || { echo "valid_by_update.sh: error: evaluation of $ckpt failed, see $out/valid_update$n.log" >&2; exit 1; }
    tail -1 "$out/valid_update$n.log" > "$json.tmp" && mv "$json.tmp" "$json" && rm "$out/valid_update$n.log"
    echo "$ckpt: update $n, $(python -c "import json, sys; print(json.load(open(sys.argv[1]))['accuracy'])" "$json")"
done
