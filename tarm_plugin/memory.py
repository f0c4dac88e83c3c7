"""Segment-level recurrent memory with an exponential moving average (TARM).

This module is plain PyTorch: it knows nothing of fairseq, so it can be read
and tested alone.

A long text is cut into segments x_1, x_2, ...  Each segment is processed as

    [ read memory (m slots) | segment tokens (L) | write slots (m) ]

with the attention mask of :func:`memory_attention_mask`. The write slots hold
the same memory that is read (as in the RMT authors' LM code), so the written
memory has a residual path from the old one; ``write_input="learned"`` puts a
separately learned parameter there instead. The outputs at the write slots,
layer-normalised where the layers do not already end in a norm, are the
*written memory* M_t of segment t. What the next segment reads is the
*averaged memory*

    E_0 = M_0                      (the learned initial memory)
    E_t = a * M_t + (1 - a) * E_{t-1}

so segment t+1 reads E_t.  ``a = 1`` gives E_t = M_t exactly: that is RMT.
``a = 0`` gives E_t = E_0 at every segment: nothing is carried, every segment
reads the same m learned tokens (a learned prefix, the control that separates
what carried content adds from what extra learned tokens add); no write slots
are run then, as nothing reads what they would write.
``a`` is a fixed number, or learned per slot and channel as sigmoid(b) (the
Block-Recurrent Transformer's "fixed gate"), or a gate that depends on content,

    g_t = sigmoid(W [M_t ; E_{t-1}] + b),   E_t = g_t * M_t + (1 - g_t) * E_{t-1}

per slot and channel (a GRU-style retain/overwrite valve; W starts at zero and b
at logit(a), so the gate starts as the fixed rate a). Within one training sample
of k segments gradients flow through E (unless ``detach_every`` cuts it inside);
between samples the carried E is detached (truncated BPTT).

That is one *kind* of memory (``tokens``). Every kind is a :class:`MemoryKind`:
the state for B rows, what a segment reads, what it writes, the update and a
per-row reset, carried by the one segment loop (:meth:`MemoryKind.scan`);
``--memory-kind NAME`` picks a kind registered with :func:`register_memory_kind`
(the associative memory is :mod:`tarm_plugin.kinds.assoc`; every module in
:mod:`tarm_plugin.kinds` is one).
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WRITE_INPUTS = ("memory", "learned")


def ema_update(prev: Tensor, written: Tensor, alpha: Union[float, Tensor]) -> Tensor:
    """E_t = a * M_t + (1 - a) * E_{t-1}.  ``alpha == 1`` returns M_t itself (RMT),
    ``alpha == 0`` returns E_{t-1} itself (nothing carried).

    ``alpha`` is a number or a tensor that broadcasts against ``written`` (a
    learned per-slot, per-channel rate)."""
    if not torch.is_tensor(alpha) and alpha == 1.0:
        return written  # exactly RMT: no arithmetic, no gradient into E_{t-1}
    if not torch.is_tensor(alpha) and alpha == 0.0:
        return prev  # exactly E_{t-1}: M_t is not used
    return alpha * written + (1.0 - alpha) * prev


def memory_attention_mask(
    num_memory: int, seg_len: int, device=None, dtype=torch.float32, num_write: Optional[int] = None
) -> Tensor:
    """Additive mask [T, T] (queries x keys) over ``[read (m) | segment (L) | write (w)]``
    (``w = num_write``, default m).

    - read slots see each other only: they carry the past and must not see
      the segment they are read into;
    - segment tokens see every read slot and the tokens up to themselves;
    - write slots see everything in the segment and each other, so the memory
      written at the end summarises the whole segment.
    With ``num_memory == 0`` and no write slots it is the plain causal mask.
    """
    m, L = num_memory, seg_len
    w = m if num_write is None else num_write
    T = m + L + w
    allowed = torch.zeros(T, T, dtype=torch.bool, device=device)
    allowed[:m, :m] = True
    allowed[m : m + L, :m] = True
    allowed[m : m + L, m : m + L] = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    allowed[m + L :, :] = True
    mask = torch.zeros(T, T, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, float("-inf"))


class _KeepInGraph(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *params):
        ctx.params = [(p.shape, p.dtype, p.device) for p in params]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return (grad, *(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.params))


def keep_in_graph(x: Tensor, params) -> Tensor:
    """``x`` itself (no arithmetic), with a zero gradient for each of ``params`` in the backward
    pass: every parameter gets a gradient whatever reached it (PyTorch's DDP needs one)."""
    params = [p for p in params if p.requires_grad]
    return _KeepInGraph.apply(x, *params) if params else x


@dataclass(frozen=True)
class Option:
    """A kind's own flag ``--name-with-dashes`` (a field of the model's config): its
    default (a bool, int, float or str: the field's type), its help, and for a flag
    that takes one of some words, the words."""

    default: Any
    help: str
    choices: Optional[Tuple[str, ...]] = None


# step(x_t, E_{t-1}) -> (y_t, M_t)
SegmentStep = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


@dataclass
class MemoryTrace:
    """What one call of :meth:`MemoryKind.scan` produced, per segment t = 1..n."""

    outputs: List[Tensor]  # y_t, the segment's token outputs
    written: List[Tensor]  # M_t, what segment t wrote (tokens: [B, m, d])
    averaged: List[Tensor]  # E_t, the state segment t+1 reads (tokens: [B, m, d])
    gates: List[Tensor] = field(default_factory=list)  # the update's rates, detached (gate; assoc: write strength)
    read: Optional[Tensor] = None  # E_0 or the carried E: what segment 1 read


class MemoryKind(nn.Module):
    """What a kind of memory implements; the segment loop (:meth:`scan`) is shared.

    The state E is one tensor ``[B, ...]`` per row (so the task's store can carry,
    gather and checkpoint any kind). A segment is run as
    ``[before (r) | tokens (L) | after (w)]`` (:meth:`segment_memory`), the
    tokens seeing the ``before`` positions and themselves, the ``after``
    positions seeing everything (:func:`memory_attention_mask`);
    :meth:`before_layer` may change every position's input to each layer;
    :meth:`written` makes M_t from the outputs at the ``after`` positions, and
    :meth:`update` makes E_t from E_{t-1} and M_t. A kind is built by
    ``from_config(cfg, dim, num_layers, init_std, write_norm, dropout)`` from the model's
    flags (its own flags in ``OPTIONS``, name -> :class:`Option`) and registered with
    :func:`register_memory_kind`.
    """

    OPTIONS: Dict[str, Option] = {}
    num_tokens: int = 0
    learned_rate = False  # a learned averaging rate, logged as mem_rate_* (tokens)
    # E is m vectors [B, m, d] averaged at the rate a (tokens): what the memory plot and the
    # recall profile measure, slot by slot; other kinds' state is another shape
    token_slots = False

    @property
    def carries(self) -> bool:
        """Does E_t depend on the segments read?"""
        return self.num_tokens > 0

    def initial_memory(self, bsz: int) -> Tensor:
        """E_0 for ``bsz`` rows: what a text's first segment reads."""
        raise NotImplementedError

    def segment_memory(self, read: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """The inputs at the positions (before, after) the segment's tokens, [B, r, d] and [B, w, d]."""
        raise NotImplementedError

    def before_layer(self, index: int, x: Tensor, read: Tensor) -> Tensor:
        """Layer ``index``'s input ``x`` [B, T, d] at every position, given the state read."""
        return x

    def written(self, final: Tensor, layers: Sequence[Tensor]) -> Tensor:
        """M_t from the outputs at the ``after`` positions: the final features
        (after the decoder's final norm) and each layer's output."""
        raise NotImplementedError

    def update(self, prev: Tensor, written: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(E_t, the rate or gate used, for the logs; None if none) from E_{t-1} and M_t."""
        raise NotImplementedError

    def read(self, carried: Optional[Tensor], reset: Optional[Tensor], bsz: int) -> Tensor:
        """E_{t-1} for each row: the carried memory, or E_0 where ``reset`` is set.

        ``torch.where`` (rather than a Python branch) keeps E_0's parameters in the
        graph every step, so DDP always sees a gradient for them. A memory that
        carries nothing reads E_0 itself, never a detached copy.
        """
        init = self.initial_memory(bsz)
        if carried is not None and carried.shape != init.shape:
            raise ValueError(f"memory of shape {tuple(carried.shape)} given where this model's state "
                             f"for {bsz} rows is {tuple(init.shape)}")
        if carried is None or not self.carries:
            return init
        carried = carried.to(device=init.device, dtype=init.dtype)
        if reset is None:
            return carried + 0.0 * init  # keep E_0 in the graph
        return torch.where(reset.to(init.device).view(-1, *[1] * (init.dim() - 1)), init, carried)

    def scan(self, inputs: Sequence[Tensor], read: Tensor, step: SegmentStep,
             reset: Optional[Tensor] = None, batch_independent: bool = True,
             detach_every: int = 0) -> MemoryTrace:
        """Run ``step`` over consecutive segments, carrying E between them.

        This is the one loop over segments. ``read`` is E_{t-1} of the first
        one; ``reset`` [B, n] (bool): row b reads E_0 at segment t instead of
        what it carries (a stream or document starts there). ``detach_every``
        K > 0: E is detached after segments K, 2K, ... (the gradient through
        the memory reaches back at most K segments; the values are unchanged). Without memory
        (m = 0, nothing carried) segments do not depend on each other, so with
        ``batch_independent`` equal-length segments run as one batch."""
        if (batch_independent and self.num_tokens == 0 and not self.carries and len(inputs) > 1
                and len({x.size(1) for x in inputs}) == 1):
            return self._parallel(inputs, read, step)
        trace = MemoryTrace([], [], [])
        ema = read
        for t, x in enumerate(inputs):
            if reset is not None:
                ema = self.read(ema, reset[:, t], ema.size(0))
            if t == 0:
                trace.read = ema
            y, written = step(x, ema)
            ema, rate = self.update(ema, written)
            if detach_every and (t + 1) % detach_every == 0 and self.carries:  # a = 0: E is E_0, learned
                ema = ema.detach()
            trace.outputs.append(y)
            trace.written.append(written)
            trace.averaged.append(ema)
            if rate is not None:
                trace.gates.append(rate.detach())  # for the logs
        return trace

    @staticmethod
    def _parallel(inputs: Sequence[Tensor], read: Tensor, step: SegmentStep) -> MemoryTrace:
        """m = 0: the n segments of a [B, n*L] batch as one [B*n, L] batch."""
        n, (bsz, L) = len(inputs), inputs[0].shape[:2]
        y, _ = step(torch.stack(list(inputs), dim=1).reshape(bsz * n, L), read.repeat(n, *[1] * (read.dim() - 1)))
        return MemoryTrace(list(y.reshape(bsz, n * L, -1).split(L, dim=1)), [read] * n, [read] * n, read=read)

    def match_state_dict(self, state_dict: Dict[str, Tensor], prefix: str = "") -> List[str]:
        """Make this module fit an older checkpoint; returns what was changed."""
        return []

    # the top-level names of the parameters that shape only E_t (carry_only_parameters)
    CARRY_ONLY: Tuple[str, ...] = ()

    def carry_only_parameters(self) -> List[str]:
        """The names of the parameters that shape only E_t, what later segments read (not the
        segment's own outputs): with one segment per row, or a detach after every segment, the
        gradient is cut before they matter, and they never learn. A memory that carries nothing
        has none (its unused parameters are not a matter of the cut)."""
        if not self.carries:
            return []
        return [n for n, _ in self.named_parameters() if n.split(".")[0] in self.CARRY_ONLY]


MEMORY_KINDS: Dict[str, Type[MemoryKind]] = {}


def register_memory_kind(name: str):
    """Class decorator: ``--memory-kind name`` builds this :class:`MemoryKind`."""
    def register(cls: Type[MemoryKind]) -> Type[MemoryKind]:
        if name in MEMORY_KINDS:
            raise ValueError(f"memory kind {name!r} is registered twice")
        MEMORY_KINDS[name] = cls
        return cls
    return register


def build_memory(kind: str, cfg, **common) -> MemoryKind:
    """The memory of kind ``kind`` from the model's flags ``cfg`` (any object with the
    flags as attributes). Another kind's own flag, set away from its default, is refused."""
    if kind not in MEMORY_KINDS:
        raise ValueError(f"--memory-kind {kind!r} is not one of {sorted(MEMORY_KINDS)}")
    for other, cls in MEMORY_KINDS.items():
        for option, spec in cls.OPTIONS.items():
            if other != kind and getattr(cfg, option, spec.default) != spec.default:
                raise ValueError(f"--{option.replace('_', '-')} needs --memory-kind {other}")
    memory = MEMORY_KINDS[kind].from_config(cfg, **common)
    wanted = int(getattr(cfg, "num_memory_tokens", 0) or 0)
    if wanted > 0 and memory.num_tokens == 0:  # the model would silently run without memory
        raise ValueError(f"--memory-kind {kind}: {type(memory).__name__} leaves num_tokens at 0 with "
                         f"--num-memory-tokens {wanted}; set self.num_tokens in its __init__")
    return memory


@register_memory_kind("tokens")
class RecurrentMemory(MemoryKind):
    """The learned memory of a TARM model and the recursion that carries it.

    Parameters: ``initial`` [m, d] (M_0 = E_0, read by a stream's first segment);
    ``write_slots`` [m, d] (the write-position inputs, ``write_input="learned"``
    only); ``rate_logit`` [m, d] (b of a learned rate sigmoid(b)); ``gate_weight``
    [d, 2d] and ``gate_bias`` [m, d] (W and b of the gate, ``gate=True``); ``norm``
    (a LayerNorm on the written memory, ``write_norm=True``). A batch's gradient
    need not reach all of them (one segment: what shapes only the next read);
    the model keeps them in its graph (``TarmLanguageModel.forward``).
    """

    OPTIONS = {
        "memory_ema_alpha": Option(1.0, "a in E_t = a*M_t + (1-a)*E_{t-1}, in [0, 1]; 1 = RMT; 0 = every segment "
                                   "reads E_0, nothing carried (a learned-prefix control) (with "
                                   "--memory-ema-learned or --memory-gate: the rate a starts at, clamped to "
                                   "[0.001, 0.999] since a = sigmoid(b) never reaches 1)"),
        "memory_ema_learned": Option(False, "learn the averaging rate per slot and channel, a = sigmoid(b), "
                                     "starting at --memory-ema-alpha"),
        "memory_gate": Option(False, "a content-dependent rate per slot and channel, g_t = sigmoid(W [M_t ; "
                              "E_{t-1}] + b), with W = 0 and sigmoid(b) = --memory-ema-alpha at the start"),
        "memory_write_input": Option("memory", "what the write positions hold: 'memory' = the memory this "
                                     "segment reads (the RMT authors' LM code; the written memory has a "
                                     "residual path from the old one), 'learned' = separately learned slots",
                                     choices=WRITE_INPUTS),
    }
    token_slots = True
    CARRY_ONLY = ("write_slots", "rate_logit", "gate_weight", "gate_bias", "norm")  # a = 0 runs none of them

    @classmethod
    def from_config(cls, cfg, dim: int, num_layers: int, init_std: float, write_norm: bool,
                    dropout: float) -> "RecurrentMemory":
        return cls(cfg.num_memory_tokens, dim, cfg.memory_ema_alpha, init_std=init_std,
                   write_input=str(cfg.memory_write_input), learn_alpha=bool(cfg.memory_ema_learned),
                   gate=bool(cfg.memory_gate), write_norm=write_norm, dropout=dropout)

    def __init__(self, num_tokens: int, dim: int, alpha: float = 1.0, init_std: float = 1.0,
                 write_input: str = "memory", learn_alpha: bool = False, write_norm: bool = False,
                 dropout: float = 0.0, gate: bool = False):
        super().__init__()
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (0 = a learned prefix, nothing carried), got {alpha}")
        if alpha == 0.0 and (gate or learn_alpha):
            raise ValueError(f"alpha 0 (nothing carried) excludes {'gate' if gate else 'learn_alpha'}: "
                             "the rate would be learned away from 0")
        if write_input not in WRITE_INPUTS:
            raise ValueError(f"write_input must be one of {WRITE_INPUTS}, got {write_input!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if gate and learn_alpha:
            raise ValueError("gate and learn_alpha exclude each other: the gate's bias is the learned rate")
        self.num_tokens = num_tokens
        self.dim = dim
        self.alpha = float(alpha)
        self.write_input = write_input
        self.initial = nn.Parameter(torch.randn(num_tokens, dim) * init_std)
        self.write_slots = None
        if write_input == "learned":
            self.write_slots = nn.Parameter(torch.randn(num_tokens, dim) * init_std)
        self.rate_logit = None
        if learn_alpha:
            self.rate_logit = nn.Parameter(torch.full((num_tokens, dim), _logit(self.alpha)))
        self.gate_weight = self.gate_bias = None
        if gate and num_tokens > 0:
            # W = 0: the gate starts as the fixed rate a, whatever the content
            self.gate_weight = nn.Parameter(torch.zeros(dim, 2 * dim))
            self.gate_bias = nn.Parameter(torch.full((num_tokens, dim), _logit(self.alpha)))
        self.norm = nn.LayerNorm(dim) if write_norm and self.carries else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def carries(self) -> bool:
        """Does E_t depend on the segments read (all but a fixed a = 0)?"""
        return self.num_tokens > 0 and (self.alpha > 0.0 or self.learned_rate or self.gated)

    @property
    def learned_rate(self) -> bool:
        return self.rate_logit is not None

    @property
    def gated(self) -> bool:
        return self.gate_weight is not None

    def rate(self) -> Union[float, Tensor]:
        """The averaging rate a: the fixed number, or sigmoid(b) [m, d]."""
        return torch.sigmoid(self.rate_logit) if self.rate_logit is not None else self.alpha

    def initial_memory(self, bsz: int) -> Tensor:
        return self.initial.unsqueeze(0).expand(bsz, -1, -1)

    def write_inputs(self, read: Tensor) -> Tensor:
        """What the write positions hold: the memory read (E_{t-1}), or the learned slots."""
        if self.write_slots is None:
            return read
        return self.write_slots.unsqueeze(0).expand(read.size(0), -1, -1)

    def segment_memory(self, read: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """(read-position input, write-position input) for one segment, with memory
        dropout applied to each copy independently (as dropout on the whole
        ``[mem | segment | mem]`` input does in the RMT authors' code). A memory
        that carries nothing (a = 0) has no write positions: nothing reads them."""
        read = read.to(dtype)
        before = self.dropout(read)  # drawn before the write inputs' mask: training's random stream
        if not self.carries:
            return before, read[:, :0]
        return before, self.dropout(self.write_inputs(read).to(dtype))

    def written(self, final: Tensor, layers: Sequence[Tensor] = ()) -> Tensor:
        """M_t from the final features at the write positions."""
        return self.norm(final) if self.norm is not None else final

    def gate(self, prev: Tensor, written: Tensor) -> Tensor:
        """g_t = sigmoid(W [M_t ; E_{t-1}] + b) [B, m, d], in the written memory's dtype."""
        dtype = written.dtype
        both = torch.cat([written, prev.to(dtype)], dim=-1)
        return torch.sigmoid(F.linear(both, self.gate_weight.to(dtype)) + self.gate_bias.to(dtype))

    def step_rate(self, prev: Tensor, written: Tensor) -> Union[float, Tensor]:
        """The rate E_t is averaged with: the gate g_t, else :meth:`rate`."""
        if self.gated:
            return self.gate(prev, written)
        rate = self.rate()
        return rate.to(written.dtype) if torch.is_tensor(rate) else rate

    def average(self, prev: Tensor, written: Tensor) -> Tensor:
        """E_t from E_{t-1} and M_t."""
        return self.update(prev, written)[0]

    def update(self, prev: Tensor, written: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        rate = self.step_rate(prev, written)
        return ema_update(prev, written, rate), (rate if self.gated else None)

    def match_state_dict(self, state_dict: Dict[str, Tensor], prefix: str = "") -> List[str]:
        """Make this module fit a checkpoint made before write inputs / memory norms
        existed: its ``write_slots`` means the learned write input, and no norm
        in it means none was used. Returns what was changed (empty if nothing)."""
        changes = []
        slots = state_dict.get(prefix + "write_slots")
        if slots is not None and self.write_slots is None:
            self.write_slots = nn.Parameter(torch.zeros_like(slots, device=self.initial.device))
            self.write_input = "learned"
            changes.append("write input 'learned' (the checkpoint has write_slots)")
        if self.norm is not None and prefix + "norm.weight" not in state_dict:
            self.norm = None
            changes.append("no memory norm (the checkpoint has none)")
        return changes

    def extra_repr(self) -> str:
        rate = ("learned" if self.learned_rate else f"gate from {self.alpha}" if self.gated
                else self.alpha if self.carries else "0 (a learned prefix, nothing carried)")
        return (f"num_tokens={self.num_tokens}, dim={self.dim}, alpha={rate}, "
                f"write_input={self.write_input}")


def _logit(a: float) -> float:
    """b with sigmoid(b) = a; a = 1 would need b = inf, so a is clamped just inside (0, 1)."""
    a = min(max(a, 1e-3), 1.0 - 1e-3)
    return math.log(a / (1.0 - a))


@torch.no_grad()
def memory_stats(read: Tensor, written: Sequence[Tensor], averaged: Sequence[Tensor]) -> Dict[str, Tensor]:
    """Cheap diagnostics of one batch's memory (for the training logs):

    ``mem_norm``  mean L2 norm of a memory slot read by the batch's first segment;
    ``mem_dE``    mean relative change ||E_t - E_{t-1}|| / ||E_{t-1}|| per segment;
    ``mem_dM``    mean relative change of the written memory ||M_t - M_{t-1}|| / ||M_{t-1}||
                  (needs two segments in the batch).
    Norms are per row, over the whole state. A row whose previous state is all zero (the
    associative memory's E_0) has no relative change and is left out of the mean.
    Scalars stay tensors (no device sync here).
    """

    def rel(pairs) -> Tensor:
        total = count = 0.0
        for new, old in pairs:
            new, old = new.float(), old.float()
            den = old.flatten(1).norm(dim=1)
            ok = den > 0
            total = total + torch.where(ok, (new - old).flatten(1).norm(dim=1) / den.clamp_min(1e-12), 0.0).sum()
            count = count + ok.sum()
        return total / torch.clamp(torch.as_tensor(count, dtype=torch.float32), min=1.0)

    out = {"mem_norm": read.float().norm(dim=-1).mean()}
    prev = [read] + list(averaged[:-1])
    out["mem_dE"] = rel(zip(averaged, prev))
    if len(written) > 1:
        out["mem_dM"] = rel((written[t], written[t - 1]) for t in range(1, len(written)))
    return out
