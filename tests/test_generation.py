"""Generation with memory (incremental inside a segment) and long-document scoring."""

import pytest
import torch

from conftest import build
from tarm_plugin.generation import generate, score

L = 4


@pytest.mark.parametrize("m,alpha,prompt_len", [(3, 0.5, 6), (3, 1.0, 4), (0, 1.0, 1), (2, 0.2, 9)])
def test_greedy_generation_equals_teacher_forced_argmax(dict_dir, m, alpha, prompt_len):
    """Feeding the generated text back through the plain forward (memory carried,
    full segments) must give the same argmax at every generated position: the
    incremental path and the segment-boundary memory writes are right."""
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", str(m),
                     "--memory-ema-alpha", str(alpha))
    model.eval()
    torch.manual_seed(1)
    inputs = torch.randint(4, 60, (2, prompt_len))
    new = generate(model, inputs, max_new_tokens=11)
    assert new.shape == (2, 11)
    stream = torch.cat([inputs, new[:, :-1]], dim=1)
    model.carried.clear()
    with torch.no_grad():
        logits, _ = model(stream, reset=torch.ones(2, dtype=torch.bool), memory_key="g", segment_length=L)
    logits[..., model.decoder.padding_idx] = float("-inf")  # generation never picks <pad>
    assert torch.equal(logits[:, prompt_len - 1:].argmax(-1), new)
    assert not new.eq(model.decoder.padding_idx).any()


def test_sampling_is_seeded_and_in_vocabulary(dict_dir):
    task, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "2")
    inputs = torch.randint(4, 60, (1, 3))
    torch.manual_seed(5)
    a = generate(model, inputs, 9, sampling=True, topk=5)
    torch.manual_seed(5)
    b = generate(model, inputs, 9, sampling=True, topk=5)
    assert torch.equal(a, b) and int(a.max()) < len(task.dictionary)


def test_score_equals_the_forward_over_the_document(dict_dir):
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "2",
                     "--memory-ema-alpha", "0.5")
    model.eval()
    doc = torch.randint(4, 60, (1, 4 * L + 1))
    inputs, targets = doc[:, :-1], doc[:, 1:]
    lp = score(model, inputs, targets)
    with torch.no_grad():
        logits, _ = model(inputs, reset=torch.ones(1, dtype=torch.bool), memory_key="x", segment_length=L)
        ref = model.get_normalized_probs((logits, {}), log_probs=True).gather(-1, targets.unsqueeze(-1))[..., 0]
    assert torch.allclose(lp, ref, atol=1e-5)


@pytest.mark.parametrize("flags", [
    [],
    ["--adaptive-input", "--adaptive-input-cutoff", "20,40", "--adaptive-softmax-cutoff", "20,40",
     "--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp"],
], ids=["plain", "adaptive"])
def test_generation_scores_equal_teacher_forced_scores(dict_dir, flags):
    """Through the model's public inference interface (initial_memory, extend, logits,
    padding_idx): the prompt's scores and the generated tokens' scores equal the
    log-probabilities of the plain forward over the same text, memory carried."""
    from tarm_plugin.generation import generate_with_scores

    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "2",
                     "--memory-ema-alpha", "0.5", *flags)
    model.eval()
    torch.manual_seed(2)
    inputs = torch.randint(4, 60, (2, 7))
    new, new_lp, prompt_lp = generate_with_scores(model, inputs, max_new_tokens=9, prompt_scores=True)
    stream = torch.cat([inputs, new], dim=1)
    with torch.no_grad():
        logits, _ = model(stream[:, :-1], segment_length=L)
        ref = model.get_normalized_probs((logits, {}), log_probs=True).float()
    ref = ref.gather(-1, stream[:, 1:].unsqueeze(-1))[..., 0]
    assert torch.allclose(prompt_lp, ref[:, : inputs.size(1) - 1], atol=1e-5)
    assert torch.allclose(new_lp, ref[:, inputs.size(1) - 1 :], atol=1e-5)


def test_the_generator_reads_the_tasks_segment_length_and_leaves_score_reference_to_fairseq(dict_dir):
    """fairseq-generate / -interactive with --segment-length other than the checkpoint's
    (eval-lm uses the given one): the generator reads prompts in the task's segments;
    --score-reference goes to fairseq's scorer (which the memory store serves)."""
    from argparse import Namespace

    from tarm_plugin.generation import TarmSequenceGenerator, generate_with_scores

    task, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "2")
    model.eval()
    cfg = Namespace(beam=1, max_len_b=3, max_len_a=0)
    gen = TarmSequenceGenerator.build([model], task.target_dictionary, cfg, segment_length=2 * L)
    torch.manual_seed(3)
    prompt = torch.randint(4, 60, (1, 11))
    eos = task.target_dictionary.eos()
    src = torch.cat([torch.tensor([[eos]]), prompt], dim=1)
    hypo = gen.generate([model], {"net_input": {"src_tokens": src}}, prefix_tokens=prompt, bos_token=eos)[0][0]
    _, _, wide = generate_with_scores(model, src, 3, 2 * L, prompt_scores=True)
    _, _, own = generate_with_scores(model, src, 3, None, prompt_scores=True)
    assert torch.allclose(hypo["positional_scores"][:11], wide[0]) and not torch.allclose(wide, own)
    assert TarmSequenceGenerator.supports([model]) and not TarmSequenceGenerator.supports(
        [model], Namespace(score_reference=True))


def test_a_prefix_taken_from_masked_targets_is_the_inputs(dict_dir):
    """fairseq-generate --prefix-size N reads the prompt from the targets, which
    --loss-start-segment leaves as padding: the prompt is then rebuilt from the inputs."""
    from argparse import Namespace

    from tarm_plugin.generation import TarmSequenceGenerator

    task, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "2")
    model.eval()
    d = task.target_dictionary
    gen = TarmSequenceGenerator.build([model], d, Namespace(beam=1, max_len_b=2, max_len_a=0))
    line = torch.randint(4, 60, (1, 9))
    src = torch.cat([torch.tensor([[d.eos()]]), line[:, :-1]], dim=1)
    masked = line.clone()
    masked[:, :L] = d.pad()  # the first segment's targets are context only
    a = gen.generate([model], {"net_input": {"src_tokens": src}}, prefix_tokens=masked[:, :6], bos_token=d.eos())
    b = gen.generate([model], {"net_input": {"src_tokens": src}}, prefix_tokens=line[:, :6], bos_token=d.eos())
    assert torch.equal(a[0][0]["tokens"], b[0][0]["tokens"]) and torch.equal(a[0][0]["tokens"][:6], line[0, :6])


def test_an_empty_prompt_is_refused(dict_dir):
    _, model = build(dict_dir, "--segment-length", "4", "--num-memory-tokens", "2")
    with pytest.raises(ValueError, match="at least one input token"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
