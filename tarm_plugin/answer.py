"""Exact-match answers: greedy decoding of a sample's last segments with memory.

Used by the quadratic-equations task: the model reads the equation and the
solution steps (teacher-forced, memory carried across segments), then writes
the answer segment token by token; the answer is right only if every token
matches. Reading the quadratic answers as text (kinds, misses) is
scripts/quadratic_answers.py's.
"""

from typing import List

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


__all__: List[str] = ["greedy_last_segments", "exact_match_rows"]
