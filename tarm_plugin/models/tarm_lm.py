"""``tarm_lm``: fairseq's transformer_lm with segment-level recurrent memory.

The decoder is fairseq's own ``TransformerDecoder`` (embeddings, adaptive
input, layers, adaptive softmax all unchanged); this model only changes what
sequence the layers see: each segment becomes ``[before | tokens | after]``
under :func:`~tarm_plugin.memory.memory_attention_mask` (the token memory:
``[E_{t-1} | tokens | write]``), with the positions and the recursion of the
memory kind that ``--memory-kind`` picks (:func:`~tarm_plugin.memory.build_memory`;
the one segment loop is :meth:`~tarm_plugin.memory.MemoryKind.scan`).

``forward`` returns ``(logits, extra)`` like any fairseq decoder, with
``extra["written_memory"]`` = [M_1..M_n] and ``extra["ema_memory"]`` =
[E_1..E_n] (the token memory's: each ``[B, m, d]``), ``extra["memory_gates"]`` =
the rates the update used, detached (the gate values g_t; the associative
memory's write strengths; empty for a fixed rate) and
``extra["read_memory"]`` = what the first segment of the batch read, and
``extra["memory"]`` = E_n, to pass to the next call as ``memory=``. A bare
call starts from E_0; rows and segments whose ``reset`` flag is set read E_0
(a stream or document starts there). The model keeps nothing between calls:
the task's batches name their streams, and the task's
:class:`~tarm_plugin.carry.MemoryStore` passes the carried memory in.
"""

import hashlib
import logging
import re
from dataclasses import dataclass, field, make_dataclass
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer_lm import (
    TransformerLanguageModel,
    TransformerLanguageModelConfig,
    base_lm_architecture,
    transformer_lm_baevski_wiki103,
)
from fairseq.utils import safe_getattr
from omegaconf import II
from torch.utils.checkpoint import checkpoint

from ..errors import TarmError
from ..generation import TarmHubInterface, generate, sentencepiece_defaults
from .. import kinds  # noqa: F401  (every kind in tarm_plugin/kinds/ registers itself)
from ..memory import MEMORY_KINDS, build_memory, keep_in_graph, memory_attention_mask

logger = logging.getLogger(__name__)


@dataclass
class TarmBaseConfig(TransformerLanguageModelConfig):
    """The flags every kind of memory shares; each kind adds its own (its ``OPTIONS``)."""

    memory_kind: str = field(
        default="tokens",
        metadata={"help": "the kind of memory carried between segments: 'tokens' = m memory "
                  "vectors read at a segment's start and written at its end (RMT, the averaging "
                  "of TARM, the gate), 'assoc' = an associative matrix per layer written by the "
                  "memory tokens with a delta rule and read by every position (ARMT); any kind "
                  "in tarm_plugin/kinds/"},
    )
    num_memory_tokens: int = field(
        default=10,
        metadata={"help": "memory slots m read at each segment's start and written at "
                  "its end; 0 = plain segment-level transformer (no memory); with --memory-kind assoc: "
                  "the memory tokens that write the associative matrix (>= 1)"},
    )
    memory_dropout: Optional[float] = field(
        default=None,
        metadata={"help": "dropout on the memory inputs (read and write positions); "
                  "default: --dropout, as the RMT authors' code drops out the whole input"},
    )
    checkpoint_segments: bool = field(
        default=False,
        metadata={"help": "in training, keep for the backward pass only what crosses segment "
                  "boundaries (the memory and the token features the loss needs) and "
                  "recompute each segment there (--checkpoint-activations does it per layer); "
                  "makes deep --bptt-segments affordable"},
    )
    memory_detach_every: int = field(
        default=0,
        metadata={"help": "in training, stop the gradient through the memory after every K segments of a "
                  "sample (truncated BPTT inside it: the gradient reaches back 1 to K segments, as "
                  "between samples of --bptt-segments K); 0 = through the whole sample. Sets the "
                  "gradient's reach apart from the segments per sample and the rows per update"},
    )
    segment_length: int = II("task.segment_length")
    # fairseq's transformer_lm defaults these to 512 whatever the model width,
    # adding silent projections; follow the width instead
    decoder_input_dim: int = II("model.decoder_embed_dim")
    decoder_output_dim: int = II("model.decoder_embed_dim")


def kind_fields():
    """The config fields of every registered kind's own flags (``MemoryKind.OPTIONS``)."""
    fields, owner = [], {}
    for kind, cls in MEMORY_KINDS.items():
        for name, spec in cls.OPTIONS.items():
            if name in owner or hasattr(TarmBaseConfig, name):
                raise ValueError(f"memory kind {kind!r}: option {name!r} is taken (by {owner.get(name, 'tarm_lm')})")
            owner[name] = kind
            if not spec.choices and type(spec.default) not in (bool, int, float, str):
                raise ValueError(f"memory kind {kind!r}: option {name!r} needs a bool, int, float or str "
                                 f"default (or choices), got {spec.default!r}")
            kind_type = ChoiceEnum(list(spec.choices)) if spec.choices else type(spec.default)
            help = spec.help if kind == "tokens" else f"with --memory-kind {kind}: {spec.help}"
            fields.append((name, kind_type, field(default=spec.default, metadata={"help": help})))
    return fields


# the shared flags and every kind's own (kinds register when tarm_plugin.kinds is imported)
TarmLanguageModelConfig = make_dataclass("TarmLanguageModelConfig", kind_fields(), bases=(TarmBaseConfig,))
TarmLanguageModelConfig.__module__ = __name__


def dictionary_fingerprint(dictionary) -> int:
    """A stable 63-bit hash of a dictionary's symbols, to catch checkpoint/data mismatch."""
    digest = hashlib.md5("\n".join(dictionary.symbols).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@register_model("tarm_lm", dataclass=TarmLanguageModelConfig)
class TarmLanguageModel(TransformerLanguageModel):
    carries_memory = True  # generators and tasks ask this, not the class

    def __init__(self, decoder):
        super().__init__(decoder)
        args = decoder.args  # with the defaults of tarm_lm_architecture filled in
        # same scale as the token embeddings that the memory sits beside
        init_std = decoder.embed_scale * decoder.embed_dim ** -0.5
        try:
            self.memory = build_memory(
                str(args.memory_kind), args, dim=decoder.embed_dim, num_layers=len(decoder.layers),
                init_std=init_std,
                # the memory fed back segment after segment must not grow: normalise it
                # unless the layers already end in a norm (post-LN, or pre-LN + final norm)
                write_norm=not _output_is_normalised(decoder),
                dropout=_memory_dropout(args),
            )
        except ValueError as e:  # the memory checks its arguments: name them as flags
            # the token memory names its Python arguments; other kinds name their flags themselves
            raise TarmError(flag_names(str(e)) if str(args.memory_kind) == "tokens" else str(e)) from None
        self.default_segment_length = safe_getattr(args, "segment_length", None)
        self.checkpoint_segments = bool(safe_getattr(args, "checkpoint_segments", False))
        self.detach_every = int(safe_getattr(args, "memory_detach_every", 0))
        if self.detach_every < 0:
            raise TarmError(f"--memory-detach-every {self.detach_every}: must be >= 0 (0: through the whole sample)")
        self._masks = {}
        self.register_buffer("dictionary_hash", torch.tensor([-1, -1], dtype=torch.long))

    @classmethod
    def build_model(cls, args, task):
        tarm_lm_architecture(args)
        if args.decoder_embed_dim % args.decoder_attention_heads:
            raise TarmError(f"--decoder-embed-dim {args.decoder_embed_dim} is not divisible by "
                            f"--decoder-attention-heads {args.decoder_attention_heads}")
        check_task(task)
        model = super().build_model(args, task)
        d = task.source_dictionary
        model.dictionary_hash.copy_(torch.tensor([len(d), dictionary_fingerprint(d)]))
        return model

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        src_tokens,
        src_lengths=None,
        reset: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        segment_length: Optional[int] = None,
        features_only: bool = False,
        **unused,
    ):
        """``src_tokens`` [B, n*L] (the last segment may be shorter) -> (logits, extra).

        The first segment reads ``memory`` (E from an earlier call's
        ``extra["memory"]``) if given, else E_0. ``reset`` [B] (first segment)
        or [B, n] (per segment), bool: rows that read E_0 there (a stream or
        document starts). ``extra["memory"]`` is E after the last segment."""
        foreign = sorted(k for k, v in unused.items() if v is not None and k != "src_lengths")
        if foreign:  # e.g. a task batch naming its stream, with no store to pass its memory in
            raise TarmError(f"model inputs {', '.join(foreign)} are not the model's: build the model "
                            "with its task (task.build_model attaches the store that takes them)")
        bsz = src_tokens.size(0)
        L = self.check_segment_length(segment_length or self.default_segment_length or src_tokens.size(1))
        segments = src_tokens.split(L, dim=1)
        reset = segment_resets(reset, bsz, len(segments), src_tokens.device)
        read = self.read_memory(bsz, memory)
        # --checkpoint-segments: one segment at a time (m = 0 too), to recompute one at a time
        recompute = self.checkpoint_segments and self.training and torch.is_grad_enabled()
        step = self.checkpointed_segment_step if recompute else self.segment_step
        trace = self.memory.scan(segments, read, step, reset=reset, batch_independent=not recompute,
                                 detach_every=self.detach_every if self.training else 0)

        x = self.features(torch.cat(trace.outputs, dim=1))
        if self.training and torch.is_grad_enabled():
            # a batch whose gradient does not reach a memory parameter (one segment: the gate, a
            # learned rate, the writers shape only the next batch's read) gives it zeros, where
            # PyTorch's DDP (fairseq's default backend) would stop at the next step
            x = keep_in_graph(x, self.memory.parameters())
        return (x if features_only else self.logits(x)), {
            "memory": trace.averaged[-1],
            "read_memory": trace.read,
            "written_memory": trace.written,
            "ema_memory": trace.averaged,
            "memory_gates": trace.gates,
        }

    def check_segment_length(self, L: int) -> int:
        if L > self.max_positions():
            raise TarmError(f"--segment-length {L} exceeds the model's {self.max_positions()} positions "
                            "(set --tokens-per-sample / --max-target-positions at training)")
        return L

    def read_memory(self, bsz: int, memory: Optional[torch.Tensor]) -> torch.Tensor:
        """E_{t-1} for the first segment: ``memory`` if given, else E_0."""
        try:
            return self.memory.read(memory, None, bsz)
        except ValueError as e:  # not a state of this model's memory for bsz rows
            raise TarmError(str(e)) from None

    def checkpointed_segment_step(self, tokens: torch.Tensor, read: torch.Tensor):
        """:meth:`segment_step` keeping only its inputs and outputs for the backward
        pass, which recomputes the segment with the same dropout masks (the RNG
        state is restored) and so gives the same gradients (--checkpoint-segments)."""
        return checkpoint(self.segment_step, tokens, read, use_reentrant=False, preserve_rng_state=True)

    def segment_step(self, tokens: torch.Tensor, read: torch.Tensor):
        """One segment ``[before | tokens | after]`` through fairseq's layers: returns
        (token features, M_t). Without ``after`` positions (no memory, or one that
        carries nothing) M_t is E_{t-1}: nothing reads what they would write."""
        L = tokens.size(1)
        x = self.embed(tokens)
        r = w = 0
        if self.memory.num_tokens > 0:
            before, after = self.memory.segment_memory(read, x.dtype)
            r, w = before.size(1), after.size(1)
            x = torch.cat([before, x, after], dim=1)
        layer_outputs = []
        x = self.layers(x, self.attention_mask(r, L, x, w), read=read, outputs=layer_outputs)
        if not w:
            return x[:, r : r + L], read
        return x[:, r : r + L], self.memory.written(x[:, r + L :], [h[:, r + L :] for h in layer_outputs])

    def extend(self, tokens: torch.Tensor, memory: torch.Tensor, state: dict) -> torch.Tensor:
        """Incremental decoding inside one segment that reads ``memory`` (E_{t-1}).

        ``tokens`` [B, r] are the segment's tokens so far; ``state`` (a dict,
        empty at the segment's start) caches the keys and values of the read
        slots and of the tokens already seen. Returns the output features of
        the tokens not seen before (all of them on the first call, then the
        last one), as :meth:`segment_step` computes them. The segment's memory
        is written by a plain call once it is complete: ``model(tokens,
        memory=memory)``."""
        if state:
            return self.features(self.layers(self.embed(tokens, last_only=True), None, state, read=memory))
        n = tokens.size(1)
        x = self.embed(tokens)
        before = self.memory.segment_memory(memory, x.dtype)[0] if self.memory.num_tokens else x[:, :0]
        r = before.size(1)
        if r:  # the read slots first: they see only each other
            self.layers(before, None, state, read=memory)
        mask = torch.zeros(n, r + n, dtype=x.dtype, device=x.device)
        mask[:, r:] = self.attention_mask(0, n, x)  # causal, seeing every read slot
        return self.features(self.layers(x, mask, state, read=memory))

    def layers(self, x: torch.Tensor, mask: Optional[torch.Tensor], state: Optional[dict] = None,
               read: Optional[torch.Tensor] = None, outputs: Optional[list] = None) -> torch.Tensor:
        """x [B, T, C] through fairseq's layers (and final norm); with ``state``,
        appending to its cached keys and values (fairseq's incremental state).
        ``read``: the memory state this segment reads (each layer's input passes
        the memory's ``before_layer``); ``outputs`` collects each layer's output."""
        dec = self.decoder
        h = x.transpose(0, 1)  # T x B x C, as fairseq's layers want
        # --decoder-layerdrop: fairseq's LayerDropModuleList yields only the layers it keeps, which
        # would shift the memory's per-layer indices; here every layer keeps its index and a
        # dropped one passes h on unchanged (no random draw without layerdrop)
        drop = safe_getattr(dec.layers, "p", 0.0) if self.training else 0.0
        for i, layer in enumerate(torch.nn.ModuleList.__iter__(dec.layers)):
            if read is not None:
                h = self.memory.before_layer(i, h.transpose(0, 1), read).transpose(0, 1)
            if not (drop > 0 and float(torch.rand(())) < drop):
                h, _, _ = layer(h, incremental_state=state, self_attn_mask=mask)
            if outputs is not None:
                outputs.append(h.transpose(0, 1))
        if dec.layer_norm is not None:
            h = dec.layer_norm(h)
        return h.transpose(0, 1)

    def embed(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """fairseq's decoder input pipeline; positions restart at every segment.

        ``last_only``: embed just the last token, at its position in ``tokens``
        (one step of incremental decoding)."""
        dec = self.decoder
        x = dec.embed_scale * dec.embed_tokens(tokens[:, -1:] if last_only else tokens)
        if dec.quant_noise is not None:
            x = dec.quant_noise(x)
        if dec.project_in_dim is not None:
            x = dec.project_in_dim(x)
        if dec.embed_positions is not None:
            # with an incremental state fairseq returns the position of the last token
            x = x + dec.embed_positions(tokens, incremental_state={} if last_only else None)
        if dec.layernorm_embedding is not None:
            x = dec.layernorm_embedding(x)
        return dec.dropout_module(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The layers' outputs -> the decoder's output features (fairseq's project_out_dim)."""
        return self.decoder.project_out_dim(x) if self.decoder.project_out_dim is not None else x

    # ------------------------------------------------- inference interface
    # what generation, the hub and the scripts use: nothing reaches into the decoder

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Output features (``forward(features_only=True)``, :meth:`extend`) -> logits, or the
        adaptive softmax's input, for ``get_normalized_probs``, as fairseq's decoder does."""
        return self.decoder.output_layer(features)

    def initial_memory(self, bsz: int) -> torch.Tensor:
        """E_0 for ``bsz`` rows [B, m, d]: what a text's first segment reads."""
        return self.memory.initial_memory(bsz)

    @property
    def padding_idx(self) -> int:
        return self.decoder.padding_idx

    def attention_mask(self, m: int, L: int, like: torch.Tensor, writes: Optional[int] = None) -> torch.Tensor:
        """The mask over ``[read (m) | tokens (L) | write (writes, default m)]``."""
        writes = m if writes is None else writes
        key = (m, L, writes, like.device, like.dtype)
        if key not in self._masks:
            self._masks[key] = memory_attention_mask(m, L, like.device, like.dtype, num_write=writes)
        return self._masks[key]

    # --------------------------------------------------------------- inference
    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
        """A hub interface whose ``sample``/``score`` carry memory across segments."""
        from fairseq import hub_utils

        kwargs = sentencepiece_defaults(model_name_or_path, data_name_or_path, kwargs)
        x = hub_utils.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path,
                                      archive_map=cls.hub_models(), **kwargs)
        return TarmHubInterface(x["args"], x["task"], x["models"])

    def generate(self, inputs, max_new_tokens, **kwargs):
        """Continue token ids ``inputs`` [B, P] with memory (see tarm_plugin.generation)."""
        return generate(self, inputs, max_new_tokens, **kwargs)

    # ------------------------------------------------------------- checkpoints
    def upgrade_state_dict_named(self, state_dict, name):
        """Extra state of submodules this model does not have (what the task attaches,
        when the model is built without it) is dropped: the weights still load."""
        super().upgrade_state_dict_named(state_dict, name)
        mine = {k for k in self.state_dict() if k.endswith("_extra_state")}
        prefix = name + "." if name else ""
        for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("_extra_state")]:
            if key[len(prefix):] not in mine:
                del state_dict[key]

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        saved = state_dict.get("dictionary_hash")
        mine = self.dictionary_hash
        if saved is not None and int(mine[0]) >= 0 and not torch.equal(saved.cpu(), mine.cpu()):
            raise TarmError(
                f"checkpoint's dictionary ({int(saved[0])} types) does not match the "
                f"data's dict.txt ({int(mine[0])} types): evaluate with the data-bin "
                "the model was trained on"
            )
        for change in self.memory.match_state_dict(state_dict, prefix="memory."):
            logger.warning(f"older checkpoint: loading it with {change}")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


def load_checkpoint(path, data, batch_size=None):
    """(model in eval mode, task) of a tarm_lm checkpoint, as fairseq-eval-lm loads them
    (fairseq's checkpoint_utils; the task built from the checkpoint's settings, its memory
    store attached): the task reads ``data`` (a data-bin), in batches of ``batch_size``
    samples if given (else the checkpoint's). A TarmError names ``--path`` if the
    checkpoint holds another model."""
    from fairseq import checkpoint_utils

    overrides = {"data": data}
    if batch_size is not None:
        overrides.update(batch_size=batch_size, batch_size_valid=batch_size)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides)
    if not getattr(models[0], "carries_memory", False):
        raise TarmError(f"--path {path}: not a tarm_lm checkpoint")
    return models[0].eval(), task


def segment_resets(reset: Optional[torch.Tensor], bsz: int, n: int, device) -> Optional[torch.Tensor]:
    """``reset`` as [B, n] (bool): a [B] flag applies to the first segment only."""
    if reset is None:
        return None
    reset = reset.to(device=device, dtype=torch.bool)
    if reset.dim() == 2:
        if tuple(reset.shape) != (bsz, n):
            raise TarmError(f"reset of shape {tuple(reset.shape)} for {bsz} rows of {n} segments")
        return reset
    per_segment = torch.zeros(bsz, n, dtype=torch.bool, device=device)
    per_segment[:, 0] = reset
    return per_segment


def check_task(task) -> None:
    """Only a task that carries the memory from one batch to the next (it says so
    with ``carries_memory``) can train or evaluate tarm_lm; e.g. language_modeling,
    eval-lm's default task, would score nothing."""
    if not getattr(task, "carries_memory", False):
        raise TarmError(f"tarm_lm needs --task tarm_language_modeling (got the task "
                        f"{type(task).__name__}, which cannot carry its memory)")


MEMORY_FLAGS = {"num_tokens": "--num-memory-tokens", "alpha": "--memory-ema-alpha",
                "dropout": "--memory-dropout", "learn_alpha": "--memory-ema-learned",
                "gate": "--memory-gate", "write_input": "--memory-write-input"}


def flag_names(message: str) -> str:
    """RecurrentMemory's argument names in ``message`` as the command-line flags that set them
    (only its messages: another kind's words are its own)."""
    # not inside a flag already named (--memory-ema-alpha holds "alpha")
    return re.sub(r"(?<![-\w])(" + "|".join(MEMORY_FLAGS) + r")\b", lambda m: MEMORY_FLAGS[m.group(1)], message)


def _output_is_normalised(decoder) -> bool:
    """Post-LN layers end in a LayerNorm; pre-LN ones only with a final norm."""
    return not decoder.cfg.decoder.normalize_before or decoder.layer_norm is not None


def _memory_dropout(args) -> float:
    p = safe_getattr(args, "memory_dropout", None)
    return float(safe_getattr(args, "dropout", 0.0) if p is None else p)


def tarm_lm_architecture(args):
    """Defaults of ``--arch tarm_lm`` (fairseq registers that name with the model)."""
    args.memory_kind = safe_getattr(args, "memory_kind", "tokens")
    args.num_memory_tokens = safe_getattr(args, "num_memory_tokens", 10)
    for cls in MEMORY_KINDS.values():
        for name, spec in cls.OPTIONS.items():
            setattr(args, name, safe_getattr(args, name, spec.default))
    args.memory_dropout = safe_getattr(args, "memory_dropout", None)
    args.checkpoint_segments = safe_getattr(args, "checkpoint_segments", False)
    args.memory_detach_every = safe_getattr(args, "memory_detach_every", 0)
    base_lm_architecture(args)


@register_model_architecture("tarm_lm", "tarm_lm_wiki103")
def tarm_lm_wiki103(args):
    """The paper's WikiText-103 model: 16 layers, 10 heads, 410 dim, 2100 FFN,
    adaptive input and softmax, tied, over the 267,735-word vocabulary."""
    args.decoder_layers = safe_getattr(args, "decoder_layers", 16)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 10)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 410)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 2100)
    args.dropout = safe_getattr(args, "dropout", 0.1)
    args.adaptive_input_factor = safe_getattr(args, "adaptive_input_factor", 4)
    args.adaptive_softmax_factor = safe_getattr(args, "adaptive_softmax_factor", 4)
    # fairseq's Baevski & Auli adaptive-input recipe (cutoffs 20000,60000, tied)
    transformer_lm_baevski_wiki103(args)
    tarm_lm_architecture(args)


@register_model_architecture("tarm_lm", "tarm_lm_quadratic")
def tarm_lm_quadratic(args):
    """The step-by-step quadratic-equations model: 6 layers, 128 dim, 256 FFN, 30 memory slots.

    The paper's 6 heads do not divide fairseq's 128-wide attention; 8 heads of 16 keep the width."""
    args.decoder_layers = safe_getattr(args, "decoder_layers", 6)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 8)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 128)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 256)
    args.num_memory_tokens = safe_getattr(args, "num_memory_tokens", 30)
    tarm_lm_architecture(args)
