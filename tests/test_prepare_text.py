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
