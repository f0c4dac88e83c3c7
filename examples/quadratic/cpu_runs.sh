#!/usr/bin/env bash
# The quadratic-equations experiment of docs/results.md: the paper's model (tarm_lm_quadratic:
# 6 layers, 128 dim, FFN 256, 30 memory slots, default write input = the memory read), 100k
# training equations, one setting per call, the same updates for every setting; then exact
# match of the greedy answer segment on the 1,000 test equations, overall and by kind.
#
# Two phases (a warmup-stable-decay schedule), each followed by a test evaluation of the
# best-validation checkpoint so far:
#   stable: MAX_UPDATE updates at LR 1e-3 after 200 warm-up updates (the paper's
#           reduce-on-plateau 0.5 as the scheduler, its patience beyond the budget so that
#           the LR stays constant) -> train.log, test_stable.json
#   decay:  continues the stable phase's last checkpoint (optimizer state kept) and decays
#           the LR linearly to 0 over DECAY_UPDATES more updates -> train.log, test.json
#
# Resumable: run the same command again after a stop (a kill, a session's end, STOP_AT) and
# each setting continues from OUT/<setting>/checkpoint_last.pt in the phase it was in; a
# finished phase or test evaluation is not redone. train.log is only ever appended to.
#
# Usage: examples/quadratic/cpu_runs.sh OUT SETTING [SETTING ...] [-- FAIRSEQ_FLAGS ...]
#   SETTING: no_memory | rmt | tarm_a0.5 | tarm_a0.2 | tarm_learned | tarm_gate
#   FAIRSEQ_FLAGS: passed last to every training call (they override the script's own)
#   env: SCHEDULE 5k (default: MAX_UPDATE 3000, DECAY_UPDATES 2000, the issue-12 runs of
#        results/quadratic12) or 12k (8000 + 4000, issue 23); MAX_UPDATE, DECAY_UPDATES override
#        it. VALID_EVERY (default 250: validation and checkpoint interval), THREADS (default 1),
#        PHASES (default "stable decay"; "decay" continues a finished stable phase),
#        STOP_AT (stop each setting at this update; the same command without it continues),
#        SEED (default 1: initialisation, data order, dropout),
#        DATA (default data-bin/quadratic-100k, generated if absent)
# Writes OUT/<setting>/{train.log,test_stable.json,test.json,run.conf} and the checkpoints
# (best, last, those of every 1,000th update, and stable_end/: the last and best when the
# stable phase ended, from which examples/quadratic/branch_decay.sh starts another decay).
# run.conf holds the schedule, data and flags the run was started with; a later call with
# others stops with an error instead of mixing two schedules in one run.
#
# Deviations from the paper's setting, each forced by a 2-core CPU (docs/results.md):
# LR 1e-3 with 200 warm-up updates instead of 1e-4, gradient clipping at 1.0 for that LR,
# a fixed budget of MAX_UPDATE + DECAY_UPDATES updates ending in a linear decay instead of
# training to convergence under reduce-on-plateau (fairseq steps that rule at epoch ends with
# the validation exact match, patience 0: within a budget of a few epochs a single flat one
# would halve the LR), 500 validation equations.
set -euo pipefail
cd "$(dirname "$0")/../.."
usage="usage: $0 OUT SETTING [SETTING ...] [-- FAIRSEQ_FLAGS ...]"
[[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
OUT=$1; shift
settings=(); extra=()
while [[ $# -gt 0 ]]; do
    if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi
    settings+=("$1"); shift
done
[[ ${#settings[@]} -ge 1 ]] || { echo "$usage" >&2; exit 2; }
for flag in "${extra[@]}"; do
    [[ $flag != --max-update* ]] || {
        echo "cpu_runs.sh: error: --max-update comes from MAX_UPDATE, DECAY_UPDATES and STOP_AT, not from FAIRSEQ_FLAGS" >&2; exit 2; }
done

SCHEDULE=${SCHEDULE:-5k}
case $SCHEDULE in
    5k)  MAX_UPDATE=${MAX_UPDATE:-3000}; DECAY_UPDATES=${DECAY_UPDATES:-2000} ;;
    12k) MAX_UPDATE=${MAX_UPDATE:-8000}; DECAY_UPDATES=${DECAY_UPDATES:-4000} ;;
    *) echo "cpu_runs.sh: error: SCHEDULE must be 5k or 12k, not '$SCHEDULE'" >&2; exit 2 ;;
esac
DATA=${DATA:-data-bin/quadratic-100k}
THREADS=${THREADS:-1}
VALID_EVERY=${VALID_EVERY:-250}
PHASES=${PHASES:-stable decay}
STOP_AT=${STOP_AT:-}
SEED=${SEED:-1}
for var in MAX_UPDATE DECAY_UPDATES VALID_EVERY THREADS SEED ${STOP_AT:+STOP_AT}; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || {
        echo "cpu_runs.sh: error: $var must be a positive integer, not '${!var}'" >&2; exit 2; }
done

memory_of() {  # memory_of SETTING: sets memory=(SLOTS ALPHA [MODEL_FLAGS...])
    case $1 in
        no_memory)    memory=(0 1) ;;
        rmt)          memory=(30 1) ;;
        tarm_a0.5)    memory=(30 0.5) ;;
        tarm_a0.2)    memory=(30 0.2) ;;
        tarm_learned) memory=(30 0.5 --memory-ema-learned) ;;
        tarm_gate)    memory=(30 0.5 --memory-gate) ;;
        *) echo "cpu_runs.sh: error: unknown SETTING '$1'" >&2; exit 2 ;;
    esac
}
for setting in "${settings[@]}"; do memory_of "$setting"; done  # every name checked before training
python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('fairseq') and u.find_spec('torch')))" 2>/dev/null || {
    echo "cpu_runs.sh: error: \`python\` cannot import fairseq and torch: activate the project's venv (source .venv/bin/activate)" >&2; exit 2; }

[[ -f $DATA/dict.txt ]] || bash examples/quadratic/prepare.sh "$DATA" \
    --train 100000 --valid 500 --test 1000 --seed 1
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

train() {  # train SETTING_DIR [FAIRSEQ_FLAGS...]; fairseq resumes SETTING_DIR/checkpoint_last.pt
    # (the checkpoint of every 1,000th update stays, for examples/quadratic/valid_by_update.sh)
    local dir=$1; shift
    DATA=$DATA SAVE=$dir bash examples/quadratic/train.sh \
        --cpu --num-workers 0 --seed "$SEED" --no-progress-bar --lr 1e-3 --clip-norm 1.0 \
        --validate-interval-updates "$VALID_EVERY" \
        --save-interval-updates "$VALID_EVERY" --keep-interval-updates 1 \
        --keep-interval-updates-pattern 1000 "$@"
}

resume_point() {  # resume_point SETTING_DIR: sets done = its checkpoint's update count
    done=$(python examples/quadratic/resume_point.py "$1") || {
        echo "cpu_runs.sh: error: cannot read the checkpoints in $1" >&2; exit 1; }
}

train_to() {  # train_to SETTING_DIR PHASE END [FAIRSEQ_FLAGS...]: continue the run to update
    # END (STOP_AT if smaller); sets done, and stopped=1 if the phase is not finished
    local dir=$1 phase=$2 end=$3 stop=$3; shift 3
    [[ -z $STOP_AT ]] || (( STOP_AT >= stop )) || stop=$STOP_AT
    if (( done < stop )); then
        echo "cpu_runs.sh: $(date '+%F %T') $phase phase: updates $done -> $stop of $end" >> "$dir/train.log"
        # fairseq does one more update when started at its --max-update, so a finished
        # phase is never restarted: the update count decides what is left
        train "$dir" "$@" --max-update "$stop" "${extra[@]}" >> "$dir/train.log" 2>&1 || {
            echo "cpu_runs.sh: error: training failed, see $dir/train.log" >&2; exit 1; }
        resume_point "$dir"
        (( done >= stop )) || {
            echo "cpu_runs.sh: error: training ended at update $done before $stop, see $dir/train.log" >&2; exit 1; }
    fi
    stopped=0
    if (( done < end )); then
        stopped=1
        echo "$setting stopped at update $done of the $phase phase (STOP_AT=$STOP_AT); the same command continues it"
    fi
}

test_eval() {  # test_eval SETTING_DIR OUT_JSON (its log beside it)
    python scripts/eval_quadratic.py --path "$1/checkpoint_best.pt" --data "$DATA" \
        --split test > "${2%.json}.log" 2>&1 \
        || { echo "cpu_runs.sh: error: test evaluation failed, see ${2%.json}.log" >&2; exit 1; }
    tail -1 "${2%.json}.log" > "$2.tmp" && mv "$2.tmp" "$2"
}

total=$((MAX_UPDATE + DECAY_UPDATES))
conf="MAX_UPDATE=$MAX_UPDATE DECAY_UPDATES=$DECAY_UPDATES VALID_EVERY=$VALID_EVERY SEED=$SEED DATA=$DATA FLAGS=${extra[*]}"
for setting in "${settings[@]}"; do
    memory_of "$setting"
    dir=$OUT/$setting
    mkdir -p "$dir"
    if [[ -f $dir/run.conf && $(cat "$dir/run.conf") != "$conf" ]]; then
        echo "cpu_runs.sh: error: $dir was started with '$(cat "$dir/run.conf")', not '$conf'; use those or another OUT" >&2
        exit 2
    fi
    resume_point "$dir"
    export MEMORY=${memory[0]} ALPHA=${memory[1]}
    if [[ " $PHASES " == *" stable "* ]]; then
        if (( done < MAX_UPDATE )); then
            [[ -f $dir/run.conf ]] || echo "$conf" > "$dir/run.conf"
            train_to "$dir" stable "$MAX_UPDATE" "${memory[@]:2}" \
                --warmup-updates 200 --warmup-init-lr 1e-7 --lr-patience 1000000
            (( ! stopped )) || continue
        fi
        if [[ ! -s $dir/test_stable.json ]]; then
            if (( done == MAX_UPDATE )); then
                # the state a decay with other flags branches off (branch_decay.sh)
                mkdir -p "$dir/stable_end" && cp "$dir"/checkpoint_{last,best}.pt "$dir/stable_end/"
                test_eval "$dir" "$dir/test_stable.json"
            else  # checkpoint_best.pt may be a decay-phase one by now
                echo "cpu_runs.sh: warning: no test_stable.json in $dir and its decay phase has begun: not evaluated" >&2
            fi
        fi
        [[ ! -s $dir/test_stable.json ]] || echo "$setting after $MAX_UPDATE updates: $(cat "$dir/test_stable.json")"
    fi
    if [[ " $PHASES " == *" decay "* ]]; then
        (( done >= MAX_UPDATE )) || {
            echo "cpu_runs.sh: error: no stable phase to resume in $dir (run PHASES=stable first)" >&2; exit 2; }
        if (( done < total )); then
            [[ -f $dir/run.conf ]] || echo "$conf" > "$dir/run.conf"
            # polynomial_decay decays from the end of its warm-up; putting that at MAX_UPDATE
            # starts the linear decay where the stable phase stopped, from the full LR. Its LR
            # is a function of the update count alone, so a resumed decay continues it; the
            # stable phase's scheduler state is dropped once, when the decay starts.
            reset=()
            (( done > MAX_UPDATE )) || reset=(--reset-lr-scheduler)
            SCHEDULER="--lr-scheduler polynomial_decay --warmup-updates $MAX_UPDATE --total-num-update $total" \
                train_to "$dir" decay "$total" "${memory[@]:2}" "${reset[@]}"
            (( ! stopped )) || continue
        fi
        [[ -s $dir/test.json ]] || test_eval "$dir" "$dir/test.json"
        echo "$setting after $total updates: $(cat "$dir/test.json")"
    fi
done
