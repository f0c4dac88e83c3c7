"""Text generation and long-document scoring with memory.

Generation runs the prompt's full segments normally (each writes memory),
then decodes incrementally inside the current segment: the read memory and
the tokens so far are cached in fairseq's incremental state, so each new
token costs one position. When a segment fills up it is run once more in
full to write its memory (M_t, then E_t), and the next segment starts
reading E_t.

``TarmLanguageModel.from_pretrained(...)`` returns :class:`TarmHubInterface`,
whose ``sample``/``generate``/``score`` use this, and the task's
``build_generator`` returns :class:`TarmSequenceGenerator`, which
``fairseq-interactive`` and ``fairseq-generate`` call (fairseq's own
SequenceGenerator would call the bare decoder and silently drop the memory).
"""

import os
from typing import Dict, List, Optional

import torch
from fairseq.hub_utils import GeneratorHubInterface

from .errors import TarmError


def _pick(logits: torch.Tensor, sampling: bool, temperature: float, topk: int) -> torch.Tensor:
    if not sampling:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / max(temperature, 1e-6)
    if topk > 0:
        kth = logits.topk(topk, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1)


def _log_probs(model, hidden: torch.Tensor) -> torch.Tensor:
    return model.get_normalized_probs((model.logits(hidden), {}), log_probs=True).float()


@torch.no_grad()
def generate_with_scores(model, inputs: torch.Tensor, max_new_tokens: int, segment_length: Optional[int] = None,
                         sampling: bool = False, temperature: float = 1.0, topk: int = 0,
                         stop: Optional[int] = None, prompt_scores: bool = False):
    """:func:`generate`, also returning log-probabilities.

    Returns ``(new [B, N], new_lprobs [B, N], prompt_lprobs)``: ``prompt_lprobs``
    [B, P-1] scores ``inputs[:, 1:]`` (None unless ``prompt_scores``).
    ``stop``: a token id (``</s>``); decoding ends early once every row has
    produced it, so N may be below ``max_new_tokens`` (tokens after a row's
    own stop token are not meaningful). Memory starts at E_0.

    The prompt's full segments are one model call (which writes their
    memory); the rest is decoded token by token inside the current segment
    (``model.extend``), and a segment that fills up is run once more by a model
    call that writes its memory.
    """
    model.eval()
    L = segment_length or model.default_segment_length
    B = inputs.size(0)
    if inputs.size(1) < 1:
        raise ValueError("generation needs at least one input token (the stream starts with </s>)")
    n_full = (inputs.size(1) - 1) // L  # keep >= 1 token for the current segment
    read = model.initial_memory(B)
    prompt_lp = []
    if n_full:
        hidden, extra = model(inputs[:, : n_full * L], memory=read, segment_length=L, features_only=True)
        read = extra["memory"]
        if prompt_scores:
            prompt_lp.append(_target_scores(model, hidden, inputs[:, 1 : n_full * L + 1]))
    seg = inputs[:, n_full * L :]
    out, out_lp = [], []
    stopped = torch.zeros(B, 1, dtype=torch.bool, device=inputs.device)
    pad = model.padding_idx

    def emit(hidden):
        lp = _log_probs(model, hidden[:, -1:])[:, 0]
        # never <pad>, as in fairseq's SequenceGenerator: a generated pad would
        # not be a token at all when the text is read back (positions skip it)
        tok = _pick(lp.index_fill(-1, lp.new_tensor([pad], dtype=torch.long), float("-inf")),
                    sampling, temperature, topk)
        out.append(tok)
        out_lp.append(lp.gather(-1, tok))
        if stop is not None:
            stopped.logical_or_(tok.eq(stop))
        return tok, len(out) == max_new_tokens or bool(stopped.all())

    while True:
        state: Dict = {}  # a fresh segment reading ``read``
        hidden = model.extend(seg, read, state)
        if prompt_scores and not out:
            prompt_lp.append(_target_scores(model, hidden[:, :-1], inputs[:, n_full * L + 1 :]))
        if max_new_tokens <= 0:
            break
        tok, done = emit(hidden)
        while not done and seg.size(1) < L:
            seg = torch.cat([seg, tok], dim=1)
            tok, done = emit(model.extend(seg, read, state))
        if done:
            break
        # segment full: write its memory, start the next one with this token
        read = model(seg, memory=read, segment_length=L, features_only=True)[1]["memory"]
        seg = tok
    empty = inputs.new_zeros(B, 0)
    new = torch.cat(out, dim=1) if out else empty
    new_lp = torch.cat(out_lp, dim=1) if out else empty.float()
    if not prompt_scores:
        return new, new_lp, None
    return new, new_lp, torch.cat(prompt_lp, dim=1)


def _target_scores(model, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``targets`` [B, T] after output ``features`` [B, T, C]."""
    lp = model.get_normalized_probs((model.logits(features), {}), log_probs=True).float()
    return lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def generate(model, inputs: torch.Tensor, max_new_tokens: int, segment_length: Optional[int] = None,
             sampling: bool = False, temperature: float = 1.0, topk: int = 0,
             stop: Optional[int] = None) -> torch.Tensor:
    """Continue ``inputs`` [B, P] (the model's input stream, e.g. ``</s>`` + prompt).

    Returns the ``max_new_tokens`` new tokens [B, N]; new token i is the
    prediction after input ``P + i - 1``. Memory starts at E_0.
    """
    return generate_with_scores(model, inputs, max_new_tokens, segment_length, sampling,
                                temperature, topk, stop)[0]


@torch.no_grad()
def score(model, inputs: torch.Tensor, targets: torch.Tensor, segment_length: Optional[int] = None,
          segments_per_call: int = 64) -> torch.Tensor:
    """Log-probability of each target token [B, T], memory carried over the whole
    document (from E_0), ``segments_per_call`` segments per model call."""
    model.eval()
    L = segment_length or model.default_segment_length
    memory, scores = None, []
    chunk = L * segments_per_call  # the model walks the segments; chunks bound the logits' size
    for x, y in zip(inputs.split(chunk, dim=1), targets.split(chunk, dim=1)):
        out, extra = model(x, memory=memory, segment_length=L)
        memory = extra["memory"]
        lprobs = model.get_normalized_probs((out, {}), log_probs=True, sample={"target": y})
        scores.append(lprobs.float().gather(-1, y.unsqueeze(-1)).squeeze(-1))
    return torch.cat(scores, dim=1)


def sentencepiece_defaults(model_name_or_path: str, data_name_or_path: str, kwargs: Dict) -> Dict:
    """``bpe="sentencepiece"`` with the data-bin's ``spm.model`` (written by
    scripts/prepare_text.py) unless the caller chose a bpe."""
    data = data_name_or_path
    if data.startswith("."):  # fairseq's hub_utils reads "." paths relative to the model directory
        data = os.path.join(model_name_or_path, data)
    spm_model = os.path.join(data, "spm.model")
    if "bpe" not in kwargs and os.path.isfile(spm_model):
        kwargs = dict(kwargs, bpe="sentencepiece", sentencepiece_model=spm_model)
    return kwargs


class TarmHubInterface(GeneratorHubInterface):
    """``from_pretrained(...)`` for tarm: sample and score with memory."""

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        eos = torch.tensor([self.task.source_dictionary.eos()], dtype=tokens.dtype)
        # fairseq's encode() ends a sentence with </s>; the stream's first input is </s>
        body = tokens[:-1] if len(tokens) and tokens[-1] == eos[0] else tokens
        return torch.cat([eos, body]).unsqueeze(0).to(self.device)

    def generate(self, tokenized_sentences: List[torch.LongTensor], beam: int = 1, verbose: bool = False,
                 max_new_tokens: int = 50, sampling: bool = False, temperature: float = 1.0,
                 topk: int = 0, stop_at_eos: bool = False, skip_invalid_size_inputs: bool = False,
                 inference_step_args=None, prefix_allowed_tokens_fn=None, **fairseq_names):
        """``stop_at_eos``: end at the first ``</s>`` (what fairseq-interactive does). As
        fairseq's: one 1-D tensor gives that sentence's hypotheses; ``sampling_topk`` is
        ``topk``, ``max_len_b`` is ``max_new_tokens``; anything else is refused."""
        if torch.is_tensor(tokenized_sentences) and tokenized_sentences.dim() == 1:
            return self.generate([tokenized_sentences], beam, verbose, max_new_tokens, sampling, temperature, topk,
                                 stop_at_eos, inference_step_args=inference_step_args,
                                 prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, **fairseq_names)[0]
        topk = fairseq_names.pop("sampling_topk", topk)
        max_new_tokens = fairseq_names.pop("max_len_b", max_new_tokens)
        unknown = sorted(k for k, v in fairseq_names.items() if v is not None) + (
            ["inference_step_args"] if inference_step_args else []) + (
            ["prefix_allowed_tokens_fn"] if prefix_allowed_tokens_fn is not None else [])
        if unknown:
            raise ValueError(f"tarm generation does not take {', '.join(unknown)}")
        if beam != 1:
            raise ValueError("tarm generation is greedy or sampled (beam=1)")
        model = self.models[0]
        eos = self.task.source_dictionary.eos()
        results = []
        for tokens in tokenized_sentences:
            inputs = self._inputs(tokens)
            new = generate(model, inputs, max_new_tokens, self.task.args.segment_length, sampling=sampling,
                           temperature=temperature, topk=max(int(topk or 0), 0),
                           stop=eos if stop_at_eos else None)[0]
            if stop_at_eos:
                new = new[: _until_stop(new, eos)]
            results.append([{"tokens": torch.cat([inputs[0, 1:], new]).cpu()}])
        return results

    def encode_document(self, text: str) -> torch.Tensor:
        """Token ids of a text as fairseq-preprocess binarizes it: each line
        encoded and ended by ``</s>`` (a final newline ends the last line)."""
        lines = text.split("\n")
        if len(lines) > 1 and lines[-1] == "":
            lines = lines[:-1]
        return torch.cat([self.encode(line) for line in lines])

    def score(self, sentences: List[str], **unused):
        """Per-token log-probabilities of each (long) text, memory carried across its
        segments: a document of several lines scores as the same lines of a data-bin
        (each line's ``</s>`` included)."""
        single = isinstance(sentences, str)
        out = []
        for text in [sentences] if single else sentences:
            tokens = self.encode_document(text)
            inputs = self._inputs(tokens)
            targets = torch.cat([inputs[0, 1:], tokens[-1:].to(self.device)]).unsqueeze(0)
            lp = score(self.models[0], inputs, targets, self.task.args.segment_length)[0]
            out.append({"tokens": targets[0].cpu(), "positional_scores": lp.cpu()})
        return out[0] if single else out


def _until_stop(tokens: torch.Tensor, stop: int) -> int:
    """Length of ``tokens`` [N] up to and including the first ``stop`` token."""
    hits = tokens.eq(stop).nonzero()
    return int(hits[0]) + 1 if len(hits) else tokens.numel()


class TarmSequenceGenerator:
    """What ``task.build_generator`` returns for tarm models, so that
    ``fairseq-interactive`` and ``fairseq-generate`` carry memory.

    Same contract as fairseq's ``SequenceGenerator.generate(models, sample,
    prefix_tokens=..., bos_token=...)`` for a language model: each row's
    prompt is ``bos_token`` + its ``prefix_tokens`` (fairseq's LM
    ``inference_step`` puts the input line there); the prompt is read segment
    by segment into memory (:func:`generate_with_scores`), then up to
    ``--max-len-a * prompt + --max-len-b`` new tokens are written, ending at the
    first ``</s>``. (fairseq counts the prompt in that length; with memory a
    prompt may be far longer than the model's positions, so tarm does not.)
    Greedy with ``--beam 1``; ``--sampling --beam N --nbest N`` gives N
    samples. Each hypothesis: ``tokens`` = prompt + new tokens,
    ``positional_scores`` (natural log) for all of them, ``score`` = their
    mean (``--lenpen`` 1).
    """

    def __init__(self, model, tgt_dict, max_len_a: float = 0.0, max_len_b: int = 200, sampling: bool = False,
                 n_samples: int = 1, topk: int = 0, temperature: float = 1.0, lenpen: float = 1.0,
                 sample_break_mode: str = "none", segment_length: Optional[int] = None):
        self.model, self.tgt_dict = model, tgt_dict
        self.pad, self.eos = tgt_dict.pad(), tgt_dict.eos()
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        self.sampling, self.n_samples, self.topk, self.temperature = sampling, n_samples, topk, temperature
        self.lenpen = lenpen
        self.sample_break_mode = sample_break_mode
        self.segment_length = segment_length  # the task's (given, or the checkpoint's); None: the model's
        self.symbols_to_strip_from_output = {self.eos}  # what fairseq-interactive strips from H- lines

    @staticmethod
    def supports(models, cfg=None) -> bool:
        """Models that declare ``carries_memory`` (tarm_lm) need this generator; not
        ``--score-reference``, which fairseq's scorer does through the task's memory store."""
        if getattr(cfg, "score_reference", False):
            return False
        return len(models) > 0 and all(getattr(m, "carries_memory", False) for m in models)

    @classmethod
    def build(cls, models, tgt_dict, cfg, sample_break_mode: str = "none", segment_length: Optional[int] = None,
              **unused):
        """From fairseq's generation config (``--beam``, ``--sampling``, ``--max-len-b``, ...)."""
        if len(models) != 1:
            raise TarmError(f"--path: tarm generation takes one checkpoint, got {len(models)} (no ensembles)")
        get = lambda name, default: getattr(cfg, name, default)  # noqa: E731
        sampling, beam = bool(get("sampling", False)), int(get("beam", 1) or 1)
        if beam != 1 and not sampling:
            raise TarmError(f"--beam {beam}: tarm generation is greedy or sampled, not beam search; "
                            "pass --beam 1, or --sampling --beam N --nbest N for N samples")
        unsupported = {"--sampling-topp": (get("sampling_topp", -1.0) or -1) > 0,
                       "--min-len": (get("min_len", 1) or 1) > 1,
                       "--no-repeat-ngram-size": (get("no_repeat_ngram_size", 0) or 0) > 0,
                       "--constraints": bool(get("constraints", None))}
        for flag, used in unsupported.items():
            if used:
                raise TarmError(f"{flag} is not supported by tarm generation; leave it out")
        topk = int(get("sampling_topk", -1) or -1)
        return cls(models[0], tgt_dict, max_len_a=float(get("max_len_a", 0) or 0),
                   max_len_b=int(get("max_len_b", 200)), sampling=sampling, n_samples=beam if sampling else 1,
                   topk=max(topk, 0), temperature=float(get("temperature", 1.0)), lenpen=float(get("lenpen", 1.0)),
                   sample_break_mode=sample_break_mode, segment_length=segment_length)

    @torch.no_grad()
    def generate(self, models, sample, prefix_tokens=None, bos_token=None, constraints=None, **unused):
        net_input = sample["net_input"]
        if net_input.get("memory_key") is not None and self.sample_break_mode != "eos":
            # a batch of the task's own contiguous streams: rows are mid-stream
            # segments, not prompts, and their earlier text is not in them
            raise TarmError("fairseq-generate on contiguous streams has no prompts: use "
                            "--sample-break-mode eos (each line a prompt), fairseq-interactive, "
                            "or scripts/continuation_bleu.py")
        if constraints is not None:
            raise TarmError("--constraints is not supported by tarm generation; leave it out")
        src = net_input["src_tokens"]
        bos = self.eos if bos_token is None else bos_token
        if prefix_tokens is not None and src.size(1) > 1:
            # fairseq-generate --prefix-size takes the prompt from the targets, where
            # --loss-start-segment / --loss-last-segments leave the context as padding:
            # those tokens are the next inputs (the target is the input shifted by one)
            n = min(prefix_tokens.size(1), src.size(1) - 1)
            context = prefix_tokens[:, :n].eq(self.pad) & src[:, 1:n + 1].ne(self.pad)
            prefix_tokens = prefix_tokens.clone()
            prefix_tokens[:, :n] = torch.where(context, src[:, 1:n + 1], prefix_tokens[:, :n])
        results = []
        for b in range(src.size(0)):
            prefix = prefix_tokens[b] if prefix_tokens is not None else src.new_zeros(0)
            prefix = prefix[prefix.ne(self.pad)]
            inputs = torch.cat([prefix.new_tensor([bos]), prefix]).unsqueeze(0).repeat(self.n_samples, 1)
            n_new = int(self.max_len_a * len(prefix) + self.max_len_b)
            new, new_lp, prompt_lp = generate_with_scores(
                self.model, inputs, n_new, self.segment_length, sampling=self.sampling, temperature=self.temperature,
                topk=self.topk, stop=self.eos, prompt_scores=True)
            hypos = []
            for i in range(self.n_samples):
                n = _until_stop(new[i], self.eos)
                tokens = torch.cat([prefix, new[i, :n]])
                scores = torch.cat([prompt_lp[i], new_lp[i, :n]])
                score = float(scores.sum()) / max(len(tokens), 1) ** self.lenpen
                hypos.append({"tokens": tokens, "score": score, "positional_scores": scores,
                              "alignment": None, "attention": None})
            results.append(sorted(hypos, key=lambda h: -float(h["score"])))
        return results
