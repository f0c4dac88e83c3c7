#!/usr/bin/env bash
# Train on the quadratic equations: 6 segments of 30 characters per sample, memory reset
# per sample, loss on segments 2-6 (the equation is given), validation accuracy =
# exact match of the greedily generated answer segment.
#   MEMORY=0 examples/quadratic/train.sh            # no memory
#   ALPHA=1  examples/quadratic/train.sh            # RMT
#   ALPHA=0.2 examples/quadratic/train.sh           # TARM
# Env: DATA, SAVE, MEMORY (default 30), ALPHA (default 1), SCHEDULER (default the paper's
# reduce-on-plateau 0.5, as fairseq flags), and fairseq flags after the script; give it
# --max-update N (no stopping flag is set here: fairseq would train until stopped).
set -euo pipefail
DATA=${DATA:-data-bin/quadratic}
ALPHA=${ALPHA:-1}
MEMORY=${MEMORY:-30}
SAVE=${SAVE:-checkpoints/quadratic_m${MEMORY}_a${ALPHA}}
read -r -a SCHEDULER <<< "${SCHEDULER:---lr-scheduler reduce_lr_on_plateau --lr-shrink 0.5}"
fairseq-train "$DATA" --user-dir tarm_plugin \
    --task tarm_language_modeling --sample-break-mode eos --segment-length 30 \
    --loss-start-segment 1 --eval-exact-match-segments 1 --batch-size 32 \
    --arch tarm_lm_quadratic --tokens-per-sample 30 --num-memory-tokens "$MEMORY" --memory-ema-alpha "$ALPHA" \
    --criterion tarm_lm_loss --optimizer adam --lr 1e-4 "${SCHEDULER[@]}" \
    --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric \
    --no-epoch-checkpoints --save-dir "$SAVE" --log-format json --log-interval 50 "$@"
