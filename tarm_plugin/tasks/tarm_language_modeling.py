"""``tarm_language_modeling``: fairseq glue for segment-level recurrent memory.

Like fairseq's ``examples/truncated_bptt``, one dataset item is one whole batch of this
rank's rows, so memory can be carried from one batch to the next of the same rows (the
layouts are in :mod:`tarm_plugin.datasets`: contiguous streams, one sample per line,
documents). Each batch names its memory (``memory_key`` = split name), so validation never
clobbers the training streams' memory; the model is a function of its inputs, and a
:class:`~tarm_plugin.carry.MemoryStore` per model built passes the carried memory in and
keeps what comes out. Training items hold ``--bptt-segments`` segments (gradients flow
through the memory across them); evaluation items (eval-lm's, whatever the split) hold one
segment, memory carried through the whole split; with ``--sample-break-mode eos`` every item
holds whole samples, in training and evaluation. With several ranks, every rank's carried
memory is gathered after each training step, for rank 0's checkpoints. The settings and
their checks are in :mod:`.settings`, eval-lm's tables and batches in :mod:`..eval_segments`.
"""

import logging
import os

from fairseq import metrics, utils
from fairseq.data import iterators
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingTask

from ..answer import answer_counts
from ..carry import MemoryStore
from ..datasets import check_same_dictionary, layout_split, load_split, separator_index
from ..distributed import allow_checkpoint_broadcast, data_parallel_shard, unwrap
from ..errors import TarmError
from ..eval_batches import Mapped
from ..eval_segments import SegmentPerplexity, eval_lm_batches
from ..generation import TarmSequenceGenerator
from ..heap import HeapTrim
from ..savedir import hold_save_dir
from .settings import (EVAL_TABLES, TRAINED_WITH, TarmLanguageModelingConfig, break_mode, cfg_get, check_args,
                       check_mode_settings, plain, untrained_memory, use_trained_settings)

logger = logging.getLogger(__name__)
allow_checkpoint_broadcast()


@register_task("tarm_language_modeling", dataclass=TarmLanguageModelingConfig)
class TarmLanguageModelingTask(LanguageModelingTask):
    carries_memory = True  # batches of the same streams follow each other: models may carry memory

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets)
        self.valid_heap = HeapTrim()  # a CPU validation would otherwise grow the heap per batch

    @classmethod
    def setup_task(cls, args, **kwargs):
        check_args(args)
        return super().setup_task(args, **kwargs)

    def is_train(self, split: str) -> bool:
        return split == (cfg_get(self.args, "train_subset") or "train")

    def break_mode(self) -> str:
        """'none', 'eos' or 'doc' (fairseq's name complete_doc means doc)."""
        return break_mode(self.args)

    # ------------------------------------------- checkpoint settings (eval-lm, hub)
    def state_dict(self):
        # fairseq saves this as the checkpoint's "task_state" and hands it back to
        # load_state_dict when it loads the checkpoint for evaluation or generation
        state = dict(super().state_dict())
        state["tarm_trained_with"] = {k: plain(getattr(self.args, k)) for k in TRAINED_WITH}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        trained = state_dict.pop("tarm_trained_with", None)
        super().load_state_dict(state_dict)
        if trained:
            use_trained_settings(self.args, trained)

    # ------------------------------------------------------------------ data
    def batch_size_for(self, split: str, row_tokens: int = 0) -> int:
        """Rows per batch: --batch-size (--batch-size-valid for other splits than training's), else
        as many rows of ``row_tokens`` tokens as --max-tokens (--max-tokens-valid) holds; rows are
        by default ``L * k`` tokens in training and ``L`` in evaluation."""
        bsz, max_tokens = self.batch_flags(split)
        if bsz is None:  # from --max-tokens (--max-tokens-valid for validation)
            width = row_tokens or self.args.segment_length * (self.args.bptt_segments if self.is_train(split) else 1)
            bsz = max(1, max_tokens // width) if max_tokens else 1
        return int(bsz)

    def batch_flags(self, split: str):
        """(rows per batch, max tokens) as given for ``split``: the validation flags, else the
        training ones, for a split other than training's; None where not given."""
        train = self.is_train(split)
        get = lambda name: getattr(self.args, name, None)  # noqa: E731
        return ((None if train else get("batch_size_valid")) or get("batch_size"),
                (None if train else get("max_tokens_valid")) or get("max_tokens"))

    def load_dataset(self, split, epoch=1, combine=False, train=None, **kwargs):
        # several data paths (DATA1:DATA2:...): epoch i reads the i-th (fairseq reloads the
        # training split every epoch when it sees them); the dictionary is the first one's
        paths = utils.split_paths(self.args.data)
        data_path = paths[(epoch - 1) % len(paths)]
        if data_path != paths[0]:
            check_same_dictionary(data_path, self.dictionary, paths[0])
        data = load_split(os.path.join(data_path, split), self.dictionary, self.args.dataset_impl, combine)
        if data is None:
            raise TarmError(f"split '{split}' not found in {data_path} (no {split}.bin/.idx)")
        shard_id, num_shards = data_parallel_shard()
        train = self.is_train(split) if train is None else train  # train=False: evaluation's layout
        a = self.args
        mode = check_mode_settings(a)  # here, not in setup_task: eval-lm may take them from the checkpoint
        L = a.segment_length
        if mode == "eos":  # a row holds a whole sample: --max-tokens must hold the longest
            row_tokens = -(-int(data.sizes.max()) // L) * L if len(data) else L
            rows, max_tokens = self.batch_flags(split)
            if rows is None and max_tokens and len(data) and max_tokens < row_tokens:
                raise TarmError(f"--max-tokens{'' if self.is_train(split) else '-valid (or --max-tokens)'} "
                                f"{max_tokens} is below the longest sample of split '{split}' ({row_tokens} "
                                f"tokens in whole segments of {L})")
        else:
            row_tokens = L * (a.bptt_segments if train else 1)
        ds, layout = layout_split(
            data, mode, split, train, self.batch_size_for(split, row_tokens), L, a.bptt_segments,
            self.dictionary, seed=a.seed, separator=separator_index(self.dictionary, cfg_get(a, "doc_separator")),
            separator_name=cfg_get(a, "doc_separator"), loss_start_segment=a.loss_start_segment,
            loss_last_segments=a.loss_last_segments, shard_id=shard_id, num_shards=num_shards)
        n_answer = a.eval_exact_match_segments
        if n_answer and not train and len(data) and n_answer > ds.k:
            raise TarmError(f"--eval-exact-match-segments {n_answer}: the longest sample of split '{split}' "
                            f"has {ds.k} segments of --segment-length {L}")
        logger.info(f"{split}: {layout}" + (f", from {data_path}" if train else ""))
        ds.backing, ds.train_layout = data, train  # MMapIndexedDataset unmaps its buffer when collected
        ds.layout = layout + (f", documents shuffled by seed {a.seed}" if mode == "doc" and train else "")
        self.datasets[split] = ds

    def get_batch_iterator(self, dataset, num_workers=0, epoch=1, data_buffer_size=0, collate_fn=None, **kwargs):
        # every item is already a whole batch of this rank's streams, in stream order:
        # no shuffling, no re-batching, no sharding, no dropped remainder; the epoch's
        # layout (documents are shuffled per epoch) decides how many items there are
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=collate_fn or dataset.collater,
            batch_sampler=[[i] for i in range(len(dataset))], num_workers=num_workers, epoch=epoch,
            buffer_size=data_buffer_size, disable_shuffling=True)

    # ------------------------------------------------- training and validation
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        hold_save_dir(self.args.save_dir)  # only fairseq-train steps: one run per save dir
        store = getattr(unwrap(model), "carried", None)
        if isinstance(store, MemoryStore):  # an --amp retry re-runs the update's batches: same reads
            # with the epoch: fp16 overflows repeat an update number, and batch ids repeat each epoch
            store.begin_step((self.epoch, update_num))
            key = sample["net_input"]["memory_key"]
            store.use_layout(key, self.datasets[key].layout)  # a resumed run laid out otherwise: E_0
        out = super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)
        if not self.untrained_memory_checked:
            self.untrained_memory_checked = True
            warning = untrained_memory(unwrap(model), self.args, self.break_mode())
            if warning and data_parallel_shard()[0] == 0:
                logger.warning(warning)
        # a checkpoint may follow any step: a gather costs ~0.35 ms beside a step's 0.5-4 s (docs/performance.md)
        self.share_carried_memory(model, sample["net_input"]["memory_key"], sample["target"].size(0))
        return out

    untrained_memory_checked = False
    epoch = 0

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        self.epoch = epoch

    def valid_step(self, sample, model, criterion):
        if self.is_train(sample["net_input"]["memory_key"]):  # it would re-lay out and overwrite the training streams
            raise TarmError("--valid-subset names the training split: validate on another split (a copy of it)")
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        self.valid_heap.after_batch()
        n_answer = self.args.eval_exact_match_segments
        if n_answer:  # --eval-exact-match-segments: decode the answer segments, count exact ones
            logging_output.update(answer_counts(model, sample, n_answer, self.dictionary.pad()))
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        em_total = sum(log.get("em_total", 0) for log in logging_outputs)
        if em_total:
            metrics.log_scalar("accuracy", 100.0 * sum(log.get("em_correct", 0) for log in logging_outputs)
                               / em_total, em_total, round=2)

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        # a validation can stop the run early (--patience) and fairseq then saves
        train = cfg_get(self.args, "train_subset") or "train"
        self.share_carried_memory(model, train, self.batch_size_for(train))

    def share_carried_memory(self, model, key: str, bsz: int) -> None:
        """Several ranks (a collective: each calls it at the same step): gather every rank's carried
        memory of ``key`` for rank 0's next checkpoint (per-sample batches reset it: nothing to carry)."""
        if self.break_mode() == "eos" or data_parallel_shard()[1] == 1:
            return
        inner = unwrap(model)
        if isinstance(getattr(inner, "carried", None), MemoryStore):
            inner.carried.gather(key, bsz)

    # ------------------------------------------------ eval-lm, generation, models
    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        if context_window > 0:
            raise TarmError("--context-window is not used by tarm: the memory carries the context "
                            "across segments; drop the flag")
        if cfg_get(self.args, "eval_document_losses") and self.break_mode() != "doc":
            raise TarmError("--eval-document-losses needs --sample-break-mode doc (the split's documents)")
        if getattr(dataset, "train_layout", False):  # --gen-subset train: one segment per row, in file order
            self.load_dataset(dataset.name, train=False)
            dataset = self.datasets[dataset.name]
        itr = self.get_batch_iterator(dataset, num_workers=num_workers, data_buffer_size=data_buffer_size
                                      ).next_epoch_itr(shuffle=False)
        window = (cfg_get(self.args, "eval_local_window") or self.args.segment_length
                  if cfg_get(self.args, "eval_token_classes") else None)
        return eval_lm_batches(Mapped(itr, HeapTrim()), dataset, self.dictionary.pad(),
                               getattr(self, "segment_ppl", None),
                               reset_memory=bool(cfg_get(self.args, "eval_reset_memory")),
                               horizon=cfg_get(self.args, "eval_memory_horizon"), token_window=window,
                               mode=self.break_mode())

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        """fairseq-interactive / fairseq-generate: a generator that reads the prompt into
        memory segment by segment (fairseq's SequenceGenerator would drop the memory)."""
        if seq_gen_cls is None and TarmSequenceGenerator.supports(models, args):
            return TarmSequenceGenerator.build(models, self.target_dictionary, args, self.break_mode(),
                                               segment_length=self.args.segment_length)
        return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)

    def build_model(self, args, from_checkpoint=False):
        model = super().build_model(args, from_checkpoint)
        if not getattr(model, "carries_memory", False):  # its forward takes no memory, reset or key
            arch = cfg_get(args, "_name") or cfg_get(args, "arch")
            raise TarmError(f"--task tarm_language_modeling needs a model that carries memory (--arch tarm_lm, "
                            f"tarm_lm_wiki103 or tarm_lm_quadratic); --arch {arch} does not")
        model.check_segment_length(self.args.segment_length)
        MemoryStore().attach(model)  # before a checkpoint loads: its carried memory is the store's
        tables = any(cfg_get(self.args, f) for f in EVAL_TABLES)
        if tables and getattr(self, "segment_ppl", None) is None:
            self.segment_ppl = SegmentPerplexity(self.dictionary.pad(), cfg_get(self.args, "eval_depth_unit") or 0)
            self.segment_ppl.watch(model)  # the first model of an ensemble
            self.segment_ppl.documents_path = cfg_get(self.args, "eval_document_losses")
        if cfg_get(self.args, "eval_memory_horizon") is not None and not getattr(
                getattr(model, "memory", None), "num_tokens", 0):
            raise TarmError("--eval-memory-horizon needs a model with memory (this one has "
                            "--num-memory-tokens 0)")
        return model
