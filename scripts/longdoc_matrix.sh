#!/usr/bin/env bash
# The long-document matrix of docs/longdoc.md ("A budget where the answer means something"),
# resumable across sessions: `a` and `b` are two queues for two workers side by side with one
# thread each (the most updates per hour on 2 cores), `all` runs both queues one job at a time
# with two threads (each run finishes sooner: for the last hour of a session). A
# worker goes down its queue of (corpus, setting, seed) runs with scripts/longdoc.py, which
# skips a finished run (its result.json), continues a stopped one from its checkpoint_last.pt
# and adds the evaluations a finished run lacks. Order: seed 1 of every setting first (the
# associative memory in seed 1 only, issue 38), then seeds 2 and 3 (the seed's question first:
# the gate, RMT, a = 0.5 and no memory before the prefix and the 4x reference), then the prose corpus,
# then RMT with BPTT through 8 segments (seed 1, "if the budget allows");
# `all` interleaves b and a.
#
# Run it from a frozen copy of the code (a `git worktree` at the commit the results name),
# so that work landing on main cannot change a running experiment:
#   git worktree add ../frozen_$(git rev-parse --short HEAD) HEAD
#   cd ../frozen_<sha> && for w in a b; do
#     RUNS=/work/main/runs DATA=/work/main/data-bin nohup bash scripts/longdoc_matrix.sh $w \
#       > /work/main/runs/longdoc_matrix_$w.out 2>&1 & done
# Across machines: a finished run is committed to results/longdoc/matrix_<MAX_UPDATE>/<corpus>/runs/
# (its logs, result.json, losses per document; no checkpoints: `longdoc_matrix.sh save`), and
# each worker first copies those back under RUNS, so that a new machine skips them too.
#   bash scripts/longdoc_matrix.sh save   # the report over the finished runs under RUNS, and they, into results/ (then commit)
# env: RUNS (where runs/longdoc_<corpus>_<MAX_UPDATE> go; default ./runs), DATA (the data-bins
# code/ and prose/, scripts/prepare_longdoc.py; default ./data-bin), PY (default .venv/bin/python
# of the main checkout if RUNS points there, else python3), MAX_UPDATE (default 2400: the
# calibrated budget, docs/longdoc.md), SAVED (default results/longdoc/matrix_$MAX_UPDATE),
# THREADS (default 2 for all, 1 for a and b).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKER=${1:?usage: longdoc_matrix.sh all|a|b|save}
RUNS=${RUNS:-runs}
DATA=${DATA:-data-bin}
PY=${PY:-$(dirname "$RUNS")/.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
MAX_UPDATE=${MAX_UPDATE:-2400}
# a = 0.5: one thread beside another run a median 0.83 updates/s, two threads alone 1.33-1.43
# (docs/longdoc.md, docs/checks.md): a and b do more per hour, all finishes one run sooner
THREADS=${THREADS:-$([[ $WORKER == all ]] && echo 2 || echo 1)}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# a validation every 400 updates and a kept checkpoint every 800 (the curves per run, docs/longdoc.md);
# a checkpoint every 400, not 200: fairseq-train validates at every checkpoint it saves (2 min each
# here, a quarter of the training time at 200), and fairseq seeds each update's randomness from
# the update number, so where it validates changes nothing in training
COMMON=(--doc-separator '<doc>' --max-update "$MAX_UPDATE" --validate-every 400 --save-every 400 --keep-every 800)
SAVED=${SAVED:-results/longdoc/matrix_$MAX_UPDATE}
copy_finished() {  # copy_finished FROM TO [CP_FLAGS]: every run dir of FROM with a result.json, no checkpoints
    local from=$1 to=$2 run; shift 2
    for run in "$from"/runs/*/; do
        [[ -f $run/result.json ]] || continue
        mkdir -p "$to/runs/$(basename "$run")"
        find "$run" -maxdepth 1 -type f ! -name '*.pt' ! -name tarm.lock ! -name driver.lock -exec cp -p "$@" {} "$to/runs/$(basename "$run")/" \;
    done
}
# a queue entry's optional fourth field: a variant of the matrix's runs, in directories of its own
# (runs/longdoc_<corpus>_<MAX_UPDATE>_<variant>, $SAVED/<corpus>_<variant>), its report apart.
# bptt8: gradients through 8 segments (issue 36's deeper BPTT), the same 2,048 tokens per update
# (4 rows, not 8); no --checkpoint-segments: 8 segments of this model fit in memory as they are
declare -A VARIANT=([bptt8]="--bptt-segments 8 --batch-size 4")
DIRS=(code prose code_bptt8)  # <corpus>[_<variant>]
run_dir_of() {  # run_dir_of DIR: where DIR's runs go under RUNS
    local corpus=${1%%_*}
    echo "$RUNS/longdoc_${corpus}_$MAX_UPDATE${1#"$corpus"}"
}
variant_flags() {  # variant_flags DIR: VFLAGS=(the longdoc.py flags of DIR's variant)
    local v=${1#*_}; [[ $v != "$1" ]] || v=""
    [[ -z $v || -n ${VARIANT[$v]:-} ]] || { echo "longdoc_matrix: unknown variant '$v' ($1)" >&2; exit 2; }
    VFLAGS=(); [[ -z $v ]] || read -r -a VFLAGS <<< "${VARIANT[$v]}"
}
if [[ $WORKER == save ]]; then
    for dir in "${DIRS[@]}"; do
        corpus=${dir%%_*}; out=$(run_dir_of "$dir")
        compgen -G "$out/runs/*/result.json" > /dev/null || continue  # no finished run: nothing to save
        variant_flags "$dir"
        # a variant's report sets its runs against the matrix's of the same setting and seed
        CMP=(); [[ $dir == "$corpus" ]] || CMP=(--compare-with "$(run_dir_of "$corpus")")
        if [[ -f $DATA/$corpus/dict.txt ]]; then  # the report over every finished run (the unigram line reads the data)
            "$PY" scripts/longdoc.py --data "$DATA/$corpus" --out "$out" "${COMMON[@]}" "${VFLAGS[@]}" "${CMP[@]}" --report-only > /dev/null
        else
            echo "longdoc_matrix: $DATA/$corpus missing: the report of $out not rebuilt"
        fi
        copy_finished "$out" "$SAVED/$dir"
        for f in results.md results.json longdoc.png calibration.md calibration.json calibration.png; do
            [[ ! -f $out/$f ]] || cp -p "$out/$f" "$SAVED/$dir/"
        done
    done
    echo "longdoc_matrix: finished runs copied to $SAVED (commit them)"
    exit 0
fi
for dir in "${DIRS[@]}"; do  # what earlier sessions finished (on another machine, maybe)
    [[ ! -d $SAVED/$dir/runs ]] || copy_finished "$SAVED/$dir" "$(run_dir_of "$dir")" -n
done
A=("code no_memory 1" "code prefix 1" "code tarm_a0.5 1" "code tarm_a0.2 1"
   "code no_memory 2" "code rmt 2" "code tarm_gate 2" "code tarm_a0.5 3" "code prefix 3"
   "prose no_memory 1" "prose rmt 1" "code rmt 1 bptt8")
B=("code context4x 1" "code rmt 1" "code tarm_gate 1" "code assoc 1"
   "code prefix 2" "code tarm_a0.5 2" "code rmt 3" "code no_memory 3" "code context4x 2"
   "code tarm_gate 3" "prose prefix 1" "prose context4x 1")
# the gate with BPTT 8 was queued after RMT's: dropped once RMT's BPTT-8 run had lost 11% to
# its fewer rows (the horizon question needs a design that changes only the gradient's reach,
# docs/longdoc.md), its core-hour given to the quadratic seeds
case "$WORKER" in
    a) QUEUE=("${A[@]}") ;;
    b) QUEUE=("${B[@]}") ;;
    all) QUEUE=(); for i in "${!B[@]}"; do QUEUE+=("${B[$i]}"); [[ -z ${A[$i]:-} ]] || QUEUE+=("${A[$i]}"); done ;;
    *) echo "longdoc_matrix.sh: worker must be all, a, b or save, got '$WORKER'" >&2; exit 2 ;;
esac
for job in "${QUEUE[@]}"; do
    read -r corpus setting seed variant <<< "$job"
    dir=$corpus${variant:+_$variant}
    variant_flags "$dir"
    if [[ ! -f "$DATA/$corpus/dict.txt" ]]; then
        echo "longdoc_matrix: $DATA/$corpus missing (python scripts/prepare_longdoc.py $corpus --destdir $DATA/$corpus); skipping $job"
        continue
    fi
    echo "longdoc_matrix[$WORKER] $(date -u +%FT%TZ) $job (code at $(git rev-parse --short HEAD))"
    "$PY" scripts/longdoc.py --data "$DATA/$corpus" --out "$(run_dir_of "$dir")" \
        --settings "$setting" --seeds "$seed" "${COMMON[@]}" "${VFLAGS[@]}"
done
echo "longdoc_matrix[$WORKER] $(date -u +%FT%TZ) queue done"
