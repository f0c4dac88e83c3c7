"""Exact-match accuracy of a quadratic-equations checkpoint on a split.

The model reads the equation and the steps (segments 1-5, memory carried)
and greedily writes the answer segment; an answer is right if every token of the
reference's answer segment (field padding ``_`` and ``</s>`` included) is written
exactly: the token-level exact match of fairseq-train's validation. Prints the accuracy
overall and per kind (two roots, double root, no real roots) and the wrong answers by
what they got wrong (x1 only, x2 only, both roots, wrong kind, value; layout: the text
right, its padding or ``</s>`` out of place, or a generated ``<s>``) as JSON.

Usage: python scripts/eval_quadratic.py --path CKPT --data data-bin/quadratic [--split test]
           [--misses FILE]   # the wrong answers, one line each:
                             # reference<TAB>answer<TAB>what is wrong<TAB>where the steps computed x1
"""

import argparse
import json
import os
import sys

import torch

from lab import load_checkpoint
from quadratic_answers import (accuracy_by, answer_kind, count_misses, miss_type, normalize_answer,
                               split_by_kind, value_segments)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--misses", help="write each wrong answer to this file as 'reference<TAB>answer<TAB>"
                   "what is wrong (x1 only, ...)<TAB>where the steps computed x1 (segment 3, ...; - if nowhere)'")
    args = p.parse_args()
    for f, what in ((args.path, "--path"), (os.path.join(args.data, "dict.txt"), "--data")):
        if not os.path.isfile(f):
            sys.exit(f"eval_quadratic: error: {what}: {f} not found")

    model, task = load_checkpoint(args.path, args.data, args.batch_size)
    from tarm_plugin.answer import exact_match_rows, greedy_last_segments  # importable once the plugin is loaded

    n_answer = task.args.eval_exact_match_segments or 1
    L = task.args.segment_length
    task.load_dataset(args.split)
    d = task.target_dictionary
    preds, refs, right, x1_at = [], [], [], []
    with torch.no_grad():
        for sample in task.get_batch_iterator(task.dataset(args.split)).next_epoch_itr(shuffle=False):
            src, tgt = sample["net_input"]["src_tokens"], sample["target"][:, -n_answer * L:]
            gen = greedy_last_segments(model, src, L, n_answer)
            for g, t, row, ok in zip(gen, tgt, src, exact_match_rows(gen, tgt, d.pad()).tolist()):
                keep = t.ne(d.pad())
                if keep.any():
                    right.append(ok)
                    preds.append(d.string(g[keep], include_eos=True))
                    refs.append(d.string(t[keep], include_eos=True))
                    # the model's input positions (the row starts with </s>)
                    x1_at.append(value_segments([d[i] for i in row], "x1", L))
    result = {"split": args.split, "samples": len(refs), "accuracy": sum(right) / max(len(right), 1),
              "by_kind": {k: {"accuracy": a, "samples": n} for k, (a, n) in split_by_kind(refs, right).items()},
              "misses": count_misses(preds, refs, right)}
    # two-root answers by where the steps computed x1: a value in an earlier segment must
    # be carried through more memory writes before the answer segment
    x1_at = [None if at is None else f"segment {at[0]}" if at[0] == at[1] else f"segments {at[0]}-{at[1]}"
             for at in x1_at]
    where = [at if answer_kind(r) == "two_roots" else None for at, r in zip(x1_at, refs)]
    result["two_roots_by_x1_segment"] = {k: {"accuracy": a, "samples": n}
                                         for k, (a, n) in sorted(accuracy_by(where, right).items())}
    if args.misses:
        with open(args.misses, "w") as f:
            for g, r, ok, at in zip(preds, refs, right, x1_at):
                if what := miss_type(g, r, ok):
                    f.write(f"{normalize_answer(r)}\t{normalize_answer(g)}\t{what}\t{at or '-'}\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
