"""Reading the quadratic-equations answers (examples/quadratic, scripts/make_quadratic.py):
accuracy by kind of answer, what a wrong answer got wrong, and where the solution steps
computed a root. Used by scripts/eval_quadratic.py; the decoding and whether an answer is
right (token-level exact match, as fairseq-train's validation counts it) are
tarm_plugin/answer.py's."""

import re
from collections import Counter
from typing import Sequence


def normalize_answer(text: str, field_pad: str = "_") -> str:
    """The answer as written, without spaces, field padding and ``</s>``: for reading its
    kind and what a wrong answer got wrong, not for deciding whether it is right."""
    return text.replace("</s>", "").replace(" ", "").replace(field_pad, "")


def accuracy_by(keys: Sequence, right: Sequence[bool]) -> dict:
    """{key: (accuracy, samples)} of the answers grouped by ``keys`` (None: left out);
    ``right`` is each answer's token-level exact match (``tarm_plugin.answer.exact_match_rows``,
    the rule of fairseq-train's validation)."""
    if len(keys) != len(right):
        raise ValueError(f"{len(keys)} keys for {len(right)} answers")
    groups = {}
    for key, ok in zip(keys, right):
        if key is not None:
            groups.setdefault(key, []).append(bool(ok))
    return {k: (sum(v) / len(v), len(v)) for k, v in groups.items()}


def answer_kind(reference: str) -> str:
    """'no_roots', 'double_root' or 'two_roots' for a quadratic answer."""
    ref = normalize_answer(reference)
    return "no_roots" if ref == "noroots" else ("double_root" if ref.startswith("x=") else "two_roots")


def split_by_kind(references: Sequence[str], right: Sequence[bool]) -> dict:
    return accuracy_by([answer_kind(r) for r in references], right)


def miss_type(prediction: str, reference: str, right: bool) -> str:
    """What a wrong answer got wrong ('' if ``right``): 'layout' if its text is right but
    its tokens are not (field padding or </s> out of place, or a generated <s>, which
    ``Dictionary.string`` leaves out of the text), 'wrong kind' (e.g. two roots
    for a double root), for two roots 'x1 only', 'x2 only' or 'both roots', else 'value'."""
    if right:
        return ""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if pred == ref:
        return "layout"
    kind = answer_kind(ref)
    if answer_kind(pred) != kind or (kind == "two_roots" and len(pred.split(",")) != 2):
        return "wrong kind"
    if kind != "two_roots":
        return "value"
    (p1, p2), (r1, r2) = pred.split(","), ref.split(",")
    return "both roots" if p1 != r1 and p2 != r2 else ("x1 only" if p1 != r1 else "x2 only")


def count_misses(predictions: Sequence[str], references: Sequence[str], right: Sequence[bool]) -> dict:
    """{miss type: count} over the wrong answers (see :func:`miss_type`)."""
    return dict(Counter(t for t in map(miss_type, predictions, references, right) if t))


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
