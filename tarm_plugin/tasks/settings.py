"""The settings of ``tarm_language_modeling``: its config (fairseq dataclass fields, so
every one is a command-line flag and a hydra key), their one-line checks, and which
of them a checkpoint brings to fairseq-eval-lm and the hub (``TRAINED_WITH``: a model is
evaluated as it was trained unless the command line says otherwise)."""

import logging
import os
import sys
import zipfile
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

import torch
from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks.language_modeling import LanguageModelingConfig
from omegaconf import II

from ..errors import TarmError

logger = logging.getLogger(__name__)

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
                  "nothing is carried from one segment to the next: how much a model relies on the carry "
                  "(off its training distribution; --eval-memory-horizon 0 is the same, "
                  "--memory-ema-alpha 0 trains such a model)"},
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
                  "--segment-length: 'far' tokens are then among those a model without memory cannot "
                  "see, as are local ones from the previous segment)"},
    )
    eval_document_losses: Optional[str] = field(
        default=None,
        metadata={"help": "fairseq-eval-lm with --sample-break-mode doc: write the loss per document, "
                  "depth and token class to this JSON file (for intervals by a bootstrap over documents)"},
    )
    max_tokens: Optional[int] = II("dataset.max_tokens")
    max_tokens_valid: Optional[int] = II("dataset.max_tokens_valid")  # validation batches from it, if given
    train_subset: str = II("dataset.train_subset")
    checkpoint_path: Optional[str] = II("common_eval.path")  # fairseq-eval-lm's --path
    save_dir: str = II("checkpoint.save_dir")  # fairseq-train's rank 0 locks it (tarm_plugin/savedir.py)


# task settings a checkpoint is evaluated with unless the command line says otherwise
TRAINED_WITH = ("segment_length", "sample_break_mode", "doc_separator", "loss_start_segment",
                "loss_last_segments")


# the flags that make eval-lm log its tables by depth (one SegmentPerplexity for all of them)
EVAL_TABLES = ("eval_segment_ppl", "eval_token_classes", "eval_document_losses")


def check_args(args) -> None:
    """One-line errors for settings that are wrong whatever the data (fairseq-train,
    fairseq-eval-lm and the hub all set the task up through here)."""
    if args.segment_length is None or args.segment_length < 1:
        raise TarmError(f"--segment-length must be >= 1, got {args.segment_length}")
    if args.bptt_segments is None or args.bptt_segments < 1:
        raise TarmError(f"--bptt-segments must be >= 1, got {args.bptt_segments}")
    for name in ("batch_size", "batch_size_valid", "max_tokens", "max_tokens_valid"):
        value = cfg_get(args, name)
        if value is not None and value < 1:
            raise TarmError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if str(args.sample_break_mode) not in SAMPLE_BREAK_MODES:
        raise TarmError(f"--sample-break-mode {args.sample_break_mode} is not supported: use none "
                        "(contiguous streams), eos (one sample per line) or doc (documents)")
    if (cfg_get(args, "eval_memory_horizon") or 0) < 0:
        raise TarmError(f"--eval-memory-horizon must be >= 0 (segments), got {args.eval_memory_horizon}")
    window = cfg_get(args, "eval_local_window")
    if window is not None and window < 1:
        raise TarmError(f"--eval-local-window must be >= 1 (tokens), got {window}")
    if window is not None and not cfg_get(args, "eval_token_classes"):
        raise TarmError("--eval-local-window needs --eval-token-classes")
    if (cfg_get(args, "eval_depth_unit") or 0) < 0:
        raise TarmError(f"--eval-depth-unit must be >= 0 (0 = the segment length), got {args.eval_depth_unit}")
    if cfg_get(args, "eval_depth_unit") and not any(cfg_get(args, t) for t in EVAL_TABLES):
        raise TarmError("--eval-depth-unit needs --eval-segment-ppl, --eval-token-classes or "
                        "--eval-document-losses (it sets the depth unit of their tables)")
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
    check_checkpoint_files(cfg_get(args, "checkpoint_path"))


def break_mode(args) -> str:
    """'none', 'eos' or 'doc' (fairseq's name complete_doc means doc)."""
    mode = str(plain(args.sample_break_mode))
    return "doc" if mode == "complete_doc" else mode

def check_mode_settings(args) -> str:
    """The settings that depend on --sample-break-mode, checked once they are final
    (eval-lm and the hub take them from the checkpoint); returns the mode."""
    a, mode = args, break_mode(args)
    for name in ("loss_start_segment", "loss_last_segments", "eval_exact_match_segments"):
        flag, value = "--" + name.replace("_", "-"), getattr(a, name)
        if value < 0:
            raise TarmError(f"{flag} must be >= 0 (0 = off), got {value}")
        if value and mode != "eos":
            raise TarmError(f"{flag} needs --sample-break-mode eos (it names segments of each sample; "
                            f"--sample-break-mode {mode} has no samples)")
    if cfg_get(a, "eval_depth_unit") and mode == "eos":
        raise TarmError("--eval-depth-unit needs --sample-break-mode doc or none (with eos the depth is "
                        "the segment's index within its sample)")
    if cfg_get(a, "doc_separator") and mode != "doc":
        raise TarmError(f"--doc-separator needs --sample-break-mode doc (got {mode})")
    if cfg_get(a, "eval_token_classes") and (a.loss_start_segment or a.loss_last_segments):
        # the classes come from the scored targets: a token read only as context would be missed
        raise TarmError("--eval-token-classes cannot class the context that --loss-start-segment or "
                        "--loss-last-segments leave unscored (given or from the checkpoint): drop the flag, "
                        "or pass --loss-start-segment 0 --loss-last-segments 0")
    return mode


def untrained_memory(model, args, mode: str) -> Optional[str]:
    """With one segment per row (``--bptt-segments 1``, not ``eos``) or ``--memory-detach-every
    1``, the memory's parameters that shape only what later segments read (the kind's
    ``carry_only_parameters``) never get a gradient: a warning naming them, or None."""
    one = mode != "eos" and args.bptt_segments == 1
    memory = getattr(model, "memory", None)
    if not (one or getattr(model, "detach_every", 0) == 1) or memory is None:
        return None
    dead = memory.carry_only_parameters()
    if not dead:
        return None
    cut, fix = (("--bptt-segments 1", "--bptt-segments 2 or more") if one
                else ("--memory-detach-every 1", "--memory-detach-every 0 or 2 or more"))
    return (f"the memory's {', '.join(dead)} will not learn: they shape only what later segments read, "
            f"and {cut} cuts the gradient before them (train them with {fix})")


def use_trained_settings(args, trained) -> None:
    """Evaluate as trained: each setting of TRAINED_WITH that the user did not
    give is taken from the checkpoint; one that was given and differs is used,
    with one warning naming both values."""
    for name in TRAINED_WITH:
        if name not in trained:
            continue
        saved, mine = trained[name], plain(getattr(args, name))
        mode = break_mode(args)  # the mode may have just come from the checkpoint
        if name in ("loss_start_segment", "loss_last_segments") and mode != "eos":
            continue  # only meaningful per sample; the mode given overrides the checkpoint's
        if name == "doc_separator" and mode != "doc":
            continue
        if saved == mine:
            continue
        flag = "--" + name.replace("_", "-")
        if given_by_user(args, name):
            logger.warning(f"{flag} {mine} given, the checkpoint was trained with {flag} {saved}: "
                           f"using {mine}")
        else:
            logger.info(f"{flag} {saved} (from the checkpoint)")
            setattr(args, name, saved)


def cfg_get(cfg, name):
    """A task config field, or None for a config (e.g. a checkpoint's) without it."""
    try:
        return getattr(cfg, name, None)
    except Exception:  # an interpolation the config cannot resolve
        return None


def plain(value):
    return str(value) if isinstance(value, Enum) else value


def given_by_user(cfg, name) -> bool:
    """Was this task setting given by the user (command line, config file, code)?

    fairseq's parsers fill in defaults without recording which flags were typed.
    A value other than the dataclass default was given. A value equal to it was
    given only if its flag is on the command line: fairseq's parsers have
    allow_abbrev=False, so it is spelled out, as ``--segment-length 64``,
    ``--segment-length=64`` or hydra's ``task.segment_length=64``."""
    default = TarmLanguageModelingConfig.__dataclass_fields__[name].default
    if plain(getattr(cfg, name)) != plain(default):
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
