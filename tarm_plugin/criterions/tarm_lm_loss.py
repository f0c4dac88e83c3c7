"""``tarm_lm_loss``: next-token cross-entropy over real tokens only.

Memory positions never reach the loss (the model returns token positions
only) and padding (a stream's tail) is ignored. Works with a full softmax or
fairseq's adaptive softmax. Besides ``loss``/``ppl`` (base 2, as fairseq logs
them) it logs ``loss_seg{i}``: the training loss of the i-th segment of each
k-segment sample, which shows whether the memory helps later segments. It
computes losses only: the validation exact match of
``--eval-exact-match-segments`` (decoding) is the task's ``valid_step``.

Memory diagnostics (see :func:`tarm_plugin.memory.memory_stats`), averaged
over batches: ``mem_norm`` (slot norm of the memory read), ``mem_dM`` and
``mem_dE`` (relative change per segment of the written memory M_t and of the
averaged memory E_t), with a learned rate ``mem_rate_mean/min/max``, and with
``--memory-gate`` ``mem_gate_mean/min/max`` (the gate values g_t of the batch; the
associative memory logs its write strengths there).
"""

import math
from dataclasses import dataclass

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.distributed import utils as dist_utils
from omegaconf import II

from ..errors import TarmError
from ..memory import memory_stats
from ..scoring import loss_by, token_nll


@dataclass
class TarmLmLossConfig(FairseqDataclass):
    ddp_backend: str = II("distributed_training.ddp_backend")
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("tarm_lm_loss", dataclass=TarmLmLossConfig)
class TarmLmLoss(FairseqCriterion):
    def __init__(self, task, ddp_backend="legacy_ddp", sentence_avg=False):
        super().__init__(task)
        self.ddp_backend, self.sentence_avg = ddp_backend, sentence_avg

    def forward(self, model, sample, reduce=True):
        self._check_ddp(model)
        net_output = model(**sample["net_input"])
        target = sample["target"]
        nll = token_nll(model, net_output, target, self.padding_idx)
        real = target.ne(self.padding_idx)
        ntokens = int(real.sum())
        total_nll = nll.sum()
        loss = total_nll if reduce else nll
        logging_output = {
            "loss": total_nll.data,
            "ntokens": ntokens,
            "nsentences": target.size(0),
            "sample_size": target.size(0) if self.sentence_avg else ntokens,  # --sentence-avg: per row
        }
        logging_output.update(self.memory_logs(model, net_output))
        L = sample["net_input"].get("segment_length") or target.size(1)
        if model.training:  # the loss of each sample's i-th segment
            T = target.size(1)
            segment = (torch.arange(T, device=target.device) // L).expand_as(target)
            n_seg = max(int(sample.get("segments") or 0), -(-T // L))  # the same on every rank
            sums, counts = loss_by(segment[real], nll[real].detach(), minlength=n_seg)
            for i, (seg_loss, seg_tokens) in enumerate(zip(sums, counts)):
                logging_output[f"seg{i}_loss"] = seg_loss
                logging_output[f"seg{i}_ntokens"] = seg_tokens
        return loss, logging_output["sample_size"], logging_output

    @staticmethod
    def memory_logs(model, net_output) -> dict:
        """Per-batch memory statistics, each with a count ``<key>_n`` so they sum across workers."""
        memory = getattr(model, "memory", None)
        extra = net_output[1] if isinstance(net_output, tuple) and len(net_output) > 1 else None
        if memory is None or memory.num_tokens == 0 or not isinstance(extra, dict) \
                or not extra.get("ema_memory"):
            return {}
        stats = memory_stats(extra["read_memory"], extra["written_memory"], extra["ema_memory"])
        if memory.learned_rate:
            rate = memory.rate().detach().float()
            stats.update(mem_rate_mean=rate.mean(), mem_rate_min=rate.min(), mem_rate_max=rate.max())
        if extra.get("memory_gates"):
            gate = torch.stack(extra["memory_gates"]).float()  # [n, B, m, d], detached
            stats.update(mem_gate_mean=gate.mean(), mem_gate_min=gate.min(), mem_gate_max=gate.max())
        out = {}
        for key, value in stats.items():
            out[key] = value
            out[key + "_n"] = 1
        return out

    def _check_ddp(self, model):
        if getattr(self, "_ddp_checked", False):
            return
        self._ddp_checked = True
        adaptive = getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is not None
        if (adaptive and self.ddp_backend in {"c10d", "pytorch_ddp"}
                and dist_utils.get_data_parallel_world_size() > 1):
            raise TarmError("adaptive softmax leaves unused tail clusters in some batches, which "
                            "PyTorch DDP rejects: add --ddp-backend legacy_ddp")

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        ntokens = total("ntokens")
        loss = total("loss")
        metrics.log_scalar("loss", loss / max(ntokens, 1) / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["loss"].avg))
        for key in ("mem_norm", "mem_dM", "mem_dE", "mem_rate_mean", "mem_rate_min", "mem_rate_max",
                    "mem_gate_mean", "mem_gate_min", "mem_gate_max"):
            n = total(key + "_n")
            if n:
                metrics.log_scalar(key, total(key) / n, n, round=4)
        i = 0
        while any(f"seg{i}_ntokens" in log for log in logging_outputs):
            n = total(f"seg{i}_ntokens")
            if n > 0:
                metrics.log_scalar(f"loss_seg{i}", total(f"seg{i}_loss") / n / math.log(2), n, round=3)
            i += 1

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
