#!/usr/bin/env bash
# The paper's WikiText-103 setting: tarm_lm_wiki103 (16 layers, 10 heads, 410 dim,
# 2100 FFN, adaptive input/softmax over the 267,735-word vocabulary, tied),
# 160-token segments, Adam, LR decaying linearly from 2.5e-4 over 120k updates, fp16.
#
#   ALPHA=1   examples/wikitext103/train.sh   # RMT
#   ALPHA=0.7 examples/wikitext103/train.sh   # TARM
#   ALPHA=0.2 examples/wikitext103/train.sh   # TARM, the paper's best
#
# Env: GPUS (default 4), ALPHA, MEMORY (slots, default 10), BPTT (segments per
# sample, default 2), DATA (default data-bin/wikitext-103 from scripts/prepare_wikitext103.sh).
# The global batch is 60 streams (the RMT paper's), split across the GPUs.
set -euo pipefail
GPUS=${GPUS:-4}
ALPHA=${ALPHA:-0.2}
DATA=${DATA:-data-bin/wikitext-103}
SAVE=${SAVE:-checkpoints/wt103_a${ALPHA}}
torchrun --nproc_per_node "$GPUS" "$(which fairseq-train)" "$DATA" --user-dir tarm_plugin \
    --task tarm_language_modeling --segment-length 160 --bptt-segments "${BPTT:-2}" \
    --batch-size $((60 / GPUS)) --distributed-world-size "$GPUS" \
    --arch tarm_lm_wiki103 --tokens-per-sample 160 \
    --num-memory-tokens "${MEMORY:-10}" --memory-ema-alpha "$ALPHA" \
    --criterion tarm_lm_loss --ddp-backend legacy_ddp \
    --optimizer adam --adam-betas '(0.9, 0.999)' --lr 2.5e-4 --clip-norm 0.25 \
    --lr-scheduler polynomial_decay --warmup-updates 0 --total-num-update 120000 --max-update 120000 \
    --fp16 --validate-interval-updates 4000 --save-interval-updates 4000 --keep-interval-updates 2 \
    --no-epoch-checkpoints --save-dir "$SAVE" --log-format json --log-interval 100 "$@"
