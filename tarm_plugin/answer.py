"""Exact-match answers: greedy decoding of a sample's last segments with memory.

Used by the quadratic-equations task: the model reads the equation and the
solution steps (teacher-forced, memory carried across segments), then writes
the answer segment token by token; the answer is right only if every token
matches.
"""

import re
from collections import Counter
from typing import List, Sequence

import torch

from .generation import generate


@torch.no_grad()
def greedy_last_segments(model, src_tokens: torch.Tensor, segment_length: int, n_segments: int) -> torch.Tensor:
    """Greedy tokens for the last ``n_segments`` segments of each row of ``src_tokens``.

    The earlier segments are read as given; each generated token is fed back as
    the next input. Returns ``[B, n_segments * segment_length]`` token ids,
    aligned with ``target[:, -n_segments * segment_length:]``. Every row starts
    its memory at E_0 (one sample per row). Decoding is
    :func:`tarm_plugin.generation.generate`, incremental within a segment.
    """
    L = segment_length
    prefix = src_tokens.size(1) - n_segments * L
    if prefix < 0 or prefix % L:
        raise ValueError(f"{src_tokens.size(1)} tokens do not end in {n_segments} segments of {L}")
    # the given segments, then the first input of the answer (the last given token)
    return generate(model, src_tokens[:, : prefix + 1], n_segments * L, segment_length=L)


def exact_match_rows(generated: torch.Tensor, target: torch.Tensor, pad: int) -> torch.Tensor:
    """Per row: every non-pad target token was generated exactly (rows with no target: False)."""
    real = target.ne(pad)
    ok = (generated.eq(target) | ~real).all(dim=1)
    return ok & real.any(dim=1)


def normalize_answer(text: str, field_pad: str = "_") -> str:
    """The answer as written, without spaces, field padding and ``</s>``."""
    return text.replace("</s>", "").replace(" ", "").replace(field_pad, "")


def answer_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of exactly right answers (after :func:`normalize_answer`)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    right = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return right / len(references)


def answer_kind(reference: str) -> str:
    """'no_roots', 'double_root' or 'two_roots' for a quadratic answer."""
    ref = normalize_answer(reference)
    return "no_roots" if ref == "noroots" else ("double_root" if ref.startswith("x=") else "two_roots")


def accuracy_by(keys: Sequence, predictions: Sequence[str], references: Sequence[str]) -> dict:
    """{key: (accuracy, samples)} over the answers grouped by ``keys`` (None: left out)."""
    groups = {}
    for key, p, r in zip(keys, predictions, references):
        if key is not None:
            preds, refs = groups.setdefault(key, ([], []))
            preds.append(p)
            refs.append(r)
    return {k: (answer_accuracy(*v), len(v[1])) for k, v in groups.items()}


def split_by_kind(predictions: Sequence[str], references: Sequence[str]) -> dict:
    return accuracy_by([answer_kind(r) for r in references], predictions, references)


def miss_type(prediction: str, reference: str) -> str:
    """What a wrong answer got wrong: 'wrong kind' (e.g. two roots for a double root),
    for two roots 'x1 only', 'x2 only' or 'both roots', else 'value'; '' if right."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if pred == ref:
        return ""
    kind = answer_kind(ref)
    if answer_kind(pred) != kind or (kind == "two_roots" and len(pred.split(",")) != 2):
        return "wrong kind"
    if kind != "two_roots":
        return "value"
    (p1, p2), (r1, r2) = pred.split(","), ref.split(",")
    return "both roots" if p1 != r1 and p2 != r2 else ("x1 only" if p1 != r1 else "x2 only")


def count_misses(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """{miss type: count} over the wrong answers (see :func:`miss_type`)."""
    return dict(Counter(t for t in map(miss_type, predictions, references) if t))


def value_segments(tokens: Sequence[str], name: str, segment_length: int):
    """The 1-based segments holding the first and the last character of the value the
    solution steps compute for ``name`` (``x1=(...)/N=<value>``), or None if absent.
    ``tokens`` are a sample's characters (multi-character symbols such as ``</s>``
    count as one position)."""
    text = "".join(t if len(t) == 1 else "#" for t in tokens)
    m = re.search(re.escape(name) + r"=\([^)]*\)/\d+=(-?\d+)", text)
    if m is None:
        return None
    return m.start(1) // segment_length + 1, (m.end(1) - 1) // segment_length + 1


__all__: List[str] = ["greedy_last_segments", "exact_match_rows", "normalize_answer", "answer_accuracy",
                      "answer_kind", "accuracy_by", "split_by_kind", "miss_type", "count_misses",
                      "value_segments"]
