"""Segment-level recurrent memory with an exponential moving average (TARM).

This module is plain PyTorch: it knows nothing of fairseq, so it can be read
and tested alone.

A long text is cut into segments x_1, x_2, ...  Each segment is processed as

    [ read memory (m slots) | segment tokens (L) | write slots (m) ]

with the attention mask of :func:`memory_attention_mask`. The outputs at the
write slots are the *written memory* M_t of segment t. What the next segment
reads is the *averaged memory*

    E_0 = M_0                      (the learned initial memory)
    E_t = a * M_t + (1 - a) * E_{t-1}

so segment t+1 reads E_t.  ``a = 1`` gives E_t = M_t exactly: that is RMT.
Within one training sample of k segments gradients flow through E; between
samples the carried E is detached (truncated BPTT).
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


def ema_update(prev: Tensor, written: Tensor, alpha: float) -> Tensor:
    """E_t = a * M_t + (1 - a) * E_{t-1}.  ``alpha == 1`` returns M_t itself (RMT)."""
    if alpha == 1.0:
        return written  # exactly RMT: no arithmetic, no gradient into E_{t-1}
    return alpha * written + (1.0 - alpha) * prev


def memory_attention_mask(
    num_memory: int, seg_len: int, device=None, dtype=torch.float32
) -> Tensor:
    """Additive mask [T, T] (queries x keys) over ``[read | segment | write]``.

    - read slots see each other only: they carry the past and must not see
      the segment they are read into;
    - segment tokens see every read slot and the tokens up to themselves;
    - write slots see everything in the segment and each other, so the memory
      written at the end summarises the whole segment.
    With ``num_memory == 0`` it is the plain causal mask.
    """
    m, L = num_memory, seg_len
    T = 2 * m + L
    allowed = torch.zeros(T, T, dtype=torch.bool, device=device)
    allowed[:m, :m] = True
    allowed[m : m + L, :m] = True
    allowed[m : m + L, m : m + L] = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    allowed[m + L :, :] = True
    mask = torch.zeros(T, T, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, float("-inf"))


# step(x_t, E_{t-1}) -> (y_t, M_t)
SegmentStep = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


@dataclass
class MemoryTrace:
    """What one call of :meth:`RecurrentMemory.scan` produced, per segment t = 1..n."""

    outputs: List[Tensor]  # y_t, the segment's token outputs
    written: List[Tensor]  # M_t [B, m, d], the raw written memory
    averaged: List[Tensor]  # E_t [B, m, d], what segment t+1 reads


class RecurrentMemory(nn.Module):
    """The learned memory of a TARM model and the recursion that carries it.

    Parameters: ``initial`` (M_0 = E_0, read by a stream's first segment) and
    ``write_slots`` (the inputs at the write positions), both ``[m, d]``.
    """

    def __init__(self, num_tokens: int, dim: int, alpha: float = 1.0, init_std: float = 1.0):
        super().__init__()
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.num_tokens = num_tokens
        self.dim = dim
        self.alpha = float(alpha)
        self.initial = nn.Parameter(torch.randn(num_tokens, dim) * init_std)
        self.write_slots = nn.Parameter(torch.randn(num_tokens, dim) * init_std)

    def initial_memory(self, bsz: int) -> Tensor:
        return self.initial.unsqueeze(0).expand(bsz, -1, -1)

    def write_inputs(self, bsz: int) -> Tensor:
        return self.write_slots.unsqueeze(0).expand(bsz, -1, -1)

    def read(self, carried: Optional[Tensor], reset: Optional[Tensor], bsz: int) -> Tensor:
        """E_{t-1} for each row: the carried memory, or E_0 where ``reset`` is set.

        ``torch.where`` (rather than a Python branch) keeps ``initial`` in the
        graph every step, so DDP always sees a gradient for it.
        """
        init = self.initial_memory(bsz)
        if carried is None:
            return init
        carried = carried.to(device=init.device, dtype=init.dtype)
        if reset is None:
            return carried + 0.0 * init  # keep ``initial`` in the graph
        return torch.where(reset.to(init.device).view(-1, 1, 1), init, carried)

    def scan(self, inputs: Sequence[Tensor], read: Tensor, step: SegmentStep) -> MemoryTrace:
        """Run ``step`` over consecutive segments, carrying E between them."""
        trace = MemoryTrace([], [], [])
        ema = read
        for x in inputs:
            y, written = step(x, ema)
            ema = ema_update(ema, written, self.alpha)
            trace.outputs.append(y)
            trace.written.append(written)
            trace.averaged.append(ema)
        return trace

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, dim={self.dim}, alpha={self.alpha}"


class CarriedMemory:
    """Memory handed from one batch to the next batch of the same streams.

    Keyed by stream set (e.g. the split name), so a validation run in the
    middle of an epoch does not overwrite the training streams' memory.
    Stored detached: gradients stop at sample boundaries. Rows that are not
    finite (an fp16 overflow step) are marked invalid and read as E_0 again.

    With a ``batch_id``, running the same batch again (fairseq's ``--amp``
    retries a batch after an overflow) reads the memory from *before* that
    batch, never the memory the batch itself wrote (that would leak its
    later segments into its first).
    """

    def __init__(self):
        self._now: Dict[str, Tuple[Tensor, Tensor, Optional[int]]] = {}
        self._before: Dict[str, Tuple[Tensor, Tensor, Optional[int]]] = {}

    def get(self, key: str, bsz: int, batch_id: Optional[int] = None) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(memory, invalid_rows) to read for ``key``, or (None, None) if nothing fits."""
        entry = self._now.get(key)
        if entry is not None and batch_id is not None and entry[2] == batch_id:
            entry = self._before.get(key)  # a re-run of the batch that wrote ``now``
        if entry is None or entry[0].size(0) != bsz:
            return None, None
        return entry[0], ~entry[1]

    def put(self, key: str, memory: Tensor, batch_id: Optional[int] = None) -> None:
        memory = memory.detach()
        valid = torch.isfinite(memory).flatten(1).all(dim=1)
        now = self._now.get(key)
        if now is not None and (batch_id is None or now[2] != batch_id):
            self._before[key] = now
        self._now[key] = (memory, valid, batch_id)

    def has(self, key: str) -> bool:
        return key in self._now

    def clear(self, key: Optional[str] = None) -> None:
        for store in (self._now, self._before):
            if key is None:
                store.clear()
            else:
                store.pop(key, None)

    def state_dict(self) -> Dict[str, Tensor]:
        return {k: v[0].cpu() for k, v in self._now.items()}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.clear()
        for key, mem in state.items():
            self.put(key, mem)
