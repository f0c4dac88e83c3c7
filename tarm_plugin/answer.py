"""Exact-match answers: greedy decoding of a sample's last segments with memory.

Used by the quadratic-equations task: the model reads the equation and the
solution steps (teacher-forced, memory carried across segments), then writes
the answer segment token by token; the answer is right only if every token
matches.
"""

from typing import List, Sequence

import torch

from .memory import ema_update


@torch.no_grad()
def greedy_last_segments(model, src_tokens: torch.Tensor, segment_length: int, n_segments: int) -> torch.Tensor:
    """Greedy tokens for the last ``n_segments`` segments of each row of ``src_tokens``.

    The earlier segments are read as given; each generated token is fed back as
    the next input. Returns ``[B, n_segments * segment_length]`` token ids,
    aligned with ``target[:, -n_segments * segment_length:]``. Every row starts
    its memory at E_0 (one sample per row).
    """
    L = segment_length
    B, T = src_tokens.shape
    prefix = T - n_segments * L
    if prefix < 0 or prefix % L:
        raise ValueError(f"{T} tokens do not end in {n_segments} segments of {L}")
    memory = model.memory
    read = memory.initial_memory(B)
    if prefix:
        read = memory.scan(src_tokens[:, :prefix].split(L, dim=1), read, model.segment_step).averaged[-1]
    out = []
    inp = src_tokens[:, prefix : prefix + 1]  # the first input is the last given token
    for _ in range(n_segments):
        seg = inp
        for j in range(L):
            hidden, _ = model.segment_step(seg, read)
            x = hidden[:, -1:]
            if model.decoder.project_out_dim is not None:
                x = model.decoder.project_out_dim(x)
            lprobs = model.get_normalized_probs((model.decoder.output_layer(x), {}), log_probs=True)
            tok = lprobs[:, -1].argmax(dim=-1, keepdim=True)
            out.append(tok)
            seg = torch.cat([seg, tok], dim=1)
        # the finished segment writes memory for the next one (inputs are seg[:, :L])
        _, written = model.segment_step(seg[:, :L], read)
        read = ema_update(read, written, memory.alpha)
        inp = seg[:, L:]
    return torch.cat(out, dim=1)


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


def split_by_kind(predictions: Sequence[str], references: Sequence[str]) -> dict:
    kinds = {}
    for p, r in zip(predictions, references):
        kinds.setdefault(answer_kind(r), ([], []))
        kinds[answer_kind(r)][0].append(p)
        kinds[answer_kind(r)][1].append(r)
    return {k: (answer_accuracy(*v), len(v[1])) for k, v in kinds.items()}


__all__: List[str] = ["greedy_last_segments", "exact_match_rows", "normalize_answer",
                      "answer_accuracy", "answer_kind", "split_by_kind"]
