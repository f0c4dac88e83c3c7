"""scripts/prepare_text.py: raw text -> sentencepiece -> data-bin, and its one-line errors."""

import os
import sys

import pytest

from conftest import ROOT, run

TEXT = os.path.join(ROOT, "examples", "text")
SCRIPT = os.path.join(ROOT, "scripts", "prepare_text.py")


def prepare(*flags):
    return run([sys.executable, SCRIPT, *flags])


def split_lines(data_bin, split):
    """The split's lines decoded back to text: dict.txt ids -> pieces -> fairseq's sentencepiece decode."""
    from fairseq.data import Dictionary, data_utils
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

    d = Dictionary.load(os.path.join(data_bin, "dict.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(data_bin, split), d)
    bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=os.path.join(data_bin, "spm.model")))
    return [bpe.decode(d.string(ds[i])) for i in range(len(ds))]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_text_to_data_bin_round_trip(tmp_path, model_type):
    dest = tmp_path / "bin"
    p = prepare("--trainpref", f"{TEXT}/train.txt", "--validpref", f"{TEXT}/valid.txt",
                "--testpref", f"{TEXT}/test.txt", "--destdir", str(dest),
                "--vocab-size", "300", "--model-type", model_type)
    assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
    for f in ["spm.model", "dict.txt", "train.bin", "train.idx", "valid.bin", "test.idx"]:
        assert (dest / f).is_file(), f
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    assert sp.get_piece_size() == 300
    # every line of every split comes back as written (the text is plain ASCII, single-spaced)
    for split in ["train", "valid", "test"]:
        with open(f"{TEXT}/{split}.txt", encoding="utf-8") as f:
            original = [line.strip() for line in f]
        assert split_lines(str(dest), split) == original, split
    # the dictionary holds sentencepiece pieces, not words
    with open(dest / "dict.txt", encoding="utf-8") as f:
        symbols = [line.split()[0] for line in f]
    assert "\u2581the" in symbols
    assert f"{model_type}, 300 pieces" in p.stdout


def bad_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    return str(path)


def empty(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n")
    return str(path)


@pytest.mark.parametrize("case,expect", [
    ("missing_train", ["--trainpref", "nope.txt", "file not found"]),
    ("missing_valid", ["--validpref", "nope_valid.txt", "file not found"]),
    ("empty_train", ["--trainpref", "empty.txt", "file is empty"]),
    ("latin1_test", ["--testpref", "latin1.txt", "not UTF-8", "line 1"]),
    ("vocab_too_large", ["--vocab-size 100000", "at most", "train.txt"]),
    ("vocab_too_small", ["--vocab-size 20", "characters"]),
    ("destdir_taken", ["--destdir", "already holds a dict.txt"]),
])
def test_bad_input_is_one_line(tmp_path, case, expect):
    train, valid, test = f"{TEXT}/train.txt", f"{TEXT}/valid.txt", f"{TEXT}/test.txt"
    dest, vocab = tmp_path / "bin", "300"
    if case == "missing_train":
        train = str(tmp_path / "nope.txt")
    elif case == "missing_valid":
        valid = str(tmp_path / "nope_valid.txt")
    elif case == "empty_train":
        train = empty(tmp_path)
    elif case == "latin1_test":
        test = bad_utf8(tmp_path)
    elif case == "vocab_too_large":
        vocab = "100000"
    elif case == "vocab_too_small":
        vocab = "20"
    elif case == "destdir_taken":
        dest.mkdir()
        (dest / "dict.txt").write_text("a 1\n")
    p = prepare("--trainpref", train, "--validpref", valid, "--testpref", test,
                "--destdir", str(dest), "--vocab-size", vocab)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prepare_text: error:"), p.stderr[-2000:]
    for word in expect:
        assert word in err[0], (word, err[0])
    assert not (dest / "train.bin").exists()


# --doc-separator and --keep-whitespace ---------------------------------------------------

CODE_LINES = [
    "def area(width, height):",
    "    \"\"\"Return the area.\"\"\"",
    "    if not width:",
    "        raise ValueError('width')  ",      # trailing spaces
    "\treturn width * height",                  # a tab
    "",
    "class Box:",
    "    size = 3\x0c",                           # a form feed
    "    label = 'a\u00a0b \u2581 c'",            # a no-break space and sentencepiece's own mark
    "        ",                                  # spaces only
]


def code_docs(n, seed):
    """n small Python-like documents (no '<' in them: sentencepiece must never see one)."""
    import random

    rng = random.Random(seed)
    words = "width height depth area volume scale offset count total index".split()
    docs = []
    for _ in range(n):
        lines = list(CODE_LINES)
        for _ in range(rng.randint(2, 6)):
            a, b = rng.sample(words, 2)
            lines += [f"def {a}_{b}({a}):", f"    {b} = {a} * {rng.randint(2, 9)}", f"    return {b}", ""]
        docs.append("\n".join(lines) + "\n")
    return docs


def write_docs(path, docs, sep="<doc>"):
    path.write_text(f"{sep}\n".join(docs), encoding="utf-8")
    return str(path)


def load_split(dest, split):
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(dest, "dict.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(dest, split), d)
    return d, [ds[i].tolist() for i in range(len(ds))]


def test_doc_separator_keep_whitespace_round_trip(tmp_path):
    import sentencepiece as spm
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from prepare_text import KEPT_SPACES, STAND_IN

    train_docs = code_docs(30, 0)
    train = write_docs(tmp_path / "train.py.txt", train_docs)
    # valid: a character train lacks (byte fallback), and a document that is one line
    valid_docs = code_docs(3, 1) + ["x = '\u03bb'\n"]
    valid = write_docs(tmp_path / "valid.py.txt", valid_docs)
    dest = tmp_path / "bin"
    p = prepare("--trainpref", train, "--validpref", valid, "--destdir", str(dest), "--vocab-size", "330",
                "--doc-separator", "<doc>", "--keep-whitespace")
    assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
    n_lines = sum(doc.count("\n") for doc in train_docs) + 29
    assert f"whitespace kept), dict.txt" in p.stdout and f"train {n_lines} lines (30 documents)" in p.stdout, p.stdout
    with open(dest / "dict.txt", encoding="utf-8") as f:
        entries = dict(line.split() for line in f)
    assert entries["<doc>"] == "29"  # counted like a piece: 29 separator lines in train
    sp = spm.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=str(dest / "spm.model")))
    # sentencepiece never saw the separator lines: no piece holds '<' (the text has none)
    assert not [sp.id_to_piece(i) for i in range(sp.get_piece_size())
                if "<" in sp.id_to_piece(i) and not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    for split, path, docs in (("train", train, None), ("valid", valid, valid_docs)):
        with open(path, encoding="utf-8", newline="\n") as f:
            lines = f.read().split("\n")[:-1]
        d, items = load_split(str(dest), split)
        assert len(items) == len(lines)
        for line, item in zip(lines, items):
            assert item[-1] == d.eos()
            if line == "<doc>":
                assert item == [d.index("<doc>"), d.eos()]
                continue
            assert d.unk() not in item
            pieces = d.string(item[:-1])
            assert pieces == bpe.encode(line)  # fairseq's --bpe sentencepiece encoder gives the same pieces
            assert sp.decode_pieces(pieces.split()) == line  # exact, whitespace and all
            # fairseq's decode strips the line and knows no denormaliser: what it gives instead
            if not any(p.startswith("<0x") for p in pieces.split()):
                stand_in = "".join(chr(STAND_IN + ord(c)) if ord(c) in KEPT_SPACES else c for c in line)
                assert bpe.decode(pieces) == stand_in.strip(" ")
        if docs:
            assert sum(item == [d.index("<doc>"), d.eos()] for item in items) == len(docs) - 1


def test_doc_separator_default_normalisation(tmp_path):
    """Without --keep-whitespace the pieces are the usual ones; the separator lines are items."""
    with open(f"{TEXT}/train.txt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    docs = ["\n".join(lines[i:i + 10]) + "\n" for i in range(0, len(lines), 10)]
    train = write_docs(tmp_path / "train.txt", docs, sep="@@doc@@")
    dest = tmp_path / "bin"
    p = prepare("--trainpref", train, "--validpref", f"{TEXT}/valid.txt", "--destdir", str(dest),
                "--vocab-size", "300", "--doc-separator", "@@doc@@")
    assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
    assert f"train {len(lines) + len(docs) - 1} lines ({len(docs)} documents), valid 11 lines (1 documents)" in p.stdout
    d, items = load_split(str(dest), "train")
    seps = [k for k, item in enumerate(items) if item == [d.index("@@doc@@"), d.eos()]]
    assert seps == [10 * (k + 1) + k for k in range(len(docs) - 1)]
    assert split_lines(str(dest), "valid")[0] == open(f"{TEXT}/valid.txt").readline().strip()


@pytest.mark.parametrize("case,expect", [
    ("space_in_separator", ["--doc-separator", "without whitespace"]),
    ("special_separator", ["--doc-separator </s>", "special"]),
    ("no_separator_in_train", ["--trainpref", "no line is exactly '<doc>'"]),
    ("stand_in_in_text", ["--validpref", "line 2", "U+100009", "--keep-whitespace"]),
])
def test_doc_separator_bad_input_is_one_line(tmp_path, case, expect):
    train = write_docs(tmp_path / "train.txt", code_docs(3, 0))
    valid, sep, dest = f"{TEXT}/valid.txt", "<doc>", tmp_path / "bin"
    if case == "space_in_separator":
        sep = "end doc"
    elif case == "special_separator":
        sep = "</s>"
    elif case == "no_separator_in_train":
        train = f"{TEXT}/train.txt"
    elif case == "stand_in_in_text":
        valid = str(tmp_path / "valid.txt")
        (tmp_path / "valid.txt").write_text("ok\nbad \U00100009 here\n", encoding="utf-8")
    p = prepare("--trainpref", train, "--validpref", valid, "--destdir", str(dest), "--vocab-size", "300",
                "--doc-separator", sep, "--keep-whitespace")
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prepare_text: error:"), p.stderr[-2000:]
    for word in expect:
        assert word in err[0], (word, err[0])
    assert not (dest / "train.bin").exists()
