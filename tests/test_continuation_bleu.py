"""scripts/continuation_bleu.py: documents cut from the stream, greedy continuations, sacrebleu scores."""

import json
import os
import sys

import numpy as np
import pytest
import torch

from conftest import PLUGIN, ROOT, run

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import continuation_bleu as cb  # noqa: E402
from lab import load_checkpoint  # noqa: E402

TEXT = os.path.join(ROOT, "examples", "text")
SCRIPT = os.path.join(ROOT, "scripts", "continuation_bleu.py")


def test_documents_are_consecutive_slices_of_the_stream():
    tokens = np.arange(4, 104)
    L, N, eos = 4, 2, 2
    inputs, refs, starts = cb.documents(tokens, eos, L, N, max_docs=100)
    width = (N + 1) * L
    assert len(inputs) == 100 // width and list(starts) == [d * width for d in range(len(inputs))]
    for d, s in enumerate(starts):
        before = eos if s == 0 else tokens[s - 1]
        assert inputs[d, 0] == before
        assert inputs[d, 1:].tolist() == tokens[s : s + N * L].tolist()
        assert refs[d].tolist() == tokens[s + N * L : s + width].tolist()
    # fewer documents: spread over the split, first and last kept
    _, _, few = cb.documents(tokens, eos, L, N, max_docs=3)
    assert list(few) == [0, 4 * width, 7 * width]
    with pytest.raises(cb.TarmError, match="fewer than one document"):
        cb.documents(tokens[:11], eos, L, N, max_docs=3)


def test_document_windows_tile_each_long_enough_document():
    from fairseq.data import Dictionary

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_documents import Lines, as_lines, make_docs

    d = Dictionary()
    for i in range(5000):
        d.add_symbol(str(i))
    docs = make_docs(9, lo=5, hi=40)
    sep = d.add_symbol("<doc>")
    lines = as_lines(docs, separator=sep)
    L, N = 4, 3
    width = (N + 1) * L
    inputs, refs, starts, n_docs = cb.document_windows(Lines(lines), d, "<doc>", L, N, max_docs=100)
    expected = [(doc, j) for doc in docs for j in range(len(doc) // width)]
    assert len(inputs) == len(expected) > len([doc for doc in docs if len(doc) >= width]) > 0
    assert n_docs == len([doc for doc in docs if len(doc) >= width]), "the documents the windows come from"
    for (doc, j), x, r in zip(expected, inputs, refs):
        s = j * width
        before = d.eos() if j == 0 else doc[s - 1]  # </s> at the document's start, else its own token
        assert x.tolist() == [before] + doc[s : s + N * L]
        assert r.tolist() == doc[s + N * L : s + width], "the reference stays inside the document"
    few = cb.document_windows(Lines(lines), d, "<doc>", L, N, max_docs=3)
    assert len(few[0]) == 3 and few[2][0] == starts[0] and few[2][-1] == starts[-1]
    picked = np.unique(np.linspace(0, len(expected) - 1, 3).round().astype(int))
    owner = [k for k, doc in enumerate(docs) for _ in range(len(doc) // width)]  # each window's document
    assert few[3] == len({owner[i] for i in picked}), "the documents of the windows kept"
    with pytest.raises(cb.TarmError, match="not in the dictionary"):
        cb.document_windows(Lines(lines), d, "<nope>", L, N, max_docs=100)
    with pytest.raises(cb.TarmError, match="no document"):
        cb.document_windows(Lines(lines), d, "<doc>", L, 50, max_docs=100)


def test_position_accuracy_buckets():
    refs = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    gen = torch.tensor([[1, 2, 0, 0], [1, 0, 0, 4]])
    assert cb.position_accuracy(gen, refs, buckets=2) == [0.75, 0.25]
    assert cb.position_accuracy(gen, refs, buckets=8) == [1.0, 0.5, 0.0, 0.5]


def test_scores_are_sacrebleu_corpus_scores():
    refs = ["the keeper lit the lamp before the sun went down", "the river rose higher than ever"]
    perfect = cb.score_texts(refs, refs)
    assert perfect == {"bleu": 100.0, "chrf": 100.0}
    worse = cb.score_texts(["the keeper lit a fire", "the mill stood still"], refs)
    assert 0 <= worse["bleu"] < 100 and 0 < worse["chrf"] < 100


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("cb")
    data = str(base / "bin")
    p = run([sys.executable, os.path.join(ROOT, "scripts", "prepare_text.py"), "--trainpref", f"{TEXT}/train.txt",
             "--validpref", f"{TEXT}/valid.txt", "--destdir", data, "--vocab-size", "300"])
    assert p.returncode == 0, p.stderr[-2000:]
    ckpts = {}
    for name, m in (("none", "0"), ("tarm", "4")):
        save = str(base / name)
        p = run(["fairseq-train", data, "--user-dir", PLUGIN, "--task", "tarm_language_modeling",
                 "--segment-length", "8", "--arch", "tarm_lm", "--criterion", "tarm_lm_loss",
                 "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
                 "--decoder-attention-heads", "2", "--tokens-per-sample", "8", "--num-memory-tokens", m,
                 "--memory-ema-alpha", "0.5", "--bptt-segments", "2", "--batch-size", "4", "--optimizer", "adam",
                 "--lr", "3e-3", "--max-update", "10", "--cpu", "--save-dir", save, "--no-epoch-checkpoints",
                 "--no-progress-bar", "--num-workers", "0", "--disable-validation"])
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        ckpts[name] = os.path.join(save, "checkpoint_last.pt")
    return data, ckpts


def test_reference_tokens_are_classed_by_their_window_and_accuracy_by_class():
    # context a b c d | reference a e b a, window 3: a was 4 back (far), e new,
    # b was 5 back (far), a was 2 back (local, the reference's own a)
    a, b, c, d, e = 10, 11, 12, 13, 14
    inputs = torch.tensor([[2, a, b, c, d]])  # </s>, then the context
    refs = torch.tensor([[a, e, b, a]])
    classes = cb.reference_classes(inputs, refs, window=3)
    assert classes.tolist() == [[1, 2, 1, 0]]  # far, new, far, local
    gen = torch.tensor([[a, 0, 0, a]])
    acc = cb.class_accuracy(gen, refs, classes)
    assert acc == {"local": {"accuracy": 1.0, "tokens": 1}, "far": {"accuracy": 0.5, "tokens": 2},
                   "new": {"accuracy": 0.0, "tokens": 1}}


def test_cli_generates_and_scores_each_checkpoint(two_models, tmp_path):
    data, ckpts = two_models
    out_json, out_md = str(tmp_path / "r.json"), str(tmp_path / "r.md")
    p = run([sys.executable, SCRIPT, "--data", data, "--split", "valid", "--context-segments", "2",
             "--path", f"none={ckpts['none']}", f"tarm={ckpts['tarm']}", "--batch-size", "5",
             "--out", out_json, out_md])
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    with open(out_json) as f:
        result = json.load(f)
    assert [r["name"] for r in result["models"]] == ["none", "tarm"]
    assert [r["num_memory_tokens"] for r in result["models"]] == [0, 4]
    from fairseq.data import Dictionary, data_utils
    from tarm_plugin.datasets import split_tokens

    d = Dictionary.load(os.path.join(data, "dict.txt"))
    valid = data_utils.load_indexed_dataset(os.path.join(data, "valid"), d)
    tokens = split_tokens(valid).copy()  # a copy: split_tokens may be a view of valid's mmap
    L = 8
    assert result["segment_length"] == L and result["docs"] == len(tokens) // (3 * L)
    for r in result["models"]:
        assert 0 <= r["bleu"] <= 100 and 0 <= r["chrf"] <= 100 and 0 <= r["token_accuracy"] <= 1
        classes = r["class_accuracy"]
        assert sum(c["tokens"] for c in classes.values()) == result["docs"] * L  # every reference token once
        hits = sum(c["accuracy"] * c["tokens"] for c in classes.values() if c["tokens"])
        n = result["docs"] * L
        assert hits == pytest.approx(r["token_accuracy"] * n, abs=2e-4 * n)  # accuracies rounded to 4 decimals
    with open(out_md) as f:
        md = f.read()
    assert md == p.stdout and "| tarm | 4 | 0.5 |" in md and "| none | 0 |" in md

    # the first document, rebuilt here: </s> + 2 segments, then the true next segment
    text = cb.detokenizer(data, d)
    ex = result["examples"][0]
    assert ex["start"] == 0 and ex["reference"] == text(torch.from_numpy(tokens[2 * L : 3 * L].astype(np.int64)))
    from tarm_plugin.generation import generate

    inputs = torch.from_numpy(np.concatenate([[d.eos()], tokens[: 2 * L]]).astype(np.int64)).unsqueeze(0)
    for name, path in ckpts.items():
        model, _ = load_checkpoint(path, data)
        assert ex["generated"][name] == text(generate(model, inputs, L, segment_length=L)[0])


def test_bad_path_is_one_line(two_models):
    data, ckpts = two_models
    for bad, word in (("tarm", "NAME=CHECKPOINT"), ("tarm=/nope.pt", "checkpoint not found")):
        p = run([sys.executable, SCRIPT, "--data", data, "--path", bad])
        assert p.returncode != 0
        err = p.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tarm: error: --path") and word in err[0], p.stderr[-1000:]
