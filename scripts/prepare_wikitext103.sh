#!/usr/bin/env bash
# WikiText-103 for tarm, the standard fairseq recipe: the word-level wiki.*.tokens
# binarized with fairseq-preprocess, giving the 267,735-word vocabulary
# (fairseq's dict.txt: 267,744 types with the 4 special symbols and padding to 8).
#
# Usage: scripts/prepare_wikitext103.sh [DEST=data-bin/wikitext-103] [RAW_DIR]
#   RAW_DIR holding wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens skips the download.
set -euo pipefail
DEST=${1:-data-bin/wikitext-103}
RAW=${2:-}
URL=https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip
if [[ -z "$RAW" ]]; then
    RAW=$(dirname "$DEST")/wikitext-103
    if [[ ! -f "$RAW/wiki.train.tokens" ]]; then
        mkdir -p "$(dirname "$DEST")"
        ZIP=$(dirname "$DEST")/wikitext-103-v1.zip
        [[ -f "$ZIP" ]] || curl -fL --retry 3 -o "$ZIP" "$URL"
        unzip -q -o "$ZIP" -d "$(dirname "$DEST")"
    fi
fi
for split in train valid test; do
    [[ -f "$RAW/wiki.$split.tokens" ]] || { echo "prepare_wikitext103: error: $RAW/wiki.$split.tokens not found" >&2; exit 1; }
done
fairseq-preprocess --only-source \
    --trainpref "$RAW/wiki.train.tokens" --validpref "$RAW/wiki.valid.tokens" \
    --testpref "$RAW/wiki.test.tokens" --destdir "$DEST" --workers "${WORKERS:-8}"
echo "dictionary: $(( $(wc -l < "$DEST/dict.txt") + 4 )) types in $DEST/dict.txt"
