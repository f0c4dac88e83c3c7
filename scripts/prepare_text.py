"""Raw UTF-8 text -> sentencepiece -> fairseq data-bin, in one command.

    python scripts/prepare_text.py --trainpref train.txt [--validpref valid.txt] \\
        [--testpref test.txt] --destdir data-bin/mytext [--vocab-size 8000] [--model-type unigram]

1. trains a sentencepiece model on the training file (``--model-type``
   unigram (default) or bpe, ``--vocab-size`` pieces, default 8000,
   ``--character-coverage`` default 1.0; use 0.9995 for languages with
   thousands of characters);
2. encodes every split with fairseq's own ``--bpe sentencepiece`` encoder
   (the one fairseq-interactive and the hub interface use), one line per input line;
3. runs fairseq-preprocess ``--only-source`` on the encoded splits with a
   dictionary of all the sentencepiece pieces (ordered by their count in the
   training split), so a piece that the training split happens not to use
   (e.g. ``▁H`` when train only has ``▁He``) still has an id, and
4. leaves ``spm.model`` (and ``spm.vocab``) next to ``dict.txt`` in ``--destdir``.

Like fairseq-preprocess (``--only-source``, no ``--source-lang``), each
``--*pref`` is the file itself; ``--validpref a,b`` makes ``valid`` and ``valid1``.
Bad input (missing, empty or non-UTF-8 file, a vocabulary larger than the
text allows, a --destdir that already holds a data-bin) stops with one line
``prepare_text: error: ...`` naming the file or flag.
"""

import argparse
import os
import re
import sys
import tempfile
from collections import Counter


class PrepareError(Exception):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trainpref", required=True, help="training text (UTF-8, one line per sentence/paragraph)")
    p.add_argument("--validpref", default=None, help="validation text(s), comma-separated")
    p.add_argument("--testpref", default=None, help="test text(s), comma-separated")
    p.add_argument("--destdir", required=True, help="output data-bin (must not hold a dict.txt yet)")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece pieces (default 8000)")
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram",
                   help="sentencepiece model type (default unigram)")
    p.add_argument("--character-coverage", type=float, default=1.0,
                   help="share of characters the pieces must cover (default 1.0; 0.9995 for CJK)")
    p.add_argument("--input-sentence-size", type=int, default=0,
                   help="train sentencepiece on at most this many random lines (default 0 = all)")
    p.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers (default 1)")
    p.add_argument("--seed", type=int, default=1, help="sentencepiece's sampling seed (default 1)")
    return p.parse_args(argv)


def check_text(path: str, flag: str) -> int:
    """The file exists, is UTF-8 and holds some text; returns its line count."""
    if not os.path.isfile(path):
        raise PrepareError(f"{flag} {path}: file not found")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PrepareError(f"{flag} {path}: not UTF-8 (byte {e.start}, line {line}); "
                           "convert it first, e.g. iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise PrepareError(f"{flag} {path}: file is empty")
    return text.count("\n") + (not text.endswith("\n"))


def train_sentencepiece(args, prefix: str) -> None:
    import sentencepiece as spm

    if args.vocab_size < 1:
        raise PrepareError(f"--vocab-size must be >= 1, got {args.vocab_size}")
    spm.set_random_generator_seed(args.seed)
    try:
        spm.SentencePieceTrainer.train(
            input=args.trainpref, model_prefix=prefix, vocab_size=args.vocab_size,
            model_type=args.model_type, character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size, shuffle_input_sentence=True,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e)
        most = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
        if most:
            raise PrepareError(f"--vocab-size {args.vocab_size} is larger than {args.trainpref} allows "
                               f"(at most {most.group(2)} pieces): lower --vocab-size") from None
        fewest = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
        if fewest:
            raise PrepareError(f"--vocab-size {args.vocab_size} is below the {fewest.group(2)} characters "
                               f"and special pieces of {args.trainpref}: raise --vocab-size or lower "
                               "--character-coverage") from None
        raise PrepareError(f"sentencepiece on {args.trainpref}: {msg.splitlines()[-1]}") from None


def encode_file(bpe, src: str, dst: str, counts=None) -> None:
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for line in fin:
            pieces = bpe.encode(line.rstrip("\n"))
            if counts is not None:
                counts.update(pieces.split())
            fout.write(pieces + "\n")


def piece_dictionary(bpe, counts, path: str) -> None:
    """fairseq's dict.txt over every sentencepiece piece, most frequent in train first."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for piece, n in counts.most_common():
        d.add_symbol(piece, n=n)
    sp = bpe.sp
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i)):
            d.add_symbol(sp.id_to_piece(i), n=0)  # no-op for pieces already counted
    d.finalize(padding_factor=8)
    d.save(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    splits = [("--trainpref", "train", [args.trainpref])]
    for flag, name, value in (("--validpref", "valid", args.validpref), ("--testpref", "test", args.testpref)):
        if value:
            splits.append((flag, name, value.split(",")))
    counts = {}
    for flag, _, paths in splits:
        for path in paths:
            counts[path] = check_text(path, flag)
    if os.path.exists(os.path.join(args.destdir, "dict.txt")):
        raise PrepareError(f"--destdir {args.destdir} already holds a dict.txt: use a new directory")
    os.makedirs(args.destdir, exist_ok=True)

    prefix = os.path.join(args.destdir, "spm")
    train_sentencepiece(args, prefix)

    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig
    from fairseq_cli import preprocess
    from fairseq import options

    bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=prefix + ".model"))
    with tempfile.TemporaryDirectory(prefix="prepare_text.") as tmp:
        flags, piece_counts = [], Counter()
        for flag, name, paths in splits:
            encoded = []
            for k, path in enumerate(paths):
                out = os.path.join(tmp, f"{name}{k}")
                encode_file(bpe, path, out, piece_counts if name == "train" else None)
                encoded.append(out)
            flags += [flag, ",".join(encoded)]
        piece_dictionary(bpe, piece_counts, os.path.join(tmp, "dict.txt"))
        pre = options.get_preprocessing_parser().parse_args(
            ["--only-source", *flags, "--srcdict", os.path.join(tmp, "dict.txt"),
             "--destdir", args.destdir, "--workers", str(args.workers)])
        preprocess.main(pre)

    from fairseq.data import Dictionary

    n_types = len(Dictionary.load(os.path.join(args.destdir, "dict.txt")))
    print(f"prepare_text: {args.destdir}: spm.model ({args.model_type}, {args.vocab_size} pieces), "
          f"dict.txt ({n_types} types incl. specials and padding), "
          + ", ".join(f"{name} {sum(counts[p] for p in paths)} lines" for _, name, paths in splits))


if __name__ == "__main__":
    try:
        main()
    except PrepareError as e:
        sys.exit(f"prepare_text: error: {e}")
