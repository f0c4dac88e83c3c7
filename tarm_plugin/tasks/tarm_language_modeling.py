"""``tarm_language_modeling``: fairseq glue for segment-level recurrent memory.

Like fairseq's ``examples/truncated_bptt``, one dataset item is one whole
batch of this rank's rows, so memory can be carried from one batch to the next
of the same rows (the layouts are in :mod:`tarm_plugin.datasets`: contiguous
streams, one sample per line, documents). Each batch names its memory
(``memory_key`` = split name), so validation never clobbers the training
streams' memory. Training items hold ``--bptt-segments`` segments (gradients
flow through the memory across them); evaluation items hold one segment,
memory carried through the whole split. With several ranks, every rank's
carried memory is gathered after each training step, for rank 0's checkpoints.
"""

import functools
import logging
import os
import sys
import zipfile
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

import torch
from fairseq import metrics, utils
from fairseq.data import iterators
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from omegaconf import II

from ..answer import answer_counts
from ..datasets import (DocumentStreamDataset, SampleSegmentsDataset, SegmentStreamDataset,
                        check_same_dictionary, document_spans, load_split, split_tokens)
from ..distributed import allow_checkpoint_broadcast, data_parallel_shard
from ..errors import TarmError
from ..eval_batches import Mapped, MemoryHorizon, TokenClasses
from ..eval_segments import SegmentPerplexity
from ..generation import TarmSequenceGenerator
from ..savedir import hold_save_dir

logger = logging.getLogger(__name__)
allow_checkpoint_broadcast()

SAMPLE_BREAK_MODES = ("none", "eos", "doc", "complete_doc")  # complete_doc: fairseq's name for doc


@dataclass
class TarmLanguageModelingConfig(LanguageModelingConfig):
    sample_break_mode: ChoiceEnum(SAMPLE_BREAK_MODES) = field(
        default="none",
        metadata={"help": "none: the split is one text in contiguous streams; eos: one sample per "
                  "line, memory reset per sample; doc (or complete_doc): documents, each row "
                  "reading whole documents one after another, memory reset at each document's "
                  "start (documents separated by empty lines, or by --doc-separator lines)"},
    )
    doc_separator: Optional[str] = field(
        default=None,
        metadata={"help": "with --sample-break-mode doc: documents are separated by lines holding "
                  "only this dictionary symbol (e.g. '<doc>'; empty lines are then ordinary text); "
                  "default: by empty lines (fairseq's complete_doc convention)"},
    )
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
        metadata={"help": "fairseq-eval-lm: also log loss and perplexity by depth: the segment index "
                  "within the sample (eos), else segments since the document's (doc) or stream's "
                  "(none) start, in buckets 0, 1, 2-3, 4-7, ..."},
    )
    eval_depth_unit: int = field(
        default=0,
        metadata={"help": "with --eval-segment-ppl (doc, none): bucket tokens by their depth in units "
                  "of this many tokens instead of segments, so that models with other segment "
                  "lengths line up; 0 = --segment-length"},
    )
    eval_reset_memory: bool = field(
        default=False,
        metadata={"help": "fairseq-eval-lm: read the initial memory E_0 at every segment, so that "
                  "nothing is carried from one segment to the next: an ablation that shows what the "
                  "carried memory adds beyond the learned E_0"},
    )
    eval_memory_horizon: Optional[int] = field(
        default=None,
        metadata={"help": "fairseq-eval-lm: the memory each scored segment reads is built from E_0 over "
                  "only the K segments before it (0 = E_0, like --eval-reset-memory; K >= a segment's "
                  "depth = the plain evaluation): how far back the useful carried content comes from. "
                  "Costs K+1 segments per scored segment; --sample-break-mode doc or none"},
    )
    eval_token_classes: bool = field(
        default=False,
        metadata={"help": "fairseq-eval-lm: also log loss by token class: local (the token occurs among "
                  "the --eval-local-window tokens before it), far (earlier in its document, stream or "
                  "sample, not within the window), new (first occurrence)"},
    )
    eval_local_window: Optional[int] = field(
        default=None,
        metadata={"help": "with --eval-token-classes: the local window W in tokens (default: "
                  "--segment-length, so 'far' tokens are those a model without memory cannot see)"},
    )
    eval_document_losses: Optional[str] = field(
        default=None,
        metadata={"help": "fairseq-eval-lm with --sample-break-mode doc: write the loss per document, "
                  "depth and token class to this JSON file (for intervals by a bootstrap over documents)"},
    )
    max_tokens: Optional[int] = II("dataset.max_tokens")
    train_subset: str = II("dataset.train_subset")
    checkpoint_path: Optional[str] = II("common_eval.path")  # fairseq-eval-lm's --path
    save_dir: str = II("checkpoint.save_dir")  # fairseq-train's rank 0 locks it (tarm_plugin/savedir.py)


# task settings a checkpoint is evaluated with unless the command line says otherwise
TRAINED_WITH = ("segment_length", "sample_break_mode", "doc_separator", "loss_start_segment",
                "loss_last_segments")


@register_task("tarm_language_modeling", dataclass=TarmLanguageModelingConfig)
class TarmLanguageModelingTask(LanguageModelingTask):
    carries_memory = True  # batches of the same streams follow each other: models may carry memory

    @classmethod
    def setup_task(cls, args, **kwargs):
        if args.segment_length is None or args.segment_length < 1:
            raise TarmError(f"--segment-length must be >= 1, got {args.segment_length}")
        if args.bptt_segments is None or args.bptt_segments < 1:
            raise TarmError(f"--bptt-segments must be >= 1, got {args.bptt_segments}")
        if str(args.sample_break_mode) not in SAMPLE_BREAK_MODES:
            raise TarmError(f"--sample-break-mode {args.sample_break_mode} is not supported: use none "
                            "(contiguous streams), eos (one sample per line) or doc (documents)")
        if (_cfg_get(args, "eval_memory_horizon") or 0) < 0:
            raise TarmError(f"--eval-memory-horizon must be >= 0 (segments), got {args.eval_memory_horizon}")
        window = _cfg_get(args, "eval_local_window")
        if window is not None and window < 1:
            raise TarmError(f"--eval-local-window must be >= 1 (tokens), got {window}")
        if window is not None and not _cfg_get(args, "eval_token_classes"):
            raise TarmError("--eval-local-window needs --eval-token-classes")
        if (_cfg_get(args, "eval_depth_unit") or 0) < 0:
            raise TarmError(f"--eval-depth-unit must be >= 0 (0 = the segment length), got {args.eval_depth_unit}")
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
            if name in ("loss_start_segment", "loss_last_segments") and self.break_mode() != "eos":
                continue  # only meaningful per sample; the mode given overrides the checkpoint's
            if name == "doc_separator" and self.break_mode() != "doc":
                continue
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
        mode = self.check_settings()  # here, not in setup_task: eval-lm may take them from the checkpoint
        common = dict(bsz=self.batch_size_for(split), segment_length=self.args.segment_length,
                      pad=self.dictionary.pad(), eos=self.dictionary.eos(), name=split,
                      shard_id=shard_id, num_shards=num_shards)
        source = f", from {data_path}" if train else ""
        if mode == "eos":
            ds = SampleSegmentsDataset(data, loss_start_segment=self.args.loss_start_segment, shuffle=train,
                                       seed=self.args.seed, loss_last_segments=self.args.loss_last_segments,
                                       **common)
            if self.args.loss_start_segment >= ds.k:
                raise TarmError(
                    f"--loss-start-segment {self.args.loss_start_segment} leaves nothing to score: the "
                    f"longest sample of split '{split}' has {ds.k} segments of --segment-length {ds.L}")
            logger.info(f"{split}: {len(data):,} samples of up to {ds.k}x{ds.L} tokens, "
                        f"{len(ds)} batches of {ds.bsz}x{num_shards}{source}")
        elif mode == "doc":
            spans = document_spans(data, self.dictionary.eos(), self.separator_index())
            if len(spans) == 0:
                raise TarmError(f"split '{split}' has no documents: only separator lines"
                                + (f" ('{self.args.doc_separator}')" if self.args.doc_separator else ""))
            ds = DocumentStreamDataset(split_tokens(data), spans, segments_per_item=self.args.bptt_segments
                                       if train else 1, shuffle=train, seed=self.args.seed, **common)
            logger.info(f"{split}: {len(spans):,} documents, {int((spans[:, 1] - spans[:, 0]).sum()):,} tokens "
                        f"in {ds.bsz}x{num_shards} rows, {len(ds)} batches of {ds.k}x{ds.L} tokens, "
                        f"padding {100 * ds.padding_share:.1f}%{source}")
        else:
            # split_tokens may be a view of data's mmap: the dataset keeps ``data`` alive
            ds = SegmentStreamDataset(split_tokens(data), segments_per_item=self.args.bptt_segments
                                      if train else 1, **common)
            logger.info(f"{split}: {len(ds.tokens):,} tokens in {ds.bsz}x{num_shards} streams, "
                        f"{len(ds)} batches of {ds.k}x{ds.L} tokens{source}")
        ds.backing = data  # MMapIndexedDataset unmaps its buffer when collected
        self.datasets[split] = ds

    def break_mode(self) -> str:
        """'none', 'eos' or 'doc' (fairseq's name complete_doc means doc)."""
        mode = str(_plain(self.args.sample_break_mode))
        return "doc" if mode == "complete_doc" else mode

    def check_settings(self) -> str:
        """The settings that depend on --sample-break-mode, checked once they are final
        (eval-lm and the hub take them from the checkpoint); returns the mode."""
        a, mode = self.args, self.break_mode()
        for name in ("loss_start_segment", "loss_last_segments", "eval_exact_match_segments"):
            flag, value = "--" + name.replace("_", "-"), getattr(a, name)
            if value < 0:
                raise TarmError(f"{flag} must be >= 0 (0 = off), got {value}")
            if value and mode != "eos":
                raise TarmError(f"{flag} needs --sample-break-mode eos (it names segments of each sample; "
                                f"--sample-break-mode {mode} has no samples)")
        if _cfg_get(a, "doc_separator") and mode != "doc":
            raise TarmError(f"--doc-separator needs --sample-break-mode doc (got {mode})")
        return mode

    def separator_index(self) -> Optional[int]:
        """The --doc-separator symbol's id (None: documents are separated by empty lines)."""
        sep = _cfg_get(self.args, "doc_separator")
        if not sep:
            return None
        if sep not in self.dictionary.indices:
            raise TarmError(f"--doc-separator '{sep}' is not in the dictionary (dict.txt): "
                            "prepare the data with it (scripts/prepare_text.py --doc-separator)")
        return self.dictionary.index(sep)

    def get_batch_iterator(self, dataset, num_workers=0, epoch=1, data_buffer_size=0, collate_fn=None, **kwargs):
        # every item is already a whole batch of this rank's streams, in stream order:
        # no shuffling, no re-batching, no sharding, no dropped remainder; the epoch's
        # layout (documents are shuffled per epoch) decides how many items there are
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        return iterators.EpochBatchIterator(
            dataset=dataset,
            collate_fn=collate_fn or dataset.collater,
            batch_sampler=[[i] for i in range(len(dataset))],
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=data_buffer_size,
            disable_shuffling=True,
        )

    # ------------------------------------ carried memory for rank 0's checkpoints
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        hold_save_dir(self.args.save_dir)  # only fairseq-train steps: one run per save dir
        out = super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)
        # a checkpoint may follow any step: gathering costs ~0.02% of a step (docs/performance.md)
        self.share_carried_memory(model, sample["net_input"]["memory_key"], sample["target"].size(0))
        return out

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        n_answer = self.args.eval_exact_match_segments
        if n_answer:  # --eval-exact-match-segments: decode the answer segments, count exact ones
            logging_output.update(answer_counts(model, sample, n_answer, self.dictionary.pad()))
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        em_total = sum(log.get("em_total", 0) for log in logging_outputs)
        if em_total:
            correct = sum(log.get("em_correct", 0) for log in logging_outputs)
            metrics.log_scalar("accuracy", 100.0 * correct / em_total, em_total, round=2)

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        # a validation can stop the run early (--patience) and fairseq then saves
        train = _cfg_get(self.args, "train_subset") or "train"
        self.share_carried_memory(model, train, self.batch_size_for(train))

    def share_carried_memory(self, model, key: str, bsz: int) -> None:
        """Several ranks: gather every rank's carried memory of ``key`` for rank 0's
        next checkpoint (per-sample batches reset it every batch: nothing to carry).
        A collective: every rank calls it at the same step."""
        if self.break_mode() == "eos" or data_parallel_shard()[1] == 1:
            return
        inner = model
        while hasattr(inner, "module"):  # fairseq's DDP wrappers
            inner = inner.module
        if hasattr(inner, "share_carried_memory"):
            inner.share_carried_memory(key, bsz)

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        if context_window > 0:
            raise TarmError("--context-window is not used by tarm: the memory carries the context "
                            "across segments; drop the flag")
        horizon = _cfg_get(self.args, "eval_memory_horizon")
        collate = dataset.collater
        if _cfg_get(self.args, "eval_reset_memory"):
            if horizon is not None:
                raise TarmError("--eval-memory-horizon and --eval-reset-memory exclude each other "
                                "(--eval-memory-horizon 0 reads E_0 at every segment)")
            collate = functools.partial(reset_every_segment, dataset.collater)
        itr = self.get_batch_iterator(
            dataset, num_workers=num_workers, data_buffer_size=data_buffer_size, collate_fn=collate
        ).next_epoch_itr(shuffle=False)
        if _cfg_get(self.args, "eval_token_classes"):  # on the batches as read, before any context is added
            window = _cfg_get(self.args, "eval_local_window") or self.args.segment_length
            itr = Mapped(itr, TokenClasses(window, self.dictionary.pad()))
            self.segment_ppl.window = window
        if _cfg_get(self.args, "eval_document_losses") and self.break_mode() != "doc":
            raise TarmError("--eval-document-losses needs --sample-break-mode doc (the split's documents)")
        if horizon is not None:
            if self.break_mode() == "eos":
                raise TarmError("--eval-memory-horizon needs --sample-break-mode doc or none "
                                "(eos evaluates whole samples, their memory never carried between batches)")
            itr = Mapped(itr, MemoryHorizon(horizon, self.dictionary.pad()))
        if getattr(self, "segment_ppl", None) is not None:
            itr = self.segment_ppl.iterate(itr, dataset)
        return itr

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        """fairseq-interactive / fairseq-generate: a generator that reads the prompt into
        memory segment by segment (fairseq's SequenceGenerator would drop the memory)."""
        if seq_gen_cls is None and TarmSequenceGenerator.supports(models):
            return TarmSequenceGenerator.build(models, self.target_dictionary, args,
                                               sample_break_mode=self.break_mode())
        return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)

    def build_model(self, args, from_checkpoint=False):
        model = super().build_model(args, from_checkpoint)
        if hasattr(model, "check_segment_length"):
            model.check_segment_length(self.args.segment_length)
        tables = (_cfg_get(self.args, "eval_segment_ppl") or _cfg_get(self.args, "eval_token_classes")
                  or _cfg_get(self.args, "eval_document_losses"))
        if tables and getattr(self, "segment_ppl", None) is None:
            self.segment_ppl = SegmentPerplexity(self.dictionary.pad(), _cfg_get(self.args, "eval_depth_unit") or 0)
            self.segment_ppl.watch(model)  # the first model of an ensemble
            self.segment_ppl.documents_path = _cfg_get(self.args, "eval_document_losses")
        if _cfg_get(self.args, "eval_memory_horizon") is not None and not getattr(
                getattr(model, "memory", None), "num_tokens", 0):
            raise TarmError("--eval-memory-horizon needs a model with memory (this one has "
                            "--num-memory-tokens 0)")
        return model


def reset_every_segment(collater, items):
    """--eval-reset-memory: a batch in which every row's memory starts from E_0 at every segment."""
    sample = collater(items)
    net_input = sample["net_input"]
    net_input["reset"] = torch.ones_like(net_input["reset"], dtype=torch.bool)
    return sample


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
