"""Long-range recall's evaluation (scripts/recall.py): one teacher-forced forward per test
batch of a checkpoint, memory carried across each sample's segments, scored only at the
value positions (``recall_data.row_answer_positions``): per-fact accuracy (the value is the
argmax), all facts right, and the probability of the right value."""

from lab import load_checkpoint
from recall_data import row_answer_positions


def score_answers(logits, target, positions):
    """(right [B, P] bool, p_right [B, P]) at the answer positions of a batch: a list (the
    same in every row) or a [B, P] tensor (each row's own)."""
    import torch

    pos = torch.as_tensor(positions, dtype=torch.long).expand(target.size(0), -1)
    answers = target.gather(1, pos)
    lprobs = logits.gather(1, pos.unsqueeze(-1).expand(-1, -1, logits.size(-1))).float().log_softmax(dim=-1)
    right = lprobs.argmax(dim=-1).eq(answers)
    p_right = lprobs.gather(-1, answers.unsqueeze(-1)).squeeze(-1).exp()
    return right, p_right


def evaluate(checkpoint, data_dir, splits, n_facts, args):
    """{test D (a label of ``splits``): {fact_acc, all_acc, p_right, samples}} for one checkpoint.
    The answer positions are each row's own (from its length), so a split may mix distances."""
    import torch

    torch.set_num_threads(1)
    model, task = load_checkpoint(checkpoint, data_dir, args.eval_batch_size)
    d = task.target_dictionary
    value_ids = {d.index(f"v{i}") for i in range(args.values)}
    out = {}
    for distance, split in splits.items():
        task.load_dataset(split)
        rights, probs = [], []
        with torch.no_grad():
            for sample in task.get_batch_iterator(task.dataset(split)).next_epoch_itr(shuffle=False):
                target = sample["target"]
                positions = row_answer_positions(sample["net_input"]["src_lengths"], n_facts)
                if not set(target.gather(1, positions).unique().tolist()) <= value_ids:
                    raise RuntimeError(f"{data_dir} {split}: answer positions do not hold values")
                logits, _ = model(**sample["net_input"])
                right, p = score_answers(logits, target, positions)
                rights.append(right)
                probs.append(p)
        right, p = torch.cat(rights), torch.cat(probs)
        out[distance] = {"fact_acc": right.float().mean().item(), "all_acc": right.all(dim=1).float().mean().item(),
                         "p_right": p.mean().item(), "samples": right.size(0)}
    return out
