"""Bad input through the real commands: each case stops with one line,
``tarm: error: ...``, naming the flag or file, and no stack trace.

(Other flags' errors are in test_cli.py: memory flags, a missing data dir or
split, --context-window, torchrun without --distributed-world-size.)"""

import shutil

import numpy as np
import pytest

from conftest import run
from test_cli import MODEL, TASK, eval_lm, one_line_error, train

pytestmark = pytest.mark.cli


def empty_split(data):
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    MMapIndexedDatasetBuilder(f"{data}/valid.bin", dtype=np.uint16).finalize(f"{data}/valid.idx")


def garbage_idx(data, split="valid"):
    with open(f"{data}/{split}.idx", "wb") as f:
        f.write(b"not an index" * 10)


def truncated_bin(data, split="valid"):
    with open(f"{data}/{split}.bin", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)


def other_dictionary(data):
    """Replace the data-bin by one made from another text (another dict.txt)."""
    shutil.rmtree(data)
    raw = f"{data}.txt"
    with open(raw, "w") as f:
        f.write("a b c d\ne f g\n" * 50)
    p = run(["fairseq-preprocess", "--only-source", "--trainpref", raw, "--validpref", raw,
             "--testpref", raw, "--destdir", data, "--workers", "1"])
    assert p.returncode == 0, p.stderr[-2000:]


def truncated_checkpoint(path):
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, 2) * 2 // 3)


TRAIN_CASES = {
    "segment length 0": (["--segment-length", "0"], None, "--segment-length"),
    "segment length above max positions": (["--segment-length", "32"], None, "--segment-length"),
    "bptt 0": (["--bptt-segments", "0"], None, "--bptt-segments"),
    "empty split": ([], empty_split, "valid.bin"),
    "corrupt .idx": ([], garbage_idx, "valid.bin/.idx"),
    "truncated .bin": ([], truncated_bin, "valid.bin"),
    "loss start >= segments per sample": (
        ["--sample-break-mode", "eos", "--loss-start-segment", "50"], None, "--loss-start-segment 50 leaves nothing"),
    "negative loss last segments": (["--sample-break-mode", "eos", "--loss-last-segments", "-1"], None,
                                    "--loss-last-segments must be >= 0"),
    "loss last segments on streams": (["--loss-last-segments", "1"], None, "--loss-last-segments needs"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_training_input(ptb_small, tmp_path, case):
    flags, spoil, name = TRAIN_CASES[case]
    data = str(tmp_path / "data")
    shutil.copytree(ptb_small[0], data)
    if spoil:
        spoil(data)
    p = run(["fairseq-train", data, *TASK, *MODEL, "--criterion", "tarm_lm_loss", "--batch-size", "2",
             "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1", "--cpu",
             "--save-dir", str(tmp_path / "ck"), *flags])
    one_line_error(p, name)


@pytest.fixture(scope="module")
def eos_checkpoint(ptb_small, tmp_path_factory):
    """A 2-update checkpoint trained with --sample-break-mode eos (so the eval cases can
    leave the task flags to the checkpoint)."""
    save = tmp_path_factory.mktemp("bad_input_ck")
    train(ptb_small[0], save, "--sample-break-mode", "eos", max_update=2)
    return str(save / "checkpoint_last.pt")


EVAL_CASES = {
    "dictionary differs from the checkpoint's": ([], other_dictionary, None, "dictionary"),
    "truncated checkpoint": ([], None, truncated_checkpoint, "checkpoint_last.pt"),
    "missing checkpoint": (["--path", "nosuch.pt"], None, None, "nosuch.pt"),
    "segment length above max positions": (["--segment-length", "32"], None, None, "--segment-length"),
    "truncated .bin": ([], lambda d: truncated_bin(d, "test"), None, "test.bin"),
    "corrupt .idx": ([], lambda d: garbage_idx(d, "test"), None, "test.bin/.idx"),
    "loss start >= segments per sample": (["--loss-start-segment", "50"], None, None,
                                          "--loss-start-segment 50 leaves nothing"),  # eos: from the checkpoint
    "negative loss last segments": (["--loss-last-segments", "-2"], None, None, "--loss-last-segments must be >= 0"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_bad_eval_input(ptb_small, eos_checkpoint, tmp_path, case):
    flags, spoil_data, spoil_checkpoint, name = EVAL_CASES[case]
    data = str(tmp_path / "data")
    shutil.copytree(ptb_small[0], data)
    if spoil_data:
        spoil_data(data)
    ckpt = str(tmp_path / "checkpoint_last.pt")
    shutil.copy(eos_checkpoint, ckpt)
    if spoil_checkpoint:
        spoil_checkpoint(ckpt)
    one_line_error(eval_lm(data, ckpt, *flags), name)
