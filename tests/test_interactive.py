"""Plain text in and out, with memory: prepare_text.py -> fairseq-train -> fairseq-interactive /
fairseq-generate / the hub interface, on the shipped examples/text."""

import math
import os
import re
import sys

import pytest
import torch

from conftest import PLUGIN, ROOT, run

pytestmark = pytest.mark.cli

TEXT = os.path.join(ROOT, "examples", "text")
L = 8
TASK = ["--user-dir", PLUGIN, "--task", "tarm_language_modeling", "--segment-length", str(L)]
PROMPTS = ["The keeper climbed the stairs and lit the lamp before the sun went down, and in winter",
           "On market day the farmers came to the village with eggs, butter and"]
N_NEW = 12


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """(data-bin with spm.model, checkpoint dir): a tiny TARM model trained for 40 updates."""
    base = tmp_path_factory.mktemp("text")
    data = str(base / "bin")
    p = run([sys.executable, os.path.join(ROOT, "scripts", "prepare_text.py"),
             "--trainpref", f"{TEXT}/train.txt", "--validpref", f"{TEXT}/valid.txt",
             "--testpref", f"{TEXT}/test.txt", "--destdir", data, "--vocab-size", "300"])
    assert p.returncode == 0, p.stderr[-2000:]
    ckpt = str(base / "ckpt")
    p = run(["fairseq-train", data, *TASK, "--arch", "tarm_lm", "--criterion", "tarm_lm_loss",
             "--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
             "--decoder-attention-heads", "2", "--tokens-per-sample", str(L), "--num-memory-tokens", "4",
             "--memory-ema-alpha", "0.5", "--bptt-segments", "2", "--batch-size", "4",
             "--optimizer", "adam", "--lr", "3e-3", "--max-update", "40", "--cpu", "--seed", "1",
             "--save-dir", ckpt, "--no-epoch-checkpoints", "--no-progress-bar", "--num-workers", "0"])
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return data, ckpt


def cli(tool, data, ckpt, *flags, stdin=None):
    cmd = [tool, data, *TASK, "--path", os.path.join(ckpt, "checkpoint_last.pt"), "--cpu",
           "--bpe", "sentencepiece", "--sentencepiece-model", os.path.join(data, "spm.model"), *flags]
    return run(cmd, input=stdin)


def lines(out, tag):
    """{id: [fields after the id]} of fairseq's ``TAG-id<TAB>...`` output lines (every hypothesis)."""
    found = {}
    for m in re.finditer(rf"^{tag}-(\d+)\t(.*)$", out, flags=re.M):
        found.setdefault(int(m.group(1)), []).append(m.group(2).split("\t"))
    return found


def hub(data, ckpt):
    from tarm_plugin.models.tarm_lm import TarmLanguageModel

    # no bpe arguments: from_pretrained takes the data-bin's spm.model
    return TarmLanguageModel.from_pretrained(ckpt, "checkpoint_last.pt", data)


def test_interactive_speaks_text_with_memory_and_equals_hub_sample(text_model):
    data, ckpt = text_model
    p = cli("fairseq-interactive", data, ckpt, "--beam", "1", "--max-len-b", str(N_NEW),
            stdin="\n".join(PROMPTS) + "\n")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    detok, positional = lines(p.stdout, "D"), lines(p.stdout, "P")
    assert sorted(detok) == [0, 1]

    lm = hub(data, ckpt)
    assert type(lm.bpe).__name__ == "SentencepieceBPE"
    expected = lm.sample(PROMPTS, max_new_tokens=N_NEW, stop_at_eos=True)
    for i, prompt in enumerate(PROMPTS):
        text = detok[i][0][1]
        # plain text: the prompt as typed, then a continuation, no sentencepiece marks
        assert text == expected[i]
        assert text.startswith(prompt) and len(text) > len(prompt) and "\u2581" not in text
        # the prompt spans several segments: its scores are those of a forward that
        # carries memory across them (hub score), and memory changes them
        tokens = lm.encode(prompt)[:-1]
        assert len(tokens) > 2 * L
        printed = [float(x) for x in positional[i][0][0].split()]
        ref = lm.score(prompt)["positional_scores"][: len(tokens)] / math.log(2)
        assert printed[: len(tokens)] == pytest.approx(ref.tolist(), abs=2e-4)
        model = lm.models[0]
        seg2 = torch.cat([tokens.new_tensor([lm.task.dictionary.eos()]), tokens])[L : 2 * L].unsqueeze(0)
        with torch.no_grad():  # the second segment alone, reading E_0 instead of E_1
            logits, _ = model(seg2, reset=torch.ones(1, dtype=torch.bool), memory_key="t", segment_length=L)
            alone = model.get_normalized_probs((logits, {}), log_probs=True)[0]
        alone = alone.gather(-1, tokens[L : 2 * L].unsqueeze(-1))[:, 0] / math.log(2)
        assert not torch.allclose(alone, ref[L : 2 * L], atol=1e-3)


def test_interactive_sampling_gives_nbest_samples(text_model):
    data, ckpt = text_model
    p = cli("fairseq-interactive", data, ckpt, "--sampling", "--beam", "3", "--nbest", "3", "--seed", "2",
            "--max-len-b", str(N_NEW), stdin=PROMPTS[1] + "\n")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    hyps = lines(p.stdout, "D")[0]
    assert len(hyps) == 3 and all(h[1].startswith(PROMPTS[1]) for h in hyps)
    scores = [float(h[0]) for h in hyps]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("flags,message", [
    (["--beam", "4"], "tarm: error: --beam 4"),
    (["--beam", "1", "--sampling-topp", "0.9", "--sampling"], "tarm: error: --sampling-topp"),
])
def test_interactive_refuses_what_it_cannot_do(text_model, flags, message):
    data, ckpt = text_model
    p = cli("fairseq-interactive", data, ckpt, *flags, stdin=PROMPTS[0] + "\n")
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(message), p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_generate_on_lines_prompts_each_line_and_refuses_streams(text_model):
    data, ckpt = text_model
    p = cli("fairseq-generate", data, ckpt, "--sample-break-mode", "eos", "--gen-subset", "test",
            "--beam", "1", "--max-len-b", "6", "--batch-size", "2", "--prefix-size", "3")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    hyps = re.findall(r"^H-\d+\t\S+\t(.*)$", p.stdout, flags=re.M)
    targets = re.findall(r"^T-\d+\t(.*)$", p.stdout, flags=re.M)
    with open(f"{TEXT}/test.txt") as f:
        assert len(hyps) == len(targets) == len(f.readlines())
    ids = sorted(int(i) for i in re.findall(r"^H-(\d+)\t", p.stdout, flags=re.M))
    assert ids == list(range(len(hyps)))  # numbered by line, as fairseq-generate numbers sentences
    lm = hub(data, ckpt)
    for hyp, target in zip(hyps, targets):
        pieces = hyp.split()
        # the first 3 pieces of the line are the prompt; at most 6 new pieces follow
        assert pieces[:3] == lm.bpe.encode(target).split()[:3] and 3 <= len(pieces) <= 9
    p = cli("fairseq-generate", data, ckpt, "--gen-subset", "test", "--beam", "1", "--batch-size", "2")
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith(
        "tarm: error: fairseq-generate on contiguous streams")
