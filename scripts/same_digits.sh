#!/usr/bin/env bash
# Does this checkout train the same model as an earlier commit? scripts/main.sh's recipe (this
# checkout's: data, flags, seed) run twice, once with the plugin of OLD (checked out in a
# temporary worktree) and once with this checkout's, one thread each; prints both eval-lm test
# perplexities. A refactor that changes nothing prints the same digits (issue 37 item 7).
# Usage: scripts/same_digits.sh OLD_COMMIT [MAX_UPDATE (default 200)]
# Needs data-bin/ptb and .venv (scripts/main.sh makes both).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(git rev-parse --short "${1:?usage: scripts/same_digits.sh OLD_COMMIT [MAX_UPDATE]}^{commit}")
MAX_UPDATE=${2:-200}
[[ -f data-bin/ptb/dict.txt ]] || { echo "same_digits.sh: data-bin/ptb missing (bash scripts/main.sh makes it)" >&2; exit 2; }
TREE=$(mktemp -d)/tarm_$OLD
git worktree add -q --detach "$TREE" "$OLD"
trap 'git worktree remove --force "$TREE"' EXIT
NEW=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- tarm_plugin || echo -dirty)
echo "scripts/main.sh recipe at $NEW, MAX_UPDATE=$MAX_UPDATE, one thread; the plugin of:"
for side in "$OLD:$TREE/tarm_plugin" "$NEW:$PWD/tarm_plugin"; do
    name=${side%%:*}
    rm -rf "checkpoints/same_digits_$name"
    ppl=$(PLUGIN=${side#*:} SETUP=0 MAX_UPDATE=$MAX_UPDATE SAVE=checkpoints/same_digits_$name \
          OMP_NUM_THREADS=1 bash scripts/main.sh | grep -o "Loss (base 2).*")
    echo "  $name: $ppl"
done
