"""``--eval-segment-ppl``: fairseq-eval-lm's loss and perplexity by depth.

Does memory help later segments? eval-lm prints one number for the split;
this adds a table of the same scores grouped by how deep each target sits:
its segment's index within the sample with ``--sample-break-mode eos``, else
the segments since its document's (``doc``) or stream's (``none``) start, in
buckets 0, 1, 2-3, 4-7, ... With ``--eval-depth-unit U`` the depth is counted
in units of U tokens instead (token j of a document is at depth j // U), so
models with other segment lengths line up. The batches carry each segment's
depth (``segment_depth``, :mod:`tarm_plugin.datasets`). A second table groups
the same scores by position within the segment, in 8 equal spans of it: the
first tokens of a segment have the least context inside it, so that is where
what the memory carries from the previous segments shows first. With
``--eval-token-classes`` a third table groups them by token class (local /
far / new, :class:`~tarm_plugin.eval_batches.TokenClasses`), counts summing to
the scored tokens. With ``--eval-document-losses FILE`` the same scores are
written per document, depth and token class (JSON), for intervals by a
bootstrap over documents.

fairseq-eval-lm's loop and scorer are fixed, so the task wraps the batch
iterator it hands to eval-lm (which remembers the batch being scored) and puts
a forward hook on the model (which scores that batch's targets with the
criterion's :func:`~tarm_plugin.scoring.token_nll`, the same per-token loss the scorer sums). The
table is logged when the iterator is exhausted, before eval-lm's own totals.
"""

import json
import logging
import math
from collections import defaultdict

import numpy as np

import torch

from .eval_batches import CLASS_NAMES, Mapped, MemoryHorizon, ResetEverySegment, TokenClasses
from .errors import TarmError
from .scoring import loss_by, token_nll

logger = logging.getLogger(__name__)


SPANS = 8  # the position table's spans of a segment


def bucket(i: int) -> str:
    """0, 1, 2-3, 4-7, 8-15, ... (segments since a stream's start)."""
    if i < 2:
        return str(i)
    lo = 1 << (i.bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


class SegmentPerplexity:
    def __init__(self, pad: int, unit: int = 0):
        self.pad, self.unit = pad, unit
        self.per_sample, self.name, self.depth_of = False, "", "stream"
        self.sample = None
        self.nll = defaultdict(float)
        self.tokens = defaultdict(int)
        self.span_nll = defaultdict(float)  # by position within the segment: span -> nll, tokens
        self.span_tokens = defaultdict(int)
        self.class_nll = [0.0] * len(CLASS_NAMES)  # by token class (--eval-token-classes)
        self.class_tokens = [0] * len(CLASS_NAMES)
        self.window = None  # the token classes' local window, when they are counted
        self.documents_path = None  # --eval-document-losses: where the per-document sums go
        self.by_document = defaultdict(lambda: [0, 0.0])  # (document, depth, class) -> tokens, nll
        self.L = None

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
        # depth of every target: segments (or tokens) since its sample/document/stream began
        seg_depth = self.sample["segment_depth"].to(target.device).repeat_interleave(L, dim=1)[:, : target.size(1)]
        if self.per_sample or not self.unit:
            depth = seg_depth
        else:
            within = torch.arange(target.size(1), device=target.device) % L
            depth = (seg_depth * L + within) // self.unit
        real = target.ne(self.pad) & depth.ge(0)
        nll = nll[real]
        sums, counts = loss_by(depth[real], nll)
        for d, n in enumerate(counts):
            if n:
                key = d if self.per_sample else bucket(d)
                self.nll[key] += sums[d]
                self.tokens[key] += n
        self.L = L
        span = ((torch.arange(target.size(1), device=target.device) % L) * SPANS // L).expand_as(real)[real]
        sums, counts = loss_by(span, nll, minlength=SPANS)
        for j in range(SPANS):
            self.span_nll[j] += sums[j]
            self.span_tokens[j] += counts[j]
        if "token_class" in self.sample:
            cls = self.sample["token_class"].to(target.device)[real]
            if bool(cls.lt(0).any()):
                raise RuntimeError("a scored token has no token class")
            sums, counts = loss_by(cls, nll, minlength=len(CLASS_NAMES))
            for c in range(len(CLASS_NAMES)):
                self.class_nll[c] += sums[c]
                self.class_tokens[c] += counts[c]
        if self.documents_path and "segment_document" in self.sample:
            doc = self.sample["segment_document"].to(target.device).repeat_interleave(L, dim=1)[:, : target.size(1)]
            cls = self.sample.get("token_class")
            cls = cls.to(target.device)[real] if cls is not None else torch.full_like(nll, -1, dtype=torch.long)
            keys = torch.stack([doc[real], depth[real], cls], dim=1).cpu().numpy()
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            n = np.bincount(inverse, minlength=len(uniq))
            s = np.bincount(inverse, weights=nll.double().cpu().numpy(), minlength=len(uniq))
            for key, k_n, k_s in zip(map(tuple, uniq.tolist()), n.tolist(), s.tolist()):
                entry = self.by_document[key]
                entry[0] += k_n
                entry[1] += k_s
        self.sample = None  # one forward per batch: an ensemble's other models are not counted twice

    def iterate(self, itr, dataset):
        """Wrap eval-lm's batch iterator over ``dataset`` (a task dataset)."""
        self.per_sample, self.name, self.depth_of = dataset.every_row_new, dataset.name, dataset.depth_of
        return _Recording(itr, self)

    def rows(self):
        """[(segment label, tokens, loss in bits, perplexity)] in segment order."""
        keys = sorted(self.tokens, key=lambda k: k if isinstance(k, int) else int(k.split("-")[0]))
        out = []
        for k in keys:
            bits = self.nll[k] / self.tokens[k] / math.log(2)
            out.append((str(k), self.tokens[k], bits, 2 ** bits))
        return out

    def span_rows(self):
        """[(label 'pos a-b', tokens, loss in bits, perplexity)] by position within the segment."""
        out = []
        for j in sorted(k for k in self.span_tokens if self.span_tokens[k]):
            lo, hi = -(-j * self.L // SPANS), -(-(j + 1) * self.L // SPANS) - 1  # positions p with p*SPANS//L == j
            bits = self.span_nll[j] / self.span_tokens[j] / math.log(2)
            out.append((f"pos {lo}-{hi}", self.span_tokens[j], bits, 2 ** bits))
        return out

    def class_rows(self):
        """[(class, tokens, loss in bits, perplexity)] for local, far, new (classes with tokens)."""
        return [(name, n, self.class_nll[c] / n / math.log(2), 2 ** (self.class_nll[c] / n / math.log(2)))
                for c, (name, n) in enumerate(zip(CLASS_NAMES, self.class_tokens)) if n]

    def write_documents(self):
        """--eval-document-losses: {"rows": [[document, depth, class, tokens, nll (nats)], ...]};
        depth in the table's units, class -1 without --eval-token-classes."""
        rows = [[*key, n, nll] for key, (n, nll) in sorted(self.by_document.items())]
        with open(self.documents_path, "w") as f:
            json.dump({"split": self.name, "depth_unit": self.unit or self.L, "classes": list(CLASS_NAMES),
                       "local_window": self.window, "rows": rows}, f)
        logger.info(f"{self.name}: losses of {len({r[0] for r in rows}):,} documents written to "
                    f"{self.documents_path} (--eval-document-losses)")

    def log(self):
        if self.documents_path:
            self.write_documents()
        units = f"units of {self.unit} tokens" if self.unit and not self.per_sample else "segments"
        what = "segment of the sample" if self.per_sample else f"{units} since the {self.depth_of}'s start"
        logger.info(f"{self.name}: loss (bits) by {what}, 0 = the first (--eval-segment-ppl)")
        logger.info(f"{'depth':>9} {'tokens':>9} {'loss':>8} {'ppl':>10}")
        for label, n, bits, ppl in self.rows():
            logger.info(f"{label:>9} {n:>9,} {bits:>8.4f} {ppl:>10.2f}")
        logger.info(f"{self.name}: loss (bits) by position within the segment of {self.L} tokens")
        for label, n, bits, ppl in self.span_rows():
            logger.info(f"{label:>13} {n:>9,} {bits:>8.4f} {ppl:>10.2f}")
        if self.window is not None:
            logger.info(f"{self.name}: loss (bits) by token class: local = among the {self.window} tokens "
                        f"before it, far = earlier in its {self.depth_of}, new = first occurrence "
                        f"(--eval-token-classes; {sum(self.class_tokens):,} tokens)")
            for label, n, bits, ppl in self.class_rows():
                logger.info(f"{'class ' + label:>13} {n:>9,} {bits:>8.4f} {ppl:>10.2f}")


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


def eval_lm_batches(itr, dataset, pad: int, stats: "SegmentPerplexity" = None, reset_memory: bool = False,
                    horizon=None, token_window=None, mode: str = "none"):
    """eval-lm's batch iterator with the evaluation flags applied, in order: E_0 at every
    segment (--eval-reset-memory), token classes on the batches as read, the memory horizon's
    context, and the tables recording what is scored (``stats``)."""
    if reset_memory and horizon is not None:
        raise TarmError("--eval-memory-horizon and --eval-reset-memory exclude each other "
                        "(--eval-memory-horizon 0 reads E_0 at every segment)")
    if reset_memory:
        itr = Mapped(itr, ResetEverySegment())
    if token_window:
        itr = Mapped(itr, TokenClasses(token_window, pad))
        stats.window = token_window
    if horizon is not None:
        if mode == "eos":
            raise TarmError("--eval-memory-horizon needs --sample-break-mode doc or none "
                            "(eos evaluates whole samples, their memory never carried between batches)")
        itr = Mapped(itr, MemoryHorizon(horizon, pad))
    return stats.iterate(itr, dataset) if stats is not None else itr
