"""What a long-context reviewer asks of the memory, in fairseq-eval-lm:
the memory horizon (--eval-memory-horizon K: memory built from E_0 over only the
K segments before each scored one) and the token classes (--eval-token-classes:
loss on local / far / new tokens)."""

import json
import math
import os
import re

import pytest
import torch

from tarm_plugin.eval_batches import FAR, LOCAL, NEW, MemoryHorizon, TokenClasses
from tarm_plugin.errors import TarmError
from test_documents import DOC, doc_bin, doc_tokens  # noqa: F401 (doc_bin is a fixture)

PAD = 1


def batch(target, depth, L):
    """A batch as the task's datasets give it: ``target`` [B, n*L], ``depth`` [B, n]."""
    target = torch.tensor(target)
    depth = torch.tensor(depth)
    return {"target": target, "segment_depth": depth,
            "net_input": {"src_tokens": target.clone(), "reset": depth <= 0, "segment_length": L}}


def test_token_classes_by_hand():
    """W = 2. Row 0: one document over two batches of 3-token segments, then a new document
    (depth 0 again: nothing seen); row 1: padding, then a document's first segment."""
    classes = TokenClasses(window=2, pad=PAD)
    got = [classes(batch([[5, 6, 5], [PAD, PAD, PAD]], [[0], [-1]], L=3))["token_class"],
           classes(batch([[7, 6, 5], [8, 8, 9]], [[1], [0]], L=3))["token_class"],
           classes(batch([[6, 5, PAD], [9, 4, 8]], [[0], [1]], L=3))["token_class"]]
    want = [[[NEW, NEW, LOCAL], [-1, -1, -1]],
            # 7 new; 6 at position 4, last at 1: 3 back > W: far; 5 at 5, last at 2: far
            [[NEW, FAR, FAR], [NEW, LOCAL, NEW]],
            # row 0 starts a document: 6 and 5 are new there; row 1: 9 one back, 4 new, 8 3 back
            [[NEW, NEW, -1], [LOCAL, NEW, FAR]]]
    assert [g.tolist() for g in got] == want


def test_token_classes_several_segments_per_batch():
    """Two segments of 2 in one batch, the document starting at the second one."""
    out = TokenClasses(window=1, pad=PAD)(batch([[3, 3, 4, 4]], [[-1, 0]], L=2))["token_class"]
    assert out.tolist() == [[-1, -1, NEW, LOCAL]]


def test_memory_horizon_batches():
    """K = 2: the two previous batches' segments come first, unscored; the memory is reset
    at the batch's start and wherever a document starts inside it."""
    horizon = MemoryHorizon(2, pad=PAD)
    seen = []
    for i, (tgt, depth) in enumerate([([[4, 5], [6, 7]], [[0], [3]]), ([[8, 9], [PAD, PAD]], [[1], [-1]]),
                                      ([[10, 11], [12, 13]], [[2], [0]]), ([[14, 15], [16, 17]], [[3], [1]])]):
        b = batch(tgt, depth, L=2)
        b["id"] = i
        seen.append(horizon(b))
    first, last = seen[0], seen[3]
    assert torch.equal(first["net_input"]["src_tokens"], torch.tensor([[4, 5], [6, 7]]))
    assert first["net_input"]["reset"].tolist() == [[True], [True]]
    assert torch.equal(last["net_input"]["src_tokens"], torch.tensor([[8, 9, 10, 11, 14, 15], [PAD, PAD, 12, 13, 16, 17]]))
    assert last["target"].tolist() == [[PAD] * 4 + [14, 15], [PAD] * 4 + [16, 17]]
    assert last["net_input"]["reset"].tolist() == [[True, False, False], [True, True, False]]
    assert last["segment_depth"].tolist() == [[-1, -1, 3], [-1, -1, 1]]
    assert last["start_indices"].tolist() == [4, 4]
    with pytest.raises(TarmError, match="--eval-memory-horizon"):
        MemoryHorizon(-1, pad=PAD)
    with pytest.raises(TarmError, match="--eval-local-window"):
        TokenClasses(0, pad=PAD)


def table(p, prefix=""):
    """{label: (tokens, bits)} of eval-lm's by-depth rows (or, with a prefix, e.g. 'class ', those rows)."""
    rows = re.findall(r"eval_segments(?: \| |:)\s+" + prefix + r"(\d+(?:-\d+)?|local|far|new)\s+([\d,]+)\s+([\d.]+)\s+[\d.]+$",
                      p.stdout + p.stderr, re.M)
    return {label: (int(n.replace(",", "")), float(b)) for label, n, b in rows}


@pytest.fixture(scope="module")
def doc_ckpt(doc_bin, tmp_path_factory):  # noqa: F811
    from test_cli import train

    out = tmp_path_factory.mktemp("horizon")
    train(doc_bin["blank"], out, *DOC, "--dropout", "0", max_update=12)
    return doc_bin["blank"], str(out / "checkpoint_last.pt")


@pytest.mark.cli
def test_memory_horizon_equals_plain_and_reset_at_its_ends(doc_bin, doc_ckpt, tmp_path):  # noqa: F811
    from test_cli import eval_lm, eval_numbers
    from test_eval_lm import eval_loss

    data, ckpt = doc_ckpt
    n = doc_tokens(doc_bin["raw"], "valid")
    valid = ["--gen-subset", "valid", "--eval-segment-ppl"]
    plain, reset = eval_lm(data, ckpt, *valid), eval_lm(data, ckpt, *valid, "--eval-reset-memory")
    far, k0, k1 = (eval_lm(data, ckpt, *valid, "--eval-memory-horizon", k) for k in ("1000", "0", "1"))
    for p in (plain, reset, far, k0, k1):
        assert eval_numbers(p)[0] == n, "every document token scored once"
    assert table(far) == table(plain) and eval_loss(far) == eval_loss(plain), "K beyond every depth: plain"
    assert table(k0) == table(reset) and eval_loss(k0) == eval_loss(reset), "K = 0: E_0 at every segment"
    t1, tp = table(k1), table(plain)
    assert [t1[d] for d in ("0", "1")] == [tp[d] for d in ("0", "1")], "depth <= K: as carried"
    assert all(t1[d] != tp[d] for d in tp if d not in ("0", "1")), "deeper: only one segment back"
    # with the losses per document and token classes: the same rows as carried for K beyond every
    # depth (the prepended context is nobody's document)
    rows = {}
    for name, k in (("plain", []), ("far", ["--eval-memory-horizon", "1000"])):
        path = str(tmp_path / f"{name}.json")
        eval_lm(data, ckpt, *valid, "--eval-token-classes", "--eval-document-losses", path, *k)
        rows[name] = sorted(map(tuple, json.load(open(path))["rows"]))
    assert [r[:4] for r in rows["far"]] == [r[:4] for r in rows["plain"]]
    assert [r[4] for r in rows["far"]] == pytest.approx([r[4] for r in rows["plain"]], rel=1e-5)


@pytest.mark.cli
def test_eval_lm_of_the_training_split_reads_it_as_evaluation_does(doc_bin, doc_ckpt, tmp_path):  # noqa: F811
    # --gen-subset train: one segment per row in file order (the training layout's k segments
    # per row would leave padding between scored tokens): the same tokens and loss as the
    # same data under another split's name
    from test_cli import eval_lm, eval_numbers
    from test_eval_lm import eval_loss

    data, ckpt = doc_ckpt
    other = tmp_path / "as_valid"
    other.mkdir()
    os.symlink(os.path.join(data, "dict.txt"), other / "dict.txt")
    for ext in ("bin", "idx"):
        os.symlink(os.path.join(data, f"train.{ext}"), other / f"valid.{ext}")
    train = eval_lm(data, ckpt, "--gen-subset", "train", "--eval-segment-ppl")
    valid = eval_lm(str(other), ckpt, "--gen-subset", "valid", "--eval-segment-ppl")
    assert eval_numbers(train)[0] == eval_numbers(valid)[0] == doc_tokens(doc_bin["raw"], "train")
    assert eval_loss(train) == eval_loss(valid) and table(train) == table(valid)


@pytest.mark.cli
def test_token_classes_in_eval_lm(doc_ckpt, tmp_path):
    from test_cli import eval_lm, eval_numbers
    from test_eval_lm import eval_loss

    data, ckpt = doc_ckpt
    plain = eval_lm(data, ckpt, "--gen-subset", "valid")
    p = eval_lm(data, ckpt, "--gen-subset", "valid", "--eval-token-classes")
    count = eval_numbers(p)[0]
    classes = table(p, "class ")
    assert set(classes) == {"local", "far", "new"} and sum(n for n, _ in classes.values()) == count
    assert eval_loss(p) == eval_loss(plain), "the flag changes no score"
    assert sum(n * b for n, b in classes.values()) / count == pytest.approx(eval_loss(p), abs=1e-3)
    assert "among the 16 tokens before it" in p.stdout + p.stderr, "W = the segment length"
    # per document, depth and class: the same tokens and loss
    path = str(tmp_path / "docs.json")
    eval_lm(data, ckpt, "--gen-subset", "valid", "--eval-token-classes", "--eval-document-losses", path)
    rows = json.load(open(path))["rows"]
    assert len({r[0] for r in rows}) == 12 and sum(r[3] for r in rows) == count
    for c, name in enumerate(("local", "far", "new")):
        assert sum(r[3] for r in rows if r[2] == c) == classes[name][0]
    assert sum(r[4] for r in rows) / count / math.log(2) == pytest.approx(eval_loss(p), abs=1e-3)
    wide = table(eval_lm(data, ckpt, "--gen-subset", "valid", "--eval-token-classes",
                         "--eval-local-window", "64"), "class ")
    assert wide["new"] == classes["new"] and wide["local"][0] > classes["local"][0]


@pytest.mark.cli
@pytest.mark.parametrize("flags,flag", [
    (["--eval-memory-horizon", "-1"], "--eval-memory-horizon"),
    (["--eval-memory-horizon", "2", "--eval-reset-memory"], "--eval-memory-horizon"),
    (["--eval-local-window", "0", "--eval-token-classes"], "--eval-local-window"),
    (["--eval-local-window", "8"], "--eval-token-classes"),
    (["--eval-depth-unit", "8"], "--eval-segment-ppl"),
    (["--eval-depth-unit", "8", "--eval-segment-ppl", "--sample-break-mode", "eos"], "--eval-depth-unit"),
    (["--eval-memory-horizon", "1", "--sample-break-mode", "eos"], "--eval-memory-horizon"),
    (["--eval-document-losses", "x.json", "--sample-break-mode", "none"], "--eval-document-losses"),
    (["--eval-token-classes", "--sample-break-mode", "eos", "--loss-start-segment", "1"], "--eval-token-classes"),
])
def test_bad_eval_flags(doc_ckpt, flags, flag):
    from test_cli import eval_lm, one_line_error

    data, ckpt = doc_ckpt
    one_line_error(eval_lm(data, ckpt, "--gen-subset", "valid", *flags), flag)
