"""fairseq-eval-lm batch transforms: what a long-context reviewer asks of the memory.

They wrap the iterator eval-lm scores (one segment per row per batch in the
``doc`` and ``none`` layouts) and keep what they need from earlier batches:

- :class:`ResetEverySegment` (``--eval-reset-memory``) reads E_0 at every segment.
- :class:`TokenClasses` (``--eval-token-classes``, window W) labels every target by
  where its token occurred before in its document (or stream, or sample):

      local  it occurs among the W tokens before it
      far    it occurs earlier, but not within those W
      new    its first occurrence

  With W = the segment length, "far" tokens are among those that a model
  without memory cannot see (so are local ones from the previous segment: the
  window slides, segments do not) (Sun et al. 2021, "Do Long-Range Language Models
  Actually Use Long-Range Context?", find long-range gains on such tokens).
  Labels go into ``sample["token_class"]`` (-1 for padding).

- :class:`MemoryHorizon` (``--eval-memory-horizon K``) makes the memory each
  scored segment reads be built from E_0 over only the K segments before it:
  the batch becomes ``[K context segments | the segment]``, the memory reset
  to E_0 at its start (and wherever a document starts inside it), the context
  read but not scored. At depth >= K this is exactly what the model reads K
  segments into a document, so unlike ``--eval-reset-memory`` it stays on the
  training distribution; K >= a segment's depth is the plain evaluation and
  K = 0 reads E_0 everywhere.
"""

from collections import deque
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .datasets import first_target
from .errors import TarmError

LOCAL, FAR, NEW = 0, 1, 2
CLASS_NAMES = ("local", "far", "new")


def token_class(last_seen: Optional[int], position: int, window: int) -> int:
    """LOCAL, FAR or NEW for a token at ``position`` last seen at ``last_seen`` (None: never)."""
    if last_seen is None:
        return NEW
    return LOCAL if position - last_seen <= window else FAR


def token_classes(tokens: Sequence[int], window: int, start: int = 0) -> List[int]:
    """The class of each of ``tokens[start:]`` by its last occurrence in ``tokens`` before it."""
    if window < 1:
        raise TarmError(f"the local window must be >= 1 token, got {window}")
    last: Dict[int, int] = {}
    classes = []
    for pos, tok in enumerate(tokens):
        if pos >= start:
            classes.append(token_class(last.get(tok), pos, window))
        last[tok] = pos
    return classes


class Mapped:
    """eval-lm's batch iterator with ``fn`` applied to every batch, in order (``len`` kept)."""

    def __init__(self, itr, fn: Callable[[dict], dict]):
        self.itr, self.fn = itr, fn
        self.n = getattr(itr, "n", 0)

    def __len__(self):
        return len(self.itr)

    def __iter__(self):
        for sample in self.itr:
            yield self.fn(sample)


class ResetEverySegment:
    """--eval-reset-memory: every row reads E_0 at every segment (nothing carried)."""

    def __call__(self, sample: dict) -> dict:
        net = dict(sample["net_input"])
        net["reset"] = torch.ones_like(net["reset"], dtype=torch.bool)
        return dict(sample, net_input=net)


class TokenClasses:
    """Labels each target local / far / new by its last occurrence in its document."""

    def __init__(self, window: int, pad: int):
        if window < 1:
            raise TarmError(f"--eval-local-window must be >= 1 (tokens), got {window}")
        self.window, self.pad = window, pad
        self.last: Dict[int, Dict[int, int]] = {}  # row -> token -> its last position in the document
        self.position: Dict[int, int] = {}  # row -> targets read of its document so far

    def __call__(self, sample: dict) -> dict:
        target = sample["target"]
        L = sample["net_input"]["segment_length"]
        depth = sample["segment_depth"]
        classes = torch.full(target.shape, -1, dtype=torch.long)
        rows = target.tolist()
        for b, row in enumerate(rows):
            for t in range(depth.size(1)):
                if int(depth[b, t]) == 0:  # a document (stream, sample) starts: nothing seen yet
                    self.last[b], self.position[b] = {}, 0
                if int(depth[b, t]) < 0:
                    continue
                last, pos = self.last.setdefault(b, {}), self.position.get(b, 0)
                for j in range(t * L, min((t + 1) * L, len(row))):
                    tok = row[j]
                    if tok == self.pad:
                        continue
                    classes[b, j] = token_class(last.get(tok), pos, self.window)
                    last[tok] = pos
                    pos += 1
                self.position[b] = pos
        sample["token_class"] = classes
        return sample


class MemoryHorizon:
    """Prepends each batch's K previous segments (same rows) as unscored context,
    the memory read from E_0 at the first of them."""

    def __init__(self, horizon: int, pad: int):
        if horizon < 0:
            raise TarmError(f"--eval-memory-horizon must be >= 0 (segments), got {horizon}")
        self.horizon, self.pad = horizon, pad
        self.history: deque = deque(maxlen=max(horizon, 1))

    def __call__(self, sample: dict) -> dict:
        net = sample["net_input"]
        src, target, reset = net["src_tokens"], sample["target"], net["reset"]
        if reset.size(1) != 1:
            raise TarmError("--eval-memory-horizon needs batches of one segment per row "
                            "(--sample-break-mode doc or none)")
        context: List[dict] = list(self.history)[-self.horizon:] if self.horizon else []
        if self.horizon:
            if context and any(c["src"].size(0) != src.size(0) for c in context):
                raise TarmError("--eval-memory-horizon: the batch size changed between batches")
            self.history.append({"src": src, "reset": reset})
        if any(c["src"].size(1) != net["segment_length"] for c in context):
            raise TarmError("--eval-memory-horizon: a segment shorter than --segment-length before the last")
        out = dict(sample)
        out["net_input"] = dict(net)
        new_reset = torch.cat([c["reset"] for c in context] + [reset], dim=1).clone()
        new_reset[:, 0] = True  # the memory is built from E_0 over the context only
        out["net_input"]["src_tokens"] = torch.cat([c["src"] for c in context] + [src], dim=1)
        out["net_input"]["src_lengths"] = out["net_input"]["src_tokens"].ne(self.pad).sum(dim=1)
        out["net_input"]["reset"] = new_reset
        width = sum(c["src"].size(1) for c in context)
        out["target"] = torch.cat([target.new_full((target.size(0), width), self.pad), target], dim=1)
        # the context is not scored: no depth, document or class of its own
        for per_segment in ("segment_depth", "segment_document"):
            if per_segment in sample:
                x = sample[per_segment]
                out[per_segment] = torch.cat([x.new_full((x.size(0), len(context)), -1), x], dim=1)
        if "token_class" in sample:
            tc = sample["token_class"]
            out["token_class"] = torch.cat([tc.new_full((tc.size(0), width), -1), tc], dim=1)
        out["start_indices"] = first_target(out["target"], self.pad)
        return out
