"""The task's datasets: one item is one whole batch of this rank's rows.

Three layouts of a split (a ``fairseq-preprocess`` data-bin, one item per line):

- :class:`SegmentStreamDataset` (``--sample-break-mode none``): the split is
  one text cut into ``batch_size * world_size`` contiguous streams, as
  fairseq's ``examples/truncated_bptt`` does;
- :class:`SampleSegmentsDataset` (``eos``): one sample per line, memory reset
  for every sample;
- :class:`DocumentStreamDataset` (``doc``): documents, each row reading whole
  documents one after another, memory reset at each document's start (how
  Transformer-XL, the Block-Recurrent Transformer and Memorizing Transformers
  read long documents).

In every layout the input of target token j is token j-1 (``</s>`` at the
start of a stream, sample or document), so every token is a target exactly
once, also across segment and batch boundaries; padding is never scored.
Each batch carries ``reset`` [B, n] (row b reads E_0 at segment t) and
``segment_depth`` [B, n] (how many segments row b has read of its stream,
sample or document before segment t; -1 for padding): the model resets its
memory by the first, ``--eval-segment-ppl`` buckets losses by the second.
Document batches also carry ``segment_document`` [B, n] (the document's index
in the split, -1 for padding), for losses per document.
"""

import heapq
import logging
import math
import os
import struct
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils

from .errors import TarmError

logger = logging.getLogger(__name__)


def split_tokens(data) -> np.ndarray:
    """All tokens of an indexed dataset, in order, as one 1-D array (no copy for mmap data)."""
    sizes = np.asarray(data.sizes, dtype=np.int64)
    index = getattr(data, "_index", None)
    if index is not None and getattr(data, "_bin_buffer", None) is not None and len(sizes):
        pointers = np.asarray(index._pointers)
        item_bytes = np.dtype(index.dtype).itemsize
        contiguous = np.array_equal(np.diff(pointers), sizes[:-1] * item_bytes)
        if contiguous:
            return np.frombuffer(data._bin_buffer, dtype=index.dtype,
                                 count=int(sizes.sum()), offset=int(pointers[0]))
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    return torch.cat([data[i] for i in range(len(data))]).numpy()


def first_target(target: torch.Tensor, pad: int) -> torch.Tensor:
    """Index of each row's first non-padding target (the row length if none).

    Padding only ever precedes (context-only segments) or follows (a row's tail)
    the scored tokens, so the tokens from there on, padding stripped, are the
    row's targets in order."""
    return target.eq(pad).long().cumprod(dim=1).sum(dim=1)  # leading padding


def previous_tokens(tokens: np.ndarray, lo: int, hi: int, eos: int, starts: bool) -> torch.Tensor:
    """The inputs of ``tokens[lo:hi]``: each token's predecessor, ``</s>`` for the first where a
    stream or document ``starts`` there. A token after a segment or batch boundary is still
    predicted from the one before it, and scored exactly once."""
    prev = np.concatenate([[eos], tokens[lo : hi - 1]]) if starts else tokens[lo - 1 : hi - 1]
    return torch.from_numpy(np.asarray(prev, dtype=np.int64))


LOWER_BATCH = ("lower the batch size (--batch-size, or for a split other than training's "
               "--batch-size-valid; --max-tokens / --max-tokens-valid without them)")


class WholeBatchDataset(FairseqDataset):
    """Each item is already a whole batch ``[bsz, <= width]`` of this shard: the
    collater only adds fairseq's fields and the memory bookkeeping."""

    every_row_new = False  # True: every row of every batch starts a new sample (memory reset)
    depth_of = "stream"  # what segment_depth counts segments of, for the logs

    def __len__(self):
        return self._len

    def collater(self, samples):
        assert len(samples) == 1, "each item is already a whole batch"
        item = samples[0]
        source, target = item["source"], item["target"]
        return {
            # a row's own id where it has one (its line, with --sample-break-mode eos), so
            # fairseq-generate's S-/H- lines are numbered by sample; else the batch's index
            "id": item.get("row_ids", torch.full((source.size(0),), item["id"], dtype=torch.long)),
            "nsentences": source.size(0),
            "ntokens": int(target.ne(self.pad).sum()),
            "net_input": {
                "src_tokens": source,
                "src_lengths": source.ne(self.pad).sum(dim=1),
                "reset": item["reset"],
                "memory_key": self.name,
                "segment_length": self.L,
                "batch_id": int(item["id"]),
            },
            "target": target,
            "segment_depth": item["depth"],
            # segments of the widest item of the split, the same on every rank: the criterion's
            # loss by segment logs that many keys everywhere (fairseq sums the logs across ranks
            # key by key, which needs the same keys on every rank)
            "segments": self.k,
            **({"segment_document": item["document"]} if "document" in item else {}),
            # fairseq's SequenceScorer (fairseq-eval-lm) strips the padding from a row's
            # target and reads the scores from ``start_indices`` on: point it at the first
            # scored token, past the context-only segments of --loss-start-segment
            "start_indices": first_target(target, self.pad),
        }

    def num_tokens(self, index):
        return self.bsz * self.width

    def size(self, index):
        return self.width

    @property
    def sizes(self):
        return np.full(len(self), self.width, dtype=np.int64)

    def ordered_indices(self):
        return np.arange(len(self))


class SegmentStreamDataset(WholeBatchDataset):
    """One item = one batch ``[bsz, n * segment_length]`` of this shard's streams.

    The split's N tokens are cut into ``S = bsz * num_shards`` contiguous
    streams of ``N // S`` or ``N // S + 1`` tokens (the first ``N % S`` get the
    extra token); stream ``shard_id * bsz + b`` is row ``b`` here. Item i covers
    segments ``[i*k, (i+1)*k)`` of every stream. All shards have the same
    number of items, so no rank waits on another at the end of an epoch.
    """

    def __init__(self, tokens: np.ndarray, bsz: int, segment_length: int, segments_per_item: int,
                 pad: int, eos: int, name: str, shard_id: int = 0, num_shards: int = 1):
        super().__init__()
        self.tokens = tokens
        self.bsz, self.L, self.k = bsz, segment_length, segments_per_item
        self.pad, self.eos, self.name = pad, eos, name
        n_streams = bsz * num_shards
        n = len(tokens)
        if n < n_streams:
            raise TarmError(
                f"split '{name}' has {n} tokens, fewer than the {n_streams} streams asked for "
                f"({bsz} per batch x world size {num_shards}): {LOWER_BATCH}"
            )
        base, extra = divmod(n, n_streams)
        lengths = np.full(n_streams, base, dtype=np.int64)
        lengths[:extra] += 1
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        rows = slice(shard_id * bsz, (shard_id + 1) * bsz)
        self.starts, self.lengths = starts[rows], lengths[rows]
        self.width = segment_length * segments_per_item
        self._len = math.ceil(int(lengths.max()) / self.width)  # the same on every shard

    def __getitem__(self, i):
        begin = i * self.width
        # (>= 1: with several shards, this one's streams may all end a token earlier;
        # it still gets a batch, of padding, so every rank steps together)
        n_seg = max(1, min(self.k, math.ceil((int(self.lengths.max()) - begin) / self.L)))
        width = n_seg * self.L
        source = torch.full((self.bsz, width), self.pad, dtype=torch.long)
        target = torch.full((self.bsz, width), self.pad, dtype=torch.long)
        for b, (start, length) in enumerate(zip(self.starts, self.lengths)):
            lo, hi = start + begin, start + min(begin + width, length)
            if hi <= lo:
                continue
            target[b, : hi - lo] = torch.from_numpy(self.tokens[lo:hi].astype(np.int64))
            source[b, : hi - lo] = previous_tokens(self.tokens, lo, hi, self.eos, starts=lo == 0)
        reset = torch.zeros(self.bsz, n_seg, dtype=torch.bool)
        reset[:, 0] = i == 0
        depth = (i * self.k + torch.arange(n_seg)).expand(self.bsz, n_seg).clone()
        return {"id": i, "source": source, "target": target, "reset": reset, "depth": depth}


class SampleSegmentsDataset(WholeBatchDataset):
    """``--sample-break-mode eos``: one sample per line, memory reset for every sample.

    Item i is a batch of ``bsz`` lines (this shard's share of global batch i),
    each cut into segments of ``segment_length`` and padded to whole segments.
    The input of a sample's first token is ``</s>``. Targets in the first
    ``loss_start_segment`` segments are padding (context only), and with
    ``loss_last_segments`` N > 0 so are those before each sample's own last N
    segments: either way the scored targets of a row are contiguous, padding
    only before and after them (what eval-lm's ``start_indices`` relies on).
    Training order is reshuffled every epoch; evaluation keeps the file order.
    """

    every_row_new = True
    depth_of = "sample"

    def __init__(self, data, bsz, segment_length, pad, eos, name, loss_start_segment=0,
                 shuffle=False, seed=1, shard_id=0, num_shards=1, loss_last_segments=0):
        super().__init__()
        self.data, self.bsz, self.L = data, bsz, segment_length
        self.pad, self.eos, self.name = pad, eos, name
        self.loss_start = loss_start_segment * segment_length
        self.loss_last = loss_last_segments
        self.shuffle, self.seed = shuffle, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.order = np.arange(len(data))
        self.k = int(math.ceil(int(np.max(data.sizes)) / segment_length)) if len(data) else 1
        self.width = self.k * segment_length
        self._len = math.ceil(len(data) / (bsz * num_shards))

    def set_epoch(self, epoch):
        if self.shuffle:
            self.order = np.random.RandomState(self.seed + epoch).permutation(len(self.data))

    def __getitem__(self, i):
        glob = i * self.bsz * self.num_shards + self.shard_id * self.bsz
        rows = self.order[glob : min(glob + self.bsz, len(self.data))]
        lines = [self.data[int(r)].long() for r in rows]
        width = max([math.ceil(len(x) / self.L) * self.L for x in lines] + [self.L])
        n_rows = max(len(lines), 1)  # a shard past the end gets one all-padding row
        source = torch.full((n_rows, width), self.pad, dtype=torch.long)
        target = torch.full((n_rows, width), self.pad, dtype=torch.long)
        for b, line in enumerate(lines):
            target[b, : len(line)] = line
            source[b, 0] = self.eos
            source[b, 1 : len(line)] = line[:-1]
            target[b, : self.context_tokens(len(line))] = self.pad
        row_ids = torch.as_tensor(rows if len(rows) else [len(self.data)], dtype=torch.long)
        n_seg = width // self.L
        reset = torch.zeros(n_rows, n_seg, dtype=torch.bool)
        reset[:, 0] = True
        depth = torch.arange(n_seg).expand(n_rows, n_seg).clone()
        return {"id": i, "row_ids": row_ids, "source": source, "target": target, "reset": reset, "depth": depth}

    def context_tokens(self, length: int) -> int:
        """How many leading targets of a sample of ``length`` tokens are context only."""
        if not self.loss_last:
            return self.loss_start
        n_segments = math.ceil(length / self.L)
        return max(self.loss_start, (n_segments - self.loss_last) * self.L)


def document_spans(data, eos: int, separator: Optional[int] = None) -> np.ndarray:
    """[D, 2] token offsets (start, end) of the documents of an indexed dataset.

    Documents are separated by lines holding only ``</s>`` (an empty line:
    fairseq's ``complete_doc`` convention), or, with ``separator``, by lines
    holding only that symbol (then empty lines are ordinary text). Separator
    lines belong to no document. A run of separators is one boundary, and
    separators before the first or after the last document are ignored, so
    no document is empty."""
    sizes = np.asarray(data.sizes, dtype=np.int64)
    tokens = split_tokens(data)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    if separator is None:
        is_sep = (sizes == 1) & (tokens[np.maximum(starts, 0)] == eos)
    else:
        is_sep = (sizes == 2) & (tokens[starts] == separator)
        is_sep[sizes == 2] &= tokens[starts[sizes == 2] + 1] == eos
    content = ~is_sep
    # document = maximal run of content lines
    edges = np.diff(np.concatenate([[0], content.astype(np.int8), [0]]))
    first_line, last_line = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return np.stack([starts[first_line], ends[last_line]], axis=1) if len(first_line) else np.zeros((0, 2), np.int64)


class DocumentStreamDataset(WholeBatchDataset):
    """``--sample-break-mode doc``: each row reads whole documents, one after another.

    The ``S = bsz * num_shards`` rows are filled with documents, each going to
    the row with the fewest segments so far (greedy balancing, so all rows end
    at about the same segment unless one document is longer than a row's
    share: then the other rows end in padding). A document starts
    on a fresh segment, its last segment is padded; its first segment resets
    the row's memory to E_0, and the memory is carried while the document
    lasts, across items. Item i holds segments ``[i*k, (i+1)*k)`` of every
    row; a document may end inside an item, and the row's next document then
    starts (and resets) inside it too. Training shuffles the document order
    every epoch by the seed (``set_epoch``; the layout, and with it the number
    of items, is the epoch's); evaluation keeps the file order. All shards
    have the same number of items.
    """

    depth_of = "document"

    def __init__(self, tokens: np.ndarray, spans: np.ndarray, bsz: int, segment_length: int,
                 segments_per_item: int, pad: int, eos: int, name: str, shuffle: bool = False,
                 seed: int = 1, shard_id: int = 0, num_shards: int = 1):
        super().__init__()
        self.tokens, self.spans = tokens, np.asarray(spans, dtype=np.int64)
        self.bsz, self.L, self.k = bsz, segment_length, segments_per_item
        self.pad, self.eos, self.name = pad, eos, name
        self.shuffle, self.seed = shuffle, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.width = segment_length * segments_per_item
        n_rows = bsz * num_shards
        if len(self.spans) < n_rows:
            raise TarmError(f"split '{name}' has {len(self.spans)} documents, fewer than the {n_rows} rows "
                            f"({bsz} per batch x world size {num_shards}): {LOWER_BATCH}")
        self.lay_out(np.arange(len(self.spans)))

    def set_epoch(self, epoch):
        if self.shuffle:
            self.lay_out(np.random.RandomState(self.seed + epoch).permutation(len(self.spans)))

    def lay_out(self, order: np.ndarray) -> None:
        """Assign the documents, in ``order``, to rows; this shard keeps its rows'
        per-segment table: token offset, real tokens, depth into the document."""
        L, n_rows = self.L, self.bsz * self.num_shards
        n_seg = -(-(self.spans[:, 1] - self.spans[:, 0]) // L)
        heap = [(0, r) for r in range(n_rows)]
        rows: List[List[int]] = [[] for _ in range(n_rows)]
        for d in order:
            used, r = heapq.heappop(heap)
            rows[r].append(int(d))
            heapq.heappush(heap, (used + int(n_seg[d]), r))
        length = max(used for used, _ in heap)
        mine = rows[self.shard_id * self.bsz : (self.shard_id + 1) * self.bsz]
        self.offset = np.zeros((self.bsz, length), dtype=np.int64)
        self.count = np.zeros((self.bsz, length), dtype=np.int64)
        self.depth = np.full((self.bsz, length), -1, dtype=np.int64)
        self.document = np.full((self.bsz, length), -1, dtype=np.int64)
        for b, docs in enumerate(mine):
            t = 0
            for d in docs:
                start, end = self.spans[d]
                n = int(n_seg[d])
                seg_start = start + L * np.arange(n)
                self.offset[b, t : t + n] = seg_start
                self.count[b, t : t + n] = np.minimum(L, end - seg_start)
                self.depth[b, t : t + n] = np.arange(n)
                self.document[b, t : t + n] = d
                t += n
        self._len = math.ceil(length / self.k)
        self.padding_share = 1.0 - int((self.spans[:, 1] - self.spans[:, 0]).sum()) / (n_rows * length * L)

    def __getitem__(self, i):
        cols = slice(i * self.k, (i + 1) * self.k)
        offset, count, depth = self.offset[:, cols], self.count[:, cols], self.depth[:, cols]
        n_seg = offset.shape[1]
        source = torch.full((self.bsz, n_seg * self.L), self.pad, dtype=torch.long)
        target = torch.full((self.bsz, n_seg * self.L), self.pad, dtype=torch.long)
        for b in range(self.bsz):
            for t in range(n_seg):
                n = int(count[b, t])
                if n == 0:
                    continue
                lo, col = int(offset[b, t]), t * self.L
                target[b, col : col + n] = torch.from_numpy(self.tokens[lo : lo + n].astype(np.int64))
                source[b, col : col + n] = previous_tokens(self.tokens, lo, lo + n, self.eos, starts=depth[b, t] == 0)
        depth = torch.from_numpy(depth.copy())
        reset = depth <= 0  # a document starts here (or the row has none left: padding)
        return {"id": i, "source": source, "target": target, "reset": reset, "depth": depth,
                "document": torch.from_numpy(self.document[:, cols].copy())}


def layout_split(data, mode: str, name: str, train: bool, bsz: int, segment_length: int, segments: int,
                 dictionary: Dictionary, seed: int = 1, separator: Optional[int] = None,
                 separator_name: Optional[str] = None, loss_start_segment: int = 0,
                 loss_last_segments: int = 0, shard_id: int = 0, num_shards: int = 1):
    """The task dataset of split ``name`` in layout ``mode`` ('none', 'eos', 'doc'), and a
    line describing it for the log. Training items hold ``segments`` segments (k), evaluation
    items one (``eos``: whole samples); training shuffles samples or documents by ``seed``."""
    common = dict(bsz=bsz, segment_length=segment_length, pad=dictionary.pad(), eos=dictionary.eos(),
                  name=name, shard_id=shard_id, num_shards=num_shards)
    if mode == "eos":
        ds = SampleSegmentsDataset(data, loss_start_segment=loss_start_segment, shuffle=train, seed=seed,
                                   loss_last_segments=loss_last_segments, **common)
        if loss_start_segment >= ds.k:
            raise TarmError(f"--loss-start-segment {loss_start_segment} leaves nothing to score: the longest "
                            f"sample of split '{name}' has {ds.k} segments of --segment-length {ds.L}")
        return ds, f"{len(data):,} samples of up to {ds.k}x{ds.L} tokens, {len(ds)} batches of {ds.bsz}x{num_shards}"
    per_item = segments if train else 1
    if mode == "doc":
        spans = document_spans(data, dictionary.eos(), separator)
        if len(spans) == 0:
            raise TarmError(f"split '{name}' has no documents: only separator lines"
                            + (f" ('{separator_name}')" if separator_name else ""))
        ds = DocumentStreamDataset(split_tokens(data), spans, segments_per_item=per_item, shuffle=train,
                                   seed=seed, **common)
        return ds, (f"{len(spans):,} documents, {int((spans[:, 1] - spans[:, 0]).sum()):,} tokens in "
                    f"{ds.bsz}x{num_shards} rows, {len(ds)} batches of {ds.k}x{ds.L} tokens, "
                    f"padding {100 * ds.padding_share:.1f}%")
    # split_tokens may be a view of data's mmap: the dataset keeps ``data`` alive (``backing``)
    ds = SegmentStreamDataset(split_tokens(data), segments_per_item=per_item, **common)
    return ds, f"{len(ds.tokens):,} tokens in {ds.bsz}x{num_shards} streams, {len(ds)} batches of {ds.k}x{ds.L} tokens"


def separator_index(dictionary: Dictionary, symbol: Optional[str]) -> Optional[int]:
    """The --doc-separator symbol's id (None: documents are separated by empty lines)."""
    if not symbol:
        return None
    if symbol not in dictionary.indices:
        raise TarmError(f"--doc-separator '{symbol}' is not in the dictionary (dict.txt): "
                        "prepare the data with it (scripts/prepare_text.py --doc-separator)")
    return dictionary.index(symbol)


def check_same_dictionary(data_path, dictionary, first_path):
    """One line for a data path whose dict.txt differs from the first path's (the one the
    task and the model use): its token ids would silently mean other words."""
    dict_path = os.path.join(data_path, "dict.txt")
    if os.path.isfile(dict_path) and Dictionary.load(dict_path).symbols != dictionary.symbols:
        raise TarmError(f"{dict_path} differs from {os.path.join(first_path, 'dict.txt')}: every data "
                        "path of DATA1:DATA2:... needs the same dictionary (fairseq-preprocess --srcdict)")


def load_split(split_path, dictionary, dataset_impl, combine):
    """fairseq's load_indexed_dataset, with one-line errors for an empty split or a
    .bin/.idx pair that fairseq cannot read or that do not match."""
    bin_path, idx_path = split_path + ".bin", split_path + ".idx"
    if os.path.isfile(bin_path) and os.path.isfile(idx_path) and os.path.getsize(bin_path) == 0:
        raise TarmError(f"split '{os.path.basename(split_path)}' is empty: {bin_path} has no tokens")
    try:
        data = data_utils.load_indexed_dataset(split_path, dictionary, dataset_impl, combine=combine)
    except (AssertionError, ValueError, OSError, IndexError, struct.error) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise TarmError(f"{split_path}.bin/.idx cannot be read ({reason}): re-run fairseq-preprocess")
    if data is None:
        return None
    sizes = np.asarray(data.sizes, dtype=np.int64)
    if len(sizes) == 0 or sizes.sum() == 0:
        raise TarmError(f"split '{os.path.basename(split_path)}' is empty: {bin_path} has no tokens")
    index = getattr(data, "_index", None)
    buffer = getattr(data, "_bin_buffer", None)
    if index is not None and buffer is not None:
        end = int(np.asarray(index._pointers)[-1]) + int(sizes[-1]) * np.dtype(index.dtype).itemsize
        if end > len(buffer):
            raise TarmError(f"{bin_path} is truncated ({len(buffer)} bytes, its .idx needs {end}): "
                            "re-run fairseq-preprocess")
    return data
