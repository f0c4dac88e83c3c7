"""Per-token loss of a fairseq LM output and its sums by group: the one definition
shared by the criterion (training and validation, the loss by segment) and
eval-lm's tables (by depth, position, token class)."""

import torch
import torch.nn.functional as F


def token_nll(model, net_output, target: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-token negative log-likelihood [B, T] (fp32), 0 at padding."""
    asm = getattr(model.decoder, "adaptive_softmax", None)
    flat = target.reshape(-1)
    if asm is None:
        logits = net_output[0].float()
        nll = F.cross_entropy(logits.view(flat.numel(), -1), flat, ignore_index=pad, reduction="none")
        return nll.view_as(target)
    logits, targets = asm(net_output[0], flat)
    _, rows = asm.adapt_target(flat)  # which tokens fall in each tail cluster
    nll = F.cross_entropy(logits[0].float(), targets[0], ignore_index=pad, reduction="none")
    for tail_logits, tail_target, idx in zip(logits[1:], targets[1:], rows):
        if tail_logits is not None:
            # no ignore_index here: tail targets are shifted ids, and padding never reaches a tail
            nll = nll.index_add(0, idx, F.cross_entropy(tail_logits.float(), tail_target, reduction="none"))
    return nll.view_as(target)


def loss_by(index: torch.Tensor, nll: torch.Tensor, minlength: int = 0):
    """(summed nll, token count) per value of ``index`` (>= 0, one per token of ``nll``),
    as lists: one transfer per batch."""
    return (torch.bincount(index, weights=nll.double(), minlength=minlength).tolist(),
            torch.bincount(index, minlength=minlength).tolist())
