#!/usr/bin/env bash
# A decay phase branched off another run's stable phase, e.g. the answer-loss decay of
# docs/quadratic.md: FROM's state when its stable phase ended (FROM/stable_end/, which
# cpu_runs.sh keeps) becomes TO's, so that
#     PHASES=decay cpu_runs.sh OUT SETTING -- FAIRSEQ_FLAGS      (TO = OUT/SETTING)
# continues it with these flags, its updates counted on from FROM's.
#
# Usage: examples/quadratic/branch_decay.sh FROM_DIR TO_DIR [-- FAIRSEQ_FLAGS ...]
#   e.g. examples/quadratic/branch_decay.sh runs/quadratic23/rmt runs/quadratic23_answer/rmt -- --loss-last-segments 1
# Writes into TO: checkpoint_last.pt and checkpoint_best.pt (FROM's at the stable phase's
# end), test_stable.json/.log, train.log (FROM's up to its decay phase, and a line saying
# where it branched), and run.conf (FROM's schedule, data and seed, these FAIRSEQ_FLAGS):
# cpu_runs.sh refuses TO with another schedule or other flags.
set -euo pipefail
usage="usage: $0 FROM_DIR TO_DIR [-- FAIRSEQ_FLAGS ...]"
[[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
from=${1%/} to=${2%/}; shift 2
if [[ $# -gt 0 ]]; then
    [[ $1 == -- ]] || { echo "$usage" >&2; exit 2; }
    shift
fi
fail() { echo "branch_decay.sh: error: $*" >&2; exit 2; }
[[ $(basename "$from") == "$(basename "$to")" ]] \
    || fail "TO_DIR must name the same setting as FROM_DIR ($(basename "$from")): cpu_runs.sh reads it from there"
for f in run.conf test_stable.json stable_end/checkpoint_last.pt stable_end/checkpoint_best.pt; do
    [[ -s $from/$f ]] || fail "no $from/$f: FROM_DIR needs a stable phase finished by cpu_runs.sh"
done
[[ ! -e $to/checkpoint_last.pt && ! -e $to/train.log ]] || fail "$to already holds a run; branch into a new directory"

mkdir -p "$to"
cp "$from"/stable_end/checkpoint_{last,best}.pt "$to/"
cp "$from/test_stable.json" "$to/"
[[ ! -f $from/test_stable.log ]] || cp "$from/test_stable.log" "$to/"
sed '/^cpu_runs.sh: .* decay phase: /,$d' "$from/train.log" > "$to/train.log"
echo "branch_decay.sh: $(date '+%F %T') branched off $from at the end of its stable phase, flags: $*" >> "$to/train.log"
# cpu_runs.sh's run.conf: "MAX_UPDATE=.. DECAY_UPDATES=.. VALID_EVERY=.. SEED=.. DATA=.. FLAGS=.."
schedule=$(<"$from/run.conf"); schedule=${schedule%% FLAGS=*}
echo "$schedule FLAGS=$*" > "$to/run.conf"
echo "branched $from into $to; continue it with:"
echo "  $schedule PHASES=decay bash examples/quadratic/cpu_runs.sh $(dirname "$to") $(basename "$to")${*:+ -- $*}"
