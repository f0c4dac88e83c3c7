#!/usr/bin/env bash
# Generate the step-by-step quadratic equations and binarize them (character level).
# Usage: examples/quadratic/prepare.sh [DEST=data-bin/quadratic] [make_quadratic.py flags]
set -euo pipefail
DEST=${1:-data-bin/quadratic}; shift || true
RAW=$(dirname "$DEST")/quadratic-raw
python "$(dirname "$0")/../../scripts/make_quadratic.py" "$RAW" "$@"
fairseq-preprocess --only-source --trainpref "$RAW/train.txt" --validpref "$RAW/valid.txt" \
    --testpref "$RAW/test.txt" --destdir "$DEST" --workers 2
