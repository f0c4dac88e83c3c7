#!/usr/bin/env bash
# Test perplexity of a WikiText-103 checkpoint: every test token scored once, memory carried.
# Usage: examples/wikitext103/eval.sh checkpoints/wt103_a0.2/checkpoint_best.pt [more fairseq-eval-lm flags]
set -euo pipefail
CKPT=${1:?checkpoint path}; shift
fairseq-eval-lm "${DATA:-data-bin/wikitext-103}" --user-dir tarm_plugin \
    --task tarm_language_modeling --segment-length 160 --batch-size 10 \
    --path "$CKPT" --gen-subset test "$@"
