"""``--eval-segment-ppl``: fairseq-eval-lm's loss and perplexity by segment index.

Does memory help later segments? eval-lm prints one number for the split;
this adds a table of the same scores grouped by the segment each target sits
in: its index within the sample with ``--sample-break-mode eos``, or the
number of segments since its stream's start (in buckets 0, 1, 2-3, 4-7, ...)
for contiguous streams.

fairseq-eval-lm's loop and scorer are fixed, so the task wraps the batch
iterator it hands to eval-lm (which remembers the batch being scored) and puts
a forward hook on the model (which scores that batch's targets with the
criterion's :func:`~tarm_plugin.scoring.token_nll`, the same per-token loss the scorer sums). The
table is logged when the iterator is exhausted, before eval-lm's own totals.
"""

import logging
import math
from collections import defaultdict

import torch

from .scoring import token_nll

logger = logging.getLogger(__name__)


def bucket(i: int) -> str:
    """0, 1, 2-3, 4-7, 8-15, ... (segments since a stream's start)."""
    if i < 2:
        return str(i)
    lo = 1 << (i.bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


class SegmentPerplexity:
    def __init__(self, pad: int):
        self.pad = pad
        self.per_sample, self.k, self.name = False, 1, ""
        self.sample = None
        self.nll = defaultdict(float)
        self.tokens = defaultdict(int)

    def watch(self, model):
        """Score every forward of ``model`` (eval-lm's scorer calls it once per batch)."""
        return model.register_forward_hook(self._hook)

    def _hook(self, model, inputs, output):
        if self.sample is None or model.training:
            return
        target = self.sample["target"].to(output[0].device)
        L = self.sample["net_input"]["segment_length"]
        with torch.no_grad():
            nll = token_nll(model, output, target, self.pad)
        seg = torch.arange(target.size(1), device=target.device) // L
        if not self.per_sample:
            seg = seg + self.sample["net_input"]["batch_id"] * self.k
        real = target.ne(self.pad)
        for s in seg.unique().tolist():
            cols = seg.eq(s)
            n = int(real[:, cols].sum())
            if n:
                key = s if self.per_sample else bucket(s)
                self.nll[key] += float(nll[:, cols].sum())
                self.tokens[key] += n
        self.sample = None  # one forward per batch: an ensemble's other models are not counted twice

    def iterate(self, itr, dataset):
        """Wrap eval-lm's batch iterator over ``dataset`` (a task dataset)."""
        self.per_sample, self.k, self.name = dataset.every_row_new, dataset.k, dataset.name
        return _Recording(itr, self)

    def rows(self):
        """[(segment label, tokens, loss in bits, perplexity)] in segment order."""
        keys = sorted(self.tokens, key=lambda k: k if isinstance(k, int) else int(k.split("-")[0]))
        out = []
        for k in keys:
            bits = self.nll[k] / self.tokens[k] / math.log(2)
            out.append((str(k), self.tokens[k], bits, 2 ** bits))
        return out

    def log(self):
        what = "segment of the sample" if self.per_sample else "segments since the stream's start"
        logger.info(f"{self.name}: loss (bits) by {what}, 0 = the first (--eval-segment-ppl)")
        logger.info(f"{'segment':>9} {'tokens':>9} {'loss':>8} {'ppl':>10}")
        for label, n, bits, ppl in self.rows():
            logger.info(f"{label:>9} {n:>9,} {bits:>8.4f} {ppl:>10.2f}")


class _Recording:
    """The batch iterator eval-lm consumes; tells the hook which batch is being scored."""

    def __init__(self, itr, stats: SegmentPerplexity):
        self.itr, self.stats = itr, stats
        self.n = getattr(itr, "n", 0)

    def __len__(self):
        return len(self.itr)

    def __iter__(self):
        for sample in self.itr:
            self.stats.sample = sample
            yield sample
        self.stats.log()
