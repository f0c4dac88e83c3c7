"""The memory carried from one batch to the next of the same streams: the task's store.

``tarm_lm`` is a function of its inputs: ``model(tokens, memory=E, reset=r)``
returns the memory after its last segment as ``extra["memory"]`` and keeps
nothing. The task's batches name their streams instead (``memory_key``, the
split; ``batch_id``, the batch's index in the epoch), because fairseq's
trainer, its validation and ``fairseq-eval-lm`` call the model with the
batch's ``net_input`` and drop what it returns beyond the logits. A
:class:`MemoryStore`, one per model the task builds, turns those names into
the call's ``memory`` before it and keeps the returned memory after it
(forward hooks), per key:

- stored detached: gradients stop at batch boundaries (truncated BPTT);
- a row that is not finite (an fp16 overflow step) reads E_0 again (its
  ``reset`` is set for the first segment);
- a batch run again reads what it read the first time, never what it or a
  later batch wrote (that would leak the future into it): fairseq's ``--amp``
  retries all ``--update-freq`` batches of an update after an overflow, so
  within a training update (:meth:`begin_step`) each batch's read is kept;
  outside one, a batch repeated at once reads the memory from before it;
- a different batch size reads E_0 (a warning unless every row resets anyway);
- memory restored from a checkpoint whose streams were laid out otherwise (another
  segment length, BPTT depth, batch, document order's seed, or data of another size:
  :meth:`use_layout` compares the layouts' counts) reads E_0: it belongs to other
  places in the text, maybe later ones;
- with several ranks, every rank's memory of the training streams is gathered
  (:meth:`gather`) for rank 0's checkpoints.

fairseq's trainer saves and restores only the model (and optimizer) on
resume, so the store rides in the model's checkpoint: the task attaches it as
the model's submodule ``carried``, whose ``get/set_extra_state`` hold it
(checkpoints from before the store, which held it as the model's own extra
state, load into it). The model's ``forward`` never reads it.
"""

import logging
from typing import Dict, Optional, Tuple

import torch
from fairseq.distributed import utils as dist_utils
from torch import Tensor, nn

from .distributed import data_parallel_shard

logger = logging.getLogger(__name__)

Entry = Tuple[Tensor, Tensor, Optional[int]]  # (memory, valid rows, batch_id that wrote it)


class MemoryStore(nn.Module):
    """Memory per stream set (key), carried between the model calls of one task."""

    def __init__(self):
        super().__init__()
        self._now: Dict[str, Entry] = {}
        self._before: Dict[str, Entry] = {}
        self._per_rank: Dict[str, Tensor] = {}
        self._call: Optional[Tuple[str, Optional[int]]] = None
        self._step = None  # the training update running (begin_step), None outside training
        self._reads: Dict[Tuple[str, int], Optional[Entry]] = {}  # what each batch of that update read
        self.layouts: Dict[str, str] = {}  # key -> how its streams are laid out (use_layout)
        self._restored_layouts: Optional[Dict[str, str]] = None  # the checkpoint's, until checked

    def begin_step(self, step) -> None:
        """A training update (the task passes its epoch and fairseq's update number) runs its
        batches: while it is the same
        update, a batch that runs again (an ``--amp`` retry of the update's batches) reads what
        it read the first time."""
        if step != self._step:
            self._step, self._reads = step, {}

    # ---------------------------------------------------------------- the store
    def get(self, key: str, bsz: int, batch_id: Optional[int] = None) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(memory, invalid_rows) to read for ``key``, or (None, None) if nothing fits."""
        if batch_id is not None and (key, batch_id) in self._reads:
            entry = self._reads[key, batch_id]  # a batch of this update again: its first read
        else:
            entry = self._now.get(key)
            if entry is not None and batch_id is not None and entry[2] == batch_id:
                entry = self._before.get(key)  # a re-run of the batch that wrote ``now``
            if batch_id is not None and self._step is not None:
                self._reads[key, batch_id] = entry
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

    def use_layout(self, key: str, layout: str) -> None:
        """The streams of ``key`` are laid out as ``layout`` (a description that changes with
        anything that moves a row's text). Memory restored from a checkpoint that laid them out
        otherwise is dropped: E_0 instead of memory from other, maybe later, places in the text."""
        restored = (self._restored_layouts or {}).pop(key, None)
        if restored is not None and restored != layout and self.has(key):
            if data_parallel_shard()[0] == 0:
                logger.warning(f"memory '{key}': the checkpoint's streams were laid out as [{restored}], "
                               f"now as [{layout}]: the carried memory restarts from E_0")
            self.clear(key)
        self.layouts[key] = layout

    def has(self, key: str) -> bool:
        return key in self._now

    def clear(self, key: Optional[str] = None) -> None:
        for store in (self._now, self._before, self._per_rank):
            if key is None:
                store.clear()
            else:
                store.pop(key, None)
        self._reads = {k: v for k, v in self._reads.items() if key is not None and k[0] != key}

    # ------------------------------------------------------ around a model call
    def attach(self, model: nn.Module) -> "MemoryStore":
        """Carry ``model``'s memory for calls that name a ``memory_key`` (and hold it
        in the model's checkpoints as its submodule ``carried``)."""
        if isinstance(getattr(model, "carried", None), MemoryStore):
            raise ValueError("this model already has a memory store")
        model.add_module("carried", self)
        model.register_forward_pre_hook(self._before_call, with_kwargs=True)
        model.register_forward_hook(self._after_call, with_kwargs=True)
        return self

    def _before_call(self, model, args, kwargs):
        key, batch_id = kwargs.pop("memory_key", None), kwargs.pop("batch_id", None)
        self._call = None
        if key is None or kwargs.get("memory") is not None:
            return args, kwargs
        src = args[0] if args else kwargs["src_tokens"]
        bsz, reset = src.size(0), kwargs.get("reset")
        memory, invalid = self.get(key, bsz, batch_id)
        if memory is None and self.has(key) and reset is not None and not bool(first_segment(reset).all()):
            logger.warning(f"memory '{key}': batch size changed mid-stream; reading the initial memory")
        if memory is not None:
            kwargs["memory"] = memory
            if bool(invalid.any()):  # rows a non-finite step wrote: E_0 again
                kwargs["reset"] = reset_first_segment(reset, invalid)
        self._call = (key, batch_id)
        return args, kwargs

    def _after_call(self, model, args, kwargs, output):
        if self._call is not None:
            key, batch_id = self._call
            self._call = None
            self.put(key, output[1]["memory"], batch_id)

    # --------------------------------------------------- ranks and checkpoints
    def gather(self, key: str, bsz: int) -> None:
        """All ranks together: gather every rank's memory of ``key`` (a [world, B, m, d]
        tensor), ready for rank 0's next checkpoint. Nothing tells the other ranks
        when rank 0 saves: the task calls this after every training step (a
        checkpoint may follow any) and when a validation starts."""
        memory, _ = self.get(key, bsz)
        if memory is None or data_parallel_shard()[1] == 1:
            return
        group = dist_utils.get_data_parallel_group()
        self._per_rank = {key: dist_utils.all_gather(memory.contiguous(), group, return_tensor=True)}

    def get_extra_state(self):
        """What the model's checkpoint holds of the store. Only rank 0 writes
        checkpoints, so with several ranks it holds what :meth:`gather` last
        gathered (the training streams of every rank)."""
        world = data_parallel_shard()[1]
        state = {"carried": {k: v[0].cpu() for k, v in self._now.items()}, "world_size": world,
                 "layouts": dict(self.layouts)}
        if world > 1:
            state["per_rank"] = {k: v.cpu() for k, v in self._per_rank.items()}
        return state

    def upgrade_state_dict_named(self, state_dict, name):
        """fairseq's checkpoint upgrade (the model calls it on its submodules): a
        checkpoint from before the store held the carried memory as the model's own
        extra state; it is the store's now."""
        parent = name.rpartition(".")[0]
        old = state_dict.pop((parent + "." if parent else "") + "_extra_state", None)
        if old is not None:
            state_dict.setdefault(name + "._extra_state", old)

    def set_extra_state(self, state):
        self.clear()
        if not state or not state.get("carried"):
            return
        self._restored_layouts = dict(state["layouts"]) if "layouts" in state else None  # older: unknown
        rank, world = data_parallel_shard()
        saved_world = state.get("world_size", 1)
        if saved_world == 1 and world == 1:
            carried = state["carried"]
        elif saved_world == world:  # (no "per_rank": nothing carried, e.g. per-sample batches)
            carried = {k: v[rank] for k, v in state.get("per_rank", {}).items()}
        else:
            if rank == 0:
                logger.warning(f"checkpoint written by {saved_world} process(es), resuming with {world}: "
                               "the streams are laid out anew, carried memory restarts from E_0")
            return
        for key, memory in carried.items():
            self.put(key, memory)


def first_segment(reset: Tensor) -> Tensor:
    """The first segment's reset flags [B] of a [B] or [B, n] ``reset``."""
    return reset[:, 0] if reset.dim() == 2 else reset


def reset_first_segment(reset: Optional[Tensor], rows: Tensor) -> Tensor:
    """``reset`` with ``rows`` [B] also reading E_0 at the first segment."""
    if reset is None:
        return rows.clone()
    reset = reset.to(device=rows.device, dtype=torch.bool).clone()
    if reset.dim() == 2:
        reset[:, 0] |= rows
    else:
        reset |= rows
    return reset
