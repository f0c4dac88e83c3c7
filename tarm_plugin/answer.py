"""Exact-match answers: greedy decoding of a sample's last segments with memory.

Used by the quadratic-equations task: the model reads the equation and the
solution steps (teacher-forced, memory carried across segments), then writes
the answer segment token by token; the answer is right only if every token
matches. Reading the quadratic answers as text (kinds, misses) is
scripts/quadratic_answers.py's.
"""

from typing import List

import torch

from .errors import TarmError
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


def check_equal_segments(src_tokens: torch.Tensor, pad: int, L: int) -> None:
    """The answer is the batch's last segments: every row must end in the same segment
    (rows are right-padded, so a shorter sample's last segments sit further left)."""
    n_segments = (src_tokens.ne(pad).sum(dim=1) + L - 1) // L
    if bool((n_segments != n_segments.max()).any()):
        raise TarmError(f"--eval-exact-match-segments needs samples with the same number of segments; "
                        f"this validation batch has {int(n_segments.min())} to {int(n_segments.max())} "
                        f"segments of --segment-length {L}")


def answer_counts(model, sample: dict, n_segments: int, pad: int) -> dict:
    """{"em_correct", "em_total"}: the rows of ``sample`` whose last ``n_segments`` segments
    greedy decoding writes exactly (rows with an answer to write)."""
    net = sample["net_input"]
    L = net.get("segment_length") or sample["target"].size(1)
    if not bool(sample["target"].ne(pad).any()):  # a shard past the split's end: padding only
        return {"em_correct": 0, "em_total": 0}
    check_equal_segments(net["src_tokens"], pad, L)
    if net["src_tokens"].size(1) < n_segments * L:
        raise TarmError(f"--eval-exact-match-segments {n_segments}: this validation batch's samples have "
                        f"{net['src_tokens'].size(1) // L} segments of --segment-length {L}")
    answer = sample["target"][:, -n_segments * L:]
    generated = greedy_last_segments(model, net["src_tokens"], L, n_segments)
    return {"em_correct": int(exact_match_rows(generated, answer, pad).sum()),
            "em_total": int(answer.ne(pad).any(dim=1).sum())}


def exact_match_rows(generated: torch.Tensor, target: torch.Tensor, pad: int) -> torch.Tensor:
    """Per row: every non-pad target token was generated exactly (rows with no target: False)."""
    real = target.ne(pad)
    ok = (generated.eq(target) | ~real).all(dim=1)
    return ok & real.any(dim=1)


__all__: List[str] = ["greedy_last_segments", "exact_match_rows", "check_equal_segments", "answer_counts"]
