#!/usr/bin/env bash
# The main job: install, prepare Penn Treebank, train a TARM model (a = 0.2) on CPU,
# and print its test perplexity from fairseq-eval-lm. About 10 minutes on 2 CPU cores with a warm pip cache (README).
# Env: MAX_UPDATE (default 1200), ALPHA (default 0.2), MEMORY (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
# PLUGIN, SETUP=0 and SAVE: scripts/same_digits.sh runs this recipe with an older checkout's plugin
PLUGIN=${PLUGIN:-tarm_plugin}
[[ ${SETUP:-1} == 0 ]] || bash scripts/install.sh
source "${VENV:-.venv}/bin/activate"
[[ ${SETUP:-1} == 0 ]] || bash scripts/prepare_ptb.sh data-bin/ptb
SAVE=${SAVE:-checkpoints/ptb_tarm_a${ALPHA:-0.2}}
MAX_UPDATE=${MAX_UPDATE:-1200}
# every call trains afresh: fairseq would resume a previous call's checkpoint_last.pt here (and
# from --max-update do one update more), printing another number
if compgen -G "$SAVE/checkpoint*.pt" > /dev/null; then
    echo "main.sh: training afresh in $SAVE (the previous run's checkpoints there are replaced)"
    rm -f "$SAVE"/checkpoint*.pt
fi
# the same model and schedule as scripts/ablate.py (docs/results.md) and examples/ptb/tarm_ptb.yaml
# (tests/test_scripts.py checks that the three agree)
fairseq-train data-bin/ptb --user-dir "$PLUGIN" \
    --task tarm_language_modeling --segment-length 32 --bptt-segments 4 --batch-size 16 \
    --arch tarm_lm --decoder-layers 2 --decoder-embed-dim 128 --decoder-ffn-embed-dim 512 \
    --decoder-attention-heads 4 --dropout 0.1 --tokens-per-sample 32 \
    --num-memory-tokens "${MEMORY:-8}" --memory-ema-alpha "${ALPHA:-0.2}" \
    --criterion tarm_lm_loss --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 \
    --lr-scheduler polynomial_decay --warmup-updates 100 --total-num-update "$MAX_UPDATE" \
    --max-update "$MAX_UPDATE" --clip-norm 0.25 --seed 1 --cpu --num-workers 0 \
    --validate-interval-updates 200 --save-interval-updates 200 --keep-interval-updates 1 \
    --no-epoch-checkpoints --save-dir "$SAVE" --log-interval 100 --no-progress-bar
fairseq-eval-lm data-bin/ptb --user-dir "$PLUGIN" --task tarm_language_modeling \
    --segment-length 32 --batch-size 16 --path "$SAVE/checkpoint_best.pt" --gen-subset test \
    --cpu --num-workers 0 2>&1 | tee "$SAVE/eval_test.log" | grep -E "Evaluated|Perplexity"
