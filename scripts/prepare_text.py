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

``--doc-separator SYMBOL`` (e.g. ``<doc>``): a line that is exactly SYMBOL
separates two documents. Such lines are copied verbatim into the encoded
splits (one item holding SYMBOL and ``</s>``), SYMBOL gets its own dict.txt
entry, and sentencepiece is not trained on them. SYMBOL must be one
whitespace-free symbol that is neither a fairseq special nor a sentencepiece
piece, and the training file must hold at least one such line.

``--keep-whitespace`` (for source code): sentencepiece keeps the text as it
is: no NFKC, runs of spaces and leading indentation kept (whitespace-only
pieces such as ``▁▁▁▁`` allowed), byte fallback for characters train lacks.
fairseq splits pieces at whitespace, so every other whitespace character
(tab, form feed, carriage return, no-break space, ...) and ``▁`` itself are
normalised to a stand-in in Unicode's private use plane 16 (U+100000 + code
point) that spm.model's denormaliser maps back: ``sp.decode`` of a line's
pieces gives the line back exactly. fairseq's own ``--bpe sentencepiece``
decode does not use the denormaliser and strips each line, so through it
indentation and trailing spaces are lost and those characters show as
stand-ins (byte pieces as ``<0x..>``). Lines are split at ``\n`` only.
"""

import argparse
import io
import os
import re
import sys
import tempfile
from collections import Counter

# --keep-whitespace: characters that fairseq would split a piece at (str.split() and
# fairseq's tokenize_line both split at these), plus sentencepiece's own space mark,
# each normalised to U+100000 + its code point
KEPT_SPACES = [c for c in range(0x110000) if chr(c).isspace() and c not in (0x20, 0x0A)] + [0x2581]
STAND_IN = 0x100000


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
    p.add_argument("--doc-separator", default=None, metavar="SYMBOL",
                   help="a line that is exactly SYMBOL separates documents; it is kept as one "
                        "dict.txt symbol and not given to sentencepiece (e.g. '<doc>')")
    p.add_argument("--keep-whitespace", action="store_true",
                   help="keep the text exactly (source code): no NFKC, indentation and runs of "
                        "spaces kept, byte fallback; see the module doc")
    p.add_argument("--spm-threads", type=int, default=None,
                   help="sentencepiece training threads (default: sentencepiece's own, 16)")
    return p.parse_args(argv)


def read_lines(text: str, keep_whitespace: bool):
    """The lines as encode_file sees them: universal newlines, or only \\n with --keep-whitespace."""
    return io.StringIO(text, newline="\n" if keep_whitespace else None)


def check_separator(symbol) -> None:
    from fairseq.data import Dictionary

    if symbol is None:
        return
    if not symbol or any(c.isspace() for c in symbol):
        raise PrepareError(f"--doc-separator {symbol!r}: must be one symbol without whitespace "
                           "(it becomes one dict.txt entry)")
    if symbol in Dictionary().indices:
        raise PrepareError(f"--doc-separator {symbol}: is one of fairseq's special symbols; choose another, "
                           "e.g. '<doc>'")


def check_text(path: str, flag: str, args=None):
    """The file exists, is UTF-8 and holds some text; returns its line count, and with
    --doc-separator (args given) also its number of separator lines."""
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
    n_lines = text.count("\n") + (not text.endswith("\n"))
    if args is None:
        return n_lines
    if args.keep_whitespace:
        stand_ins = re.compile("[" + "".join(chr(STAND_IN + c) for c in KEPT_SPACES) + "]")
        found = stand_ins.search(text)
        if found:
            line = text[: found.start()].count("\n") + 1
            raise PrepareError(f"{flag} {path}: line {line} holds U+{ord(found.group()):X}, which "
                               "--keep-whitespace uses as a stand-in for whitespace")
    n_sep = 0
    if args.doc_separator is not None:
        n_sep = sum(line.rstrip("\n") == args.doc_separator for line in read_lines(text, args.keep_whitespace))
    return n_lines, n_sep


def without_separators(args, src: str, dst: str) -> None:
    """The training text less its separator lines, for sentencepiece."""
    nl = "\n" if args.keep_whitespace else None
    with open(src, encoding="utf-8", newline=nl) as fin, open(dst, "w", encoding="utf-8", newline="\n") as fout:
        for line in fin:
            if line.rstrip("\n") != args.doc_separator:
                fout.write(line if line.endswith("\n") else line + "\n")


def whitespace_rules(tmp: str):
    """sentencepiece (de)normalisation TSVs: KEPT_SPACES <-> their stand-ins, all else unchanged."""
    norm, denorm = os.path.join(tmp, "normalize.tsv"), os.path.join(tmp, "denormalize.tsv")
    with open(norm, "w") as f, open(denorm, "w") as g:
        for c in KEPT_SPACES:
            f.write(f"{c:X}\t{STAND_IN + c:X}\n")
            g.write(f"{STAND_IN + c:X}\t{c:X}\n")
    return norm, denorm


def train_sentencepiece(args, prefix: str, tmp: str) -> None:
    import sentencepiece as spm

    if args.vocab_size < 1:
        raise PrepareError(f"--vocab-size must be >= 1, got {args.vocab_size}")
    text = args.trainpref
    extra = {}
    if args.doc_separator is not None:
        text = os.path.join(tmp, "spm_train.txt")
        without_separators(args, args.trainpref, text)
    if args.keep_whitespace:
        norm, denorm = whitespace_rules(tmp)
        extra = dict(normalization_rule_tsv=norm, denormalization_rule_tsv=denorm,
                     remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, byte_fallback=True)
    if args.spm_threads is not None:
        extra["num_threads"] = args.spm_threads
    spm.set_random_generator_seed(args.seed)
    try:
        spm.SentencePieceTrainer.train(
            input=text, model_prefix=prefix, vocab_size=args.vocab_size,
            model_type=args.model_type, character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size, shuffle_input_sentence=True,
            minloglevel=2, **extra,
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


def encode_file(bpe, src: str, dst: str, counts=None, separator=None, keep_whitespace=False) -> None:
    nl = "\n" if keep_whitespace else None
    with open(src, encoding="utf-8", newline=nl) as fin, open(dst, "w", encoding="utf-8") as fout:
        for line in fin:
            line = line.rstrip("\n")
            if separator is not None and line == separator:
                fout.write(separator + "\n")  # verbatim: one dict.txt symbol
                continue
            pieces = bpe.encode(line)
            if counts is not None:
                counts.update(pieces.split())
            fout.write(pieces + "\n")


def piece_dictionary(bpe, counts, path: str, separator=None, n_separators=0) -> None:
    """fairseq's dict.txt over every sentencepiece piece, most frequent in train first
    (and the document separator, counted like a piece)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for piece, n in counts.most_common():
        d.add_symbol(piece, n=n)
    sp = bpe.sp
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i)):
            d.add_symbol(sp.id_to_piece(i), n=0)  # no-op for pieces already counted
    if separator is not None:
        if separator in d.indices or sp.piece_to_id(separator) != sp.unk_id():
            raise PrepareError(f"--doc-separator {separator}: is also a sentencepiece piece of the "
                               "trained model, so it could not be told from text; choose another symbol")
        d.add_symbol(separator, n=n_separators)
    d.finalize(padding_factor=8)
    d.save(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    splits = [("--trainpref", "train", [args.trainpref])]
    for flag, name, value in (("--validpref", "valid", args.validpref), ("--testpref", "test", args.testpref)):
        if value:
            splits.append((flag, name, value.split(",")))
    check_separator(args.doc_separator)
    counts, separators = {}, {}
    for flag, _, paths in splits:
        for path in paths:
            if args.doc_separator is None and not args.keep_whitespace:
                counts[path] = check_text(path, flag)
            else:
                counts[path], separators[path] = check_text(path, flag, args)
    if args.doc_separator is not None and separators[args.trainpref] == 0:
        raise PrepareError(f"--trainpref {args.trainpref}: no line is exactly {args.doc_separator!r} "
                           "(--doc-separator): put one such line between every two documents")
    if os.path.exists(os.path.join(args.destdir, "dict.txt")):
        raise PrepareError(f"--destdir {args.destdir} already holds a dict.txt: use a new directory")
    os.makedirs(args.destdir, exist_ok=True)

    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig
    from fairseq_cli import preprocess
    from fairseq import options

    prefix = os.path.join(args.destdir, "spm")
    with tempfile.TemporaryDirectory(prefix="prepare_text.") as tmp:
        train_sentencepiece(args, prefix, tmp)
        bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=prefix + ".model"))
        flags, piece_counts = [], Counter()
        for flag, name, paths in splits:
            encoded = []
            for k, path in enumerate(paths):
                out = os.path.join(tmp, f"{name}{k}")
                encode_file(bpe, path, out, piece_counts if name == "train" else None,
                            args.doc_separator, args.keep_whitespace)
                encoded.append(out)
            flags += [flag, ",".join(encoded)]
        piece_dictionary(bpe, piece_counts, os.path.join(tmp, "dict.txt"),
                         args.doc_separator, separators.get(args.trainpref, 0))
        pre = options.get_preprocessing_parser().parse_args(
            ["--only-source", *flags, "--srcdict", os.path.join(tmp, "dict.txt"),
             "--destdir", args.destdir, "--workers", str(args.workers)])
        preprocess.main(pre)

    from fairseq.data import Dictionary

    n_types = len(Dictionary.load(os.path.join(args.destdir, "dict.txt")))
    def docs(paths):
        if args.doc_separator is None:
            return ""
        return f" ({sum(separators[p] + 1 for p in paths)} documents)"

    spm_mode = f"{args.model_type}, {args.vocab_size} pieces" + (", whitespace kept" if args.keep_whitespace else "")
    print(f"prepare_text: {args.destdir}: spm.model ({spm_mode}), "
          f"dict.txt ({n_types} types incl. specials and padding), "
          + ", ".join(f"{name} {sum(counts[p] for p in paths)} lines{docs(paths)}" for _, name, paths in splits))


if __name__ == "__main__":
    try:
        main()
    except PrepareError as e:
        sys.exit(f"prepare_text: error: {e}")
