"""``tarm_language_modeling``: contiguous streams cut into segments.

Like fairseq's ``examples/truncated_bptt``: a split (the same data-bin that
``language_modeling`` reads) is concatenated and laid out as
``batch_size * world_size`` contiguous streams; each rank keeps its own
``batch_size`` streams and one dataset item is one whole batch, so memory can
be carried from one batch to the next of the same stream. Unlike it:

- every token of the split is a target exactly once: the input of token j is
  token j-1 (``</s>`` for the split's first token), streams may differ in length
  by one token, and the tail is padding, which the loss and eval-lm ignore;
- each item says where its streams start (``reset``), and which memory it
  belongs to (``memory_key`` = split name), so validation never clobbers the
  training streams' memory;
- training items hold ``--bptt-segments`` segments (gradients flow through
  the memory across them); evaluation items hold one segment, memory carried
  through the whole split.
"""

import logging
import math
import os
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import Dictionary, FairseqDataset, data_utils, iterators
from fairseq.distributed import utils as dist_utils
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from omegaconf import II

from ..distributed import data_parallel_shard
from ..errors import TarmError
from ..eval_segments import SegmentPerplexity
from ..generation import TarmSequenceGenerator

logger = logging.getLogger(__name__)

# fairseq hands the checkpoint that rank 0 loaded to the other ranks through
# torch.save/torch.load (distributed_utils.broadcast_object). torch >= 2.6 loads
# with weights_only=True, which refuses the omegaconf config inside, so a
# multi-process run could not resume at all. These are plain data containers.
if hasattr(torch.serialization, "add_safe_globals"):
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    torch.serialization.add_safe_globals([DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode,
                                          collections.defaultdict, dict, list, int, typing.Any,
                                          dist_utils._TensorPlaceholder])


@dataclass
class TarmLanguageModelingConfig(LanguageModelingConfig):
    segment_length: int = field(
        default=64, metadata={"help": "tokens per segment (L); memory is read and written once per segment"}
    )
    bptt_segments: int = field(
        default=4,
        metadata={"help": "segments per training sample (k): gradients flow through the memory "
                  "across k segments and are cut between samples"},
    )
    loss_start_segment: int = field(
        default=0,
        metadata={"help": "with --sample-break-mode eos: the first N segments of each sample are "
                  "context only (read, not scored), e.g. 1 for the quadratic task's equation"},
    )
    loss_last_segments: int = field(
        default=0,
        metadata={"help": "with --sample-break-mode eos: score only the last N segments of each "
                  "sample (each by its own length, so it names e.g. a question segment when samples "
                  "differ in length); with --loss-start-segment a segment is scored only if both allow "
                  "it; 0 = all"},
    )
    eval_exact_match_segments: int = field(
        default=0,
        metadata={"help": "with --sample-break-mode eos: in validation, greedily generate the last "
                  "N segments of each sample with memory and log the exact-match 'accuracy'"},
    )
    eval_segment_ppl: bool = field(
        default=False,
        metadata={"help": "fairseq-eval-lm: also log loss and perplexity by segment index (within the "
                  "sample with --sample-break-mode eos, else segments since the stream's start, "
                  "in buckets 0, 1, 2-3, 4-7, ...)"},
    )
    max_tokens: Optional[int] = II("dataset.max_tokens")
    train_subset: str = II("dataset.train_subset")
    checkpoint_path: Optional[str] = II("common_eval.path")  # fairseq-eval-lm's --path
    # fairseq-train's save schedule: with several ranks, the carried memory is
    # gathered for rank 0's checkpoints only where one may be written (may_save_after)
    save_interval: int = II("checkpoint.save_interval")
    save_interval_updates: int = II("checkpoint.save_interval_updates")
    max_update: int = II("optimization.max_update")
    stop_time_hours: float = II("optimization.stop_time_hours")
    update_freq: List[int] = II("optimization.update_freq")
    skip_remainder_batch: bool = II("optimization.skip_remainder_batch")


# task settings a checkpoint is evaluated with unless the command line says otherwise
TRAINED_WITH = ("segment_length", "sample_break_mode", "loss_start_segment", "loss_last_segments")


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


class WholeBatchDataset(FairseqDataset):
    """Each item is already a whole batch ``[bsz, <= width]`` of this shard: the
    collater only adds fairseq's fields and the memory bookkeeping."""

    every_row_new = False  # True: every row of every batch starts a new sample (memory reset)

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
                "reset": torch.full((source.size(0),), self.every_row_new or item["id"] == 0, dtype=torch.bool),
                "memory_key": self.name,
                "segment_length": self.L,
                "batch_id": int(item["id"]),
            },
            "target": target,
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
                f"(--batch-size x world size); lower the batch size"
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
        n_seg = min(self.k, math.ceil((int(self.lengths.max()) - begin) / self.L))
        width = n_seg * self.L
        source = torch.full((self.bsz, width), self.pad, dtype=torch.long)
        target = torch.full((self.bsz, width), self.pad, dtype=torch.long)
        for b, (start, length) in enumerate(zip(self.starts, self.lengths)):
            lo, hi = start + begin, start + min(begin + width, length)
            if hi <= lo:
                continue
            target[b, : hi - lo] = torch.from_numpy(self.tokens[lo:hi].astype(np.int64))
            # the input of token j is token j-1: the token crossing a segment or
            # batch boundary is still predicted, and scored exactly once
            prev = self.tokens[lo - 1 : hi - 1] if lo > 0 else np.concatenate([[self.eos], self.tokens[: hi - 1]])
            source[b, : hi - lo] = torch.from_numpy(np.asarray(prev, dtype=np.int64))
        return {"id": i, "source": source, "target": target}


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
        return {"id": i, "row_ids": row_ids, "source": source, "target": target}

    def context_tokens(self, length: int) -> int:
        """How many leading targets of a sample of ``length`` tokens are context only."""
        if not self.loss_last:
            return self.loss_start
        n_segments = math.ceil(length / self.L)
        return max(self.loss_start, (n_segments - self.loss_last) * self.L)


@register_task("tarm_language_modeling", dataclass=TarmLanguageModelingConfig)
class TarmLanguageModelingTask(LanguageModelingTask):
    carries_memory = True  # batches of the same streams follow each other: models may carry memory

    @classmethod
    def setup_task(cls, args, **kwargs):
        if args.segment_length is None or args.segment_length < 1:
            raise TarmError(f"--segment-length must be >= 1, got {args.segment_length}")
        if args.bptt_segments is None or args.bptt_segments < 1:
            raise TarmError(f"--bptt-segments must be >= 1, got {args.bptt_segments}")
        if args.sample_break_mode not in ("none", "eos"):
            raise TarmError(f"--sample-break-mode {args.sample_break_mode} is not supported: use none "
                            "(contiguous streams) or eos (one sample per line, memory reset per sample)")
        if args.loss_start_segment < 0 or args.eval_exact_match_segments < 0:
            raise TarmError("--loss-start-segment and --eval-exact-match-segments must be >= 0")
        if getattr(args, "add_bos_token", False):
            raise TarmError("--add-bos-token is not supported: streams already start after </s>")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (
                torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise TarmError(
                f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but fairseq runs single-process: "
                "pass --distributed-world-size (on CPU use scripts/fairseq_train_cpu_ddp.sh)")
        if not args.data:
            raise TarmError("no data directory given (the positional DATA argument / task.data)")
        data = utils.split_paths(args.data)[0]
        if not os.path.isdir(data):
            raise TarmError(f"data directory not found: {data}")
        if not os.path.isfile(os.path.join(data, "dict.txt")):
            raise TarmError(f"{os.path.join(data, 'dict.txt')} not found: is {data} a fairseq-preprocess output?")
        check_checkpoint_files(_cfg_get(args, "checkpoint_path"))
        return super().setup_task(args, **kwargs)

    def is_train(self, split: str) -> bool:
        return split == (_cfg_get(self.args, "train_subset") or "train")

    # ------------------------------------------- checkpoint settings (eval-lm, hub)
    def state_dict(self):
        # fairseq saves this as the checkpoint's "task_state" and hands it back to
        # load_state_dict when it loads the checkpoint for evaluation or generation
        state = dict(super().state_dict())
        state["tarm_trained_with"] = {k: _plain(getattr(self.args, k)) for k in TRAINED_WITH}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        trained = state_dict.pop("tarm_trained_with", None)
        super().load_state_dict(state_dict)
        if trained:
            self.use_trained_settings(trained)

    def use_trained_settings(self, trained):
        """Evaluate as trained: each setting of TRAINED_WITH that the user did not
        give is taken from the checkpoint; one that was given and differs is used,
        with one warning naming both values."""
        for name in TRAINED_WITH:
            if name not in trained:
                continue
            saved, mine = trained[name], _plain(getattr(self.args, name))
            if name in ("loss_start_segment", "loss_last_segments") and self.args.sample_break_mode != "eos":
                continue  # only meaningful per sample; the mode given overrides the checkpoint's
            if saved == mine:
                continue
            flag = "--" + name.replace("_", "-")
            if given_by_user(self.args, name):
                logger.warning(f"{flag} {mine} given, the checkpoint was trained with {flag} {saved}: "
                               f"using {mine}")
            else:
                logger.info(f"{flag} {saved} (from the checkpoint)")
                setattr(self.args, name, saved)

    def batch_size_for(self, split: str) -> int:
        train = self.is_train(split)
        bsz = None if train else getattr(self.args, "batch_size_valid", None)
        bsz = bsz or getattr(self.args, "batch_size", None)
        if bsz is None:
            max_tokens = getattr(self.args, "max_tokens", None)
            width = self.args.segment_length * (self.args.bptt_segments if train else 1)
            bsz = max(1, max_tokens // width) if max_tokens else 1
        return int(bsz)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        # several data paths (DATA1:DATA2:...): epoch i reads the i-th (fairseq reloads the
        # training split every epoch when it sees them); the dictionary is the first one's
        paths = utils.split_paths(self.args.data)
        data_path = paths[(epoch - 1) % len(paths)]
        if data_path != paths[0]:
            check_same_dictionary(data_path, self.dictionary, paths[0])
        split_path = os.path.join(data_path, split)
        data = load_split(split_path, self.dictionary, self.args.dataset_impl, combine)
        if data is None:
            raise TarmError(f"split '{split}' not found in {data_path} (no {split}.bin/.idx)")

        shard_id, num_shards = data_parallel_shard()
        train = self.is_train(split)
        # checked here, not in setup_task: eval-lm may take the mode from the checkpoint
        if self.args.sample_break_mode != "eos" and (self.args.loss_start_segment or
                                                     self.args.eval_exact_match_segments):
            raise TarmError("--loss-start-segment / --eval-exact-match-segments need --sample-break-mode eos")
        loss_last = _cfg_get(self.args, "loss_last_segments") or 0
        if loss_last < 0:
            raise TarmError(f"--loss-last-segments must be >= 0 (0 = score every segment), got {loss_last}")
        if loss_last and self.args.sample_break_mode != "eos":
            raise TarmError("--loss-last-segments needs --sample-break-mode eos (the last segments of "
                            "each sample; contiguous streams have no samples)")
        if self.args.sample_break_mode == "eos":
            self.datasets[split] = SampleSegmentsDataset(
                data, bsz=self.batch_size_for(split), segment_length=self.args.segment_length,
                pad=self.dictionary.pad(), eos=self.dictionary.eos(), name=split,
                loss_start_segment=self.args.loss_start_segment, shuffle=train,
                seed=self.args.seed, shard_id=shard_id, num_shards=num_shards, loss_last_segments=loss_last)
            ds = self.datasets[split]
            if self.args.loss_start_segment >= ds.k:
                raise TarmError(
                    f"--loss-start-segment {self.args.loss_start_segment} leaves nothing to score: the "
                    f"longest sample of split '{split}' has {ds.k} segments of --segment-length {ds.L}")
            logger.info(f"{split}: {len(data):,} samples of up to {ds.k}x{ds.L} tokens, "
                        f"{len(ds)} batches of {ds.bsz}x{num_shards}" + (f", from {data_path}" if train else ""))
            return
        self.datasets[split] = SegmentStreamDataset(
            split_tokens(data),  # may be a view of data's mmap: the dataset keeps ``data`` alive
            bsz=self.batch_size_for(split),
            segment_length=self.args.segment_length,
            segments_per_item=self.args.bptt_segments if train else 1,
            pad=self.dictionary.pad(),
            eos=self.dictionary.eos(),
            name=split,
            shard_id=shard_id,
            num_shards=num_shards,
        )
        ds = self.datasets[split]
        ds.backing = data  # MMapIndexedDataset unmaps its buffer when collected
        logger.info(f"{split}: {len(ds.tokens):,} tokens in {ds.bsz}x{num_shards} streams, "
                    f"{len(ds)} batches of {ds.k}x{ds.L} tokens" + (f", from {data_path}" if train else ""))

    def get_batch_iterator(self, dataset, num_workers=0, epoch=1, data_buffer_size=0, **kwargs):
        # every item is already a whole batch of this rank's streams, in stream order:
        # no shuffling, no re-batching, no sharding, no dropped remainder
        return iterators.EpochBatchIterator(
            dataset=dataset,
            collate_fn=dataset.collater,
            batch_sampler=[[i] for i in range(len(dataset))],
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=data_buffer_size,
            disable_shuffling=True,
        )

    # ------------------------------------ carried memory for rank 0's checkpoints
    _epoch = None  # the training epoch, from begin_epoch

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        self._epoch = epoch

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        out = super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)
        net_input = sample["net_input"]
        key = net_input["memory_key"]
        if self.may_save_after(update_num, net_input.get("batch_id"), len(self.datasets[key])):
            self.share_carried_memory(model, key, sample["target"].size(0))
        return out

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        # a validation can stop the run early (--patience) and fairseq then saves
        train = _cfg_get(self.args, "train_subset") or "train"
        self.share_carried_memory(model, train, self.batch_size_for(train))

    def share_carried_memory(self, model, key: str, bsz: int) -> None:
        """Several ranks: gather every rank's carried memory of ``key`` for rank 0's
        next checkpoint (per-sample batches reset it every batch: nothing to carry).
        A collective: every rank calls it at the same step."""
        if self.args.sample_break_mode == "eos" or data_parallel_shard()[1] == 1:
            return
        inner = model
        while hasattr(inner, "module"):  # fairseq's DDP wrappers
            inner = inner.module
        if hasattr(inner, "share_carried_memory"):
            inner.share_carried_memory(key, bsz)

    def may_save_after(self, update_num: int, batch_id: Optional[int], num_batches: int) -> bool:
        """May fairseq-train write a checkpoint right after this training step?

        The step is part of update ``update_num + 1`` and of batch ``batch_id`` of
        the epoch's ``num_batches``; the rules are validate_and_save's in
        fairseq_cli/train.py. This decides a collective (the memory all-gather),
        so it reads only what every rank shares: flags, update count, epoch and
        batch index. When unsure it says yes (an extra gather costs little, a
        missed one makes a resumed run wrong): it ignores --validate-after-updates
        and --no-save, and gathers on every micro-batch of such an update.
        """
        a = self.args
        if _cfg_get(a, "stop_time_hours") is None or a.stop_time_hours > 0:
            return True  # stopping on time happens at an update no rank can predict identically
        done = update_num + 1
        if a.max_update and done >= a.max_update:
            return True
        # fairseq checks the update count again after a skipped (fp16 overflow) update
        every = a.save_interval_updates or 0
        if every > 0 and any(n > 0 and n % every == 0 for n in (update_num, done)):
            return True
        epoch = self._epoch
        if epoch is not None and epoch % a.save_interval != 0:
            return False
        return batch_id is None or batch_id >= num_batches - self.last_update_batches(epoch, num_batches)

    def last_update_batches(self, epoch: Optional[int], num_batches: int) -> int:
        """How many of the epoch's last batches may belong to its last update.

        fairseq-train groups --update-freq batches per update (the epoch's
        last group may be shorter, or dropped with --skip-remainder-batch).
        An upper bound: it also holds when a run resumed mid-epoch with
        another --update-freq, so the groups do not start at batch 0."""
        freqs = list(self.args.update_freq)
        freq = max(freqs) if epoch is None else freqs[min(epoch, len(freqs)) - 1]
        return freq + (num_batches % freq if self.args.skip_remainder_batch else 0)

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        if context_window > 0:
            raise TarmError("--context-window is not used by tarm: the memory carries the context "
                            "across segments; drop the flag")
        itr = self.get_batch_iterator(
            dataset, num_workers=num_workers, data_buffer_size=data_buffer_size
        ).next_epoch_itr(shuffle=False)
        if getattr(self, "segment_ppl", None) is not None:
            itr = self.segment_ppl.iterate(itr, dataset)
        return itr

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        """fairseq-interactive / fairseq-generate: a generator that reads the prompt into
        memory segment by segment (fairseq's SequenceGenerator would drop the memory)."""
        if seq_gen_cls is None and TarmSequenceGenerator.supports(models):
            return TarmSequenceGenerator.build(models, self.target_dictionary, args,
                                               sample_break_mode=self.args.sample_break_mode)
        return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)

    def build_model(self, args, from_checkpoint=False):
        model = super().build_model(args, from_checkpoint)
        max_pos = model.max_positions() if hasattr(model, "max_positions") else None
        if isinstance(max_pos, int) and self.args.segment_length > max_pos:
            raise TarmError(f"--segment-length {self.args.segment_length} exceeds the model's "
                            f"{max_pos} positions (--tokens-per-sample / --max-target-positions)")
        if _cfg_get(self.args, "eval_segment_ppl") and getattr(self, "segment_ppl", None) is None:
            self.segment_ppl = SegmentPerplexity(self.dictionary.pad())
            self.segment_ppl.watch(model)  # the first model of an ensemble
        return model


def _cfg_get(cfg, name):
    """A task config field, or None for a config (e.g. a checkpoint's) without it."""
    try:
        return getattr(cfg, name, None)
    except Exception:  # an interpolation the config cannot resolve
        return None


def _plain(value):
    return str(value) if isinstance(value, Enum) else value


def given_by_user(cfg, name) -> bool:
    """Was this task setting given by the user (command line, config file, code)?

    fairseq's parsers fill in defaults without recording which flags were typed.
    A value other than the dataclass default was given. A value equal to it was
    given only if its flag is on the command line: fairseq's parsers have
    allow_abbrev=False, so it is spelled out, as ``--segment-length 64``,
    ``--segment-length=64`` or hydra's ``task.segment_length=64``."""
    default = TarmLanguageModelingConfig.__dataclass_fields__[name].default
    if _plain(getattr(cfg, name)) != _plain(default):
        return True
    flag = "--" + name.replace("_", "-")
    return any(a == flag or a.startswith((flag + "=", f"task.{name}=")) for a in sys.argv[1:])


def check_checkpoint_files(paths: Optional[str]) -> None:
    """One-line errors for eval-lm's --path: a missing or truncated checkpoint.

    torch.save writes a zip archive whose directory is at the very end, so a
    truncated file fails ``zipfile.is_zipfile`` without reading the whole file."""
    if not paths:
        return
    for path in str(paths).split(os.pathsep):
        if not os.path.isfile(path):
            raise TarmError(f"checkpoint not found: {path} (--path)")
        if not zipfile.is_zipfile(path):
            raise TarmError(f"checkpoint {path} is truncated or not a checkpoint (--path)")


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

