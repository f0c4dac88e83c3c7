"""Continuation quality with and without memory: BLEU and chrF (sacrebleu) of greedy continuations.

    python scripts/continuation_bleu.py --data data-bin/ptb --split test \\
        --path none=checkpoints/ptb_m0/checkpoint_best.pt rmt=checkpoints/ptb_rmt/checkpoint_best.pt \\
               tarm=checkpoints/ptb_tarm_a0.2/checkpoint_best.pt \\
        --context-segments 4 --out results/continuation/ptb.json results/continuation/ptb.md

The split's token stream (as ``tarm_language_modeling`` reads it) is cut into
non-overlapping held-out documents of ``N + 1`` segments of ``L`` tokens
(``--context-segments N``; ``--segment-length L``, default: the first
checkpoint's). If there are more than ``--max-docs``, that many are taken
evenly spread over the split. Each model reads the first N segments into
memory (the input of a document's first token is the token before it in the
stream, ``</s>`` at the split's start), then greedily writes the next L
tokens with :func:`tarm_plugin.generation.generate`; these are scored against
the true next segment with sacrebleu's ``corpus_bleu`` and ``corpus_chrf``
(and the share of tokens equal to the reference at the same position).
Tokens are detokenised with the data-bin's ``spm.model`` when it has one
(scripts/prepare_text.py), else joined by spaces; ``</s>`` is dropped.
A model without memory (``--num-memory-tokens 0``) sees only the last context
token: the context reaches the continuation through memory alone.

``--documents`` (for a data-bin of documents, as ``--sample-break-mode doc``
reads them; ``--doc-separator`` as there): the windows lie inside documents,
each document tiled from its start by windows of N + 1 segments (a window
never crosses into the next document; documents shorter than one window are
skipped): N segments of the document are read into memory (the input of a
window's first token is ``</s>`` at the document's start, else the document's
token before it), then the model writes the next segment. The outputs also give the token accuracy by
position within the generated segment (``position_accuracy``, in 8 buckets), and by token class
(``class_accuracy``): each reference token is local (it occurs among the ``W`` tokens of the
window before it), far (earlier in the window, not within those ``W``) or new, as eval-lm's
``--eval-token-classes`` (``--local-window W``, default the segment length: far tokens are
those only the memory can bring into the generated segment).
"""

import argparse
import json
import logging
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
logging.basicConfig(level=logging.WARNING)  # before fairseq's import-time INFO lines

from lab import command_line, load_checkpoint  # noqa: E402
from tarm_plugin.errors import TarmError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="data-bin (fairseq-preprocess output)")
    p.add_argument("--split", default="test", help="split to cut documents from (default test)")
    p.add_argument("--path", nargs="+", required=True, metavar="NAME=CHECKPOINT",
                   help="checkpoints to compare, e.g. none=a.pt rmt=b.pt tarm=c.pt")
    p.add_argument("--context-segments", type=int, default=4, help="N segments read before generating (default 4)")
    p.add_argument("--segment-length", type=int, default=None, help="L (default: the first checkpoint's)")
    p.add_argument("--max-docs", type=int, default=500, help="at most this many documents (default 500)")
    p.add_argument("--batch-size", type=int, default=32, help="windows generated at once (default 32)")
    p.add_argument("--examples", type=int, default=2, help="example continuations in the outputs (default 2)")
    p.add_argument("--local-window", type=int, default=None,
                   help="W of the token classes: a reference token seen among the W tokens before it "
                        "is local, seen only earlier in the window far (default: the segment length)")
    p.add_argument("--out", nargs="*", default=[], help="result files: *.json and/or *.md")
    p.add_argument("--documents", action="store_true",
                   help="windows inside each document (a document data-bin) instead of the stream")
    p.add_argument("--doc-separator", default=None,
                   help="with --documents: the separator symbol between documents (default: empty lines)")
    return p.parse_args(argv)


def parse_paths(items):
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TarmError(f"--path {item}: expected NAME=CHECKPOINT, e.g. tarm=checkpoints/x/checkpoint_best.pt")
        if not os.path.isfile(path):
            raise TarmError(f"--path {name}={path}: checkpoint not found")
        if name in [n for n, _ in out]:
            raise TarmError(f"--path {name}=...: the name {name} is given twice")
        out.append((name, path))
    return out


def documents(tokens: np.ndarray, eos: int, L: int, n_context: int, max_docs: int):
    """Held-out documents of ``n_context + 1`` segments from the stream ``tokens``.

    Returns ``(inputs [D, n_context*L + 1], references [D, L], starts [D])``:
    ``inputs`` is the token before the document (``eos`` at the stream start)
    and its ``n_context`` context segments; ``references`` the segment after them.
    """
    if L < 1 or n_context < 1:
        raise TarmError(f"--segment-length ({L}) and --context-segments ({n_context}) must be >= 1")
    width = (n_context + 1) * L
    n = len(tokens) // width
    if n == 0:
        raise TarmError(f"the split has {len(tokens)} tokens, fewer than one document of "
                        f"{n_context + 1} x {L}: lower --context-segments or --segment-length")
    chosen = np.arange(n) if n <= max_docs else np.unique(np.linspace(0, n - 1, max_docs).round().astype(int))
    starts = chosen * width
    padded = np.concatenate([[eos], tokens]).astype(np.int64)  # padded[s] is the token before tokens[s]
    inputs = np.stack([padded[s : s + n_context * L + 1] for s in starts])
    refs = np.stack([tokens[s + n_context * L : s + width] for s in starts]).astype(np.int64)
    return torch.from_numpy(inputs), torch.from_numpy(refs), starts


def document_windows(split, dictionary, separator, L: int, n_context: int, max_docs: int):
    """Windows inside documents: each document of ``n_context + 1`` segments or more is
    tiled from its start by windows of ``n_context + 1`` segments (a window never crosses
    into the next document). Returns ``(inputs [D, n_context*L + 1], references [D, L],
    starts [D], documents)`` (``documents``: how many documents the windows come from), the
    first three as :func:`documents`: the input of a window's first token is ``</s>`` at a
    document's start, else the document's token before the window."""
    from tarm_plugin.datasets import document_spans, split_tokens

    if L < 1 or n_context < 1:
        raise TarmError(f"--segment-length ({L}) and --context-segments ({n_context}) must be >= 1")
    sep = None
    if separator:
        if separator not in dictionary.indices:
            raise TarmError(f"--doc-separator '{separator}' is not in the dictionary")
        sep = dictionary.index(separator)
    tokens = split_tokens(split)
    width = (n_context + 1) * L
    starts = [(a + j * width, j == 0, i) for i, (a, b) in enumerate(document_spans(split, dictionary.eos(), sep))
              for j in range((b - a) // width)]
    if not starts:
        raise TarmError(f"no document of the split has {n_context + 1} segments of {L} tokens: "
                        "lower --context-segments or --segment-length")
    if len(starts) > max_docs:
        starts = [starts[i] for i in np.unique(np.linspace(0, len(starts) - 1, max_docs).round().astype(int))]
    inputs = np.stack([np.concatenate([[dictionary.eos() if first else tokens[s - 1]], tokens[s : s + n_context * L]])
                       for s, first, _ in starts])
    refs = np.stack([tokens[s + n_context * L : s + width] for s, _, _ in starts])
    n_documents = len({doc for _, _, doc in starts})
    starts = np.array([s for s, _, _ in starts])
    return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(refs.astype(np.int64)), starts, n_documents


def position_accuracy(generated: torch.Tensor, refs: torch.Tensor, buckets: int = 8):
    """Token accuracy by position within the generated segment, in ``buckets`` equal spans."""
    hits = generated.eq(refs).float().mean(dim=0)
    return [round(float(chunk.mean()), 4) for chunk in hits.chunk(min(buckets, hits.numel()))]


def reference_classes(inputs: torch.Tensor, refs: torch.Tensor, window: int) -> torch.Tensor:
    """[D, L] class of each reference token (eval_batches.LOCAL / FAR / NEW) by its last
    occurrence in its window's text before it (the context, then the reference)."""
    from tarm_plugin.eval_batches import token_classes

    n = inputs.size(1) - 1  # the context's tokens (inputs[:, 0] is the token before the window)
    return torch.tensor([token_classes(inp[1:].tolist() + ref.tolist(), window, start=n)
                         for inp, ref in zip(inputs, refs)], dtype=torch.long).view(refs.shape)


def class_accuracy(generated: torch.Tensor, refs: torch.Tensor, classes: torch.Tensor) -> dict:
    """{class: {"accuracy", "tokens"}}: token accuracy on the reference tokens of each class."""
    from tarm_plugin.eval_batches import CLASS_NAMES

    hits = generated.eq(refs)
    out = {}
    for c, name in enumerate(CLASS_NAMES):
        mask = classes.eq(c)
        n = int(mask.sum())
        out[name] = {"accuracy": round(float(hits[mask].float().mean()), 4) if n else None, "tokens": n}
    return out


def detokenizer(data: str, dictionary):
    """Token ids -> text: sentencepiece decode when the data-bin has spm.model, else words."""
    bpe = None
    spm_model = os.path.join(data, "spm.model")
    if os.path.isfile(spm_model):
        from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

        bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=spm_model))

    def text(ids: torch.Tensor) -> str:
        s = dictionary.string(ids)  # drops </s>
        return bpe.decode(s) if bpe is not None else " ".join(s.split())

    return text


def score_texts(hyps, refs):
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    chrf = sacrebleu.corpus_chrf(hyps, [refs])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}


@torch.no_grad()
def continuations(model, inputs, L, batch_size):
    from tarm_plugin.generation import generate

    out = [generate(model, inputs[i : i + batch_size], L, segment_length=L)
           for i in range(0, len(inputs), batch_size)]
    return torch.cat(out)


def memory_rate(memory):
    """The table's "a": a fixed rate, a learned one (its mean now), or a gate (its start)."""
    if not memory.token_slots:  # another kind of memory than tokens
        return type(memory).__name__
    if memory.learned_rate:
        return f"learned ({float(memory.rate().mean()):.3f})"
    return f"gate from {memory.alpha}" if memory.gated else memory.alpha


def markdown(result) -> str:
    where = f" in {result['documents']} documents" if result.get("documents") else ""
    lines = [f"Greedy continuations on `{result['data']}` ({result['split']}): {result['docs']} windows{where}, "
             f"{result['context_segments']} context segments of {result['segment_length']} tokens, "
             f"then {result['segment_length']} generated tokens scored against the true next segment.",
             f"Windows: {result.get('windows', 'the stream')}. Token accuracy by position: the generated "
             "segment in 8 equal spans, first to last. By token class: a reference token is local if it "
             f"occurs among the {result.get('local_window')} tokens of the window before it, far if only "
             "earlier in the window, new otherwise (tokens of each class in brackets).",
             "", "| model | memory slots | a | BLEU | chrF | token acc. | local | far | new | token acc. by position |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def acc(c):
        return "-" if c["accuracy"] is None else f"{c['accuracy']:.3f} ({c['tokens']})"

    for r in result["models"]:
        by_pos = " / ".join(f"{x:.2f}" for x in r.get("position_accuracy", []))
        classes = r.get("class_accuracy", {})
        by_class = " | ".join(acc(classes[c]) if c in classes else "-" for c in ("local", "far", "new"))
        lines.append(f"| {r['name']} | {r['num_memory_tokens']} | {r['memory_ema_alpha']} | {r['bleu']:.2f} | "
                     f"{r['chrf']:.2f} | {r['token_accuracy']:.3f} | {by_class} | {by_pos} |")
    for k, ex in enumerate(result["examples"]):
        lines += ["", f"Example {k + 1} (window from token {ex['start']} of the split):", "",
                  f"- context (last 200 characters): ...{ex['context'][-200:]}",
                  f"- reference: {ex['reference']}"]
        lines += [f"- {name}: {text or '(no text: line ends only, `</s>`, which the text leaves out)'}"
                  for name, text in ex["generated"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    paths = parse_paths(args.path)
    for out in args.out:
        if not out.endswith((".json", ".md")):
            raise TarmError(f"--out {out}: name a .json or .md file")
    if not os.path.isfile(os.path.join(args.data, "dict.txt")):
        raise TarmError(f"--data {args.data}: no dict.txt (is it a fairseq-preprocess output?)")

    from tarm_plugin.datasets import split_tokens
    from fairseq.data import data_utils

    result, docs = None, None
    for name, path in paths:
        model, task = load_checkpoint(path, args.data)
        d = task.source_dictionary
        if docs is None:
            L = args.segment_length or model.default_segment_length
            split = data_utils.load_indexed_dataset(os.path.join(args.data, args.split), d)
            if split is None:
                raise TarmError(f"--split {args.split}: no {args.split}.bin/.idx in {args.data}")
            if args.documents:
                inputs, refs, starts, n_documents = document_windows(split, d, args.doc_separator, L,
                                                                     args.context_segments, args.max_docs)
            else:
                inputs, refs, starts = documents(split_tokens(split), d.eos(), L, args.context_segments,
                                                 args.max_docs)
                n_documents = None  # the stream's windows are the held-out "documents"
            text = detokenizer(args.data, d)
            ref_texts = [text(r) for r in refs]
            window = args.local_window or L
            classes = reference_classes(inputs, refs, window)
            result = {"data": args.data, "split": args.split, "segment_length": L, "local_window": window,
                      "windows": "inside documents" if args.documents else "the stream",
                      "context_segments": args.context_segments, "docs": len(inputs), "documents": n_documents,
                      "command": command_line(__file__, argv),
                      "models": [],
                      "examples": [{"start": int(starts[k]), "context": text(inputs[k, 1:]),
                                    "reference": ref_texts[k], "generated": {}}
                                   for k in range(min(args.examples, len(inputs)))]}
            docs = (inputs, refs, ref_texts, classes)
        inputs, refs, ref_texts, classes = docs
        gen = continuations(model, inputs, L, args.batch_size)
        hyps = [text(g) for g in gen]
        scores = score_texts(hyps, ref_texts)
        result["models"].append({
            "name": name, "path": path,
            "num_memory_tokens": int(model.memory.num_tokens),
            "memory_ema_alpha": memory_rate(model.memory),
            "trained_segment_length": model.default_segment_length,
            **scores, "token_accuracy": round(float(gen.eq(refs).float().mean()), 4),
            "position_accuracy": position_accuracy(gen, refs),
            "class_accuracy": class_accuracy(gen, refs, classes)})
        for ex in result["examples"]:
            k = [int(s) for s in starts].index(ex["start"])
            ex["generated"][name] = hyps[k]
    table = markdown(result)
    print(table, end="")
    for out in args.out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            if out.endswith(".json"):
                json.dump(result, f, indent=1)
                f.write("\n")
            else:
                f.write(table)
    return result


if __name__ == "__main__":
    main()
