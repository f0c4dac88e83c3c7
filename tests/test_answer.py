"""The exact-match accuracy: greedy decoding with memory, and matching it against the target
(the quadratic answers read as text: test_quadratic_answers.py)."""

import pytest
import torch

from conftest import build
from tarm_plugin.answer import exact_match_rows, greedy_last_segments


def test_exact_match_rows_ignores_padding():
    pad = 1
    target = torch.tensor([[5, 6, 7, 1], [5, 6, 7, 8], [1, 1, 1, 1]])
    generated = torch.tensor([[5, 6, 7, 9], [5, 6, 0, 8], [1, 1, 1, 1]])
    assert exact_match_rows(generated, target, pad).tolist() == [True, False, False]


def test_greedy_decoding_matches_teacher_forced_argmax(dict_dir):
    """Fed its own greedy tokens, the model must produce the same argmax as a full
    teacher-forced forward over those tokens: decoding sees memory and no future."""
    L = 4
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "3",
                     "--memory-ema-alpha", "0.5")
    model.eval()
    src = torch.randint(4, 60, (3, 3 * L))
    gen = greedy_last_segments(model, src, L, n_segments=2)
    assert gen.shape == (3, 2 * L)
    # teacher-force the generated continuation
    forced = torch.cat([src[:, :L + 1], gen[:, :-1]], dim=1)
    model.carried.clear()
    with torch.no_grad():
        logits, _ = model(forced, reset=torch.ones(3, dtype=torch.bool), memory_key="t", segment_length=L)
    logits[..., model.decoder.padding_idx] = float("-inf")  # generation never picks <pad>
    assert torch.equal(logits[:, L:].argmax(-1), gen)
    # the answer depends on the first segment only through memory
    other = src.clone()
    other[:, 0] = (other[:, 0] - 4 + 13) % 56 + 4
    with torch.no_grad():
        lp_a = model(src, reset=torch.ones(3, dtype=torch.bool), memory_key="a", segment_length=L)[0]
        lp_b = model(other, reset=torch.ones(3, dtype=torch.bool), memory_key="b", segment_length=L)[0]
    assert not torch.allclose(lp_a[:, 2 * L:], lp_b[:, 2 * L:])


def test_exact_match_refuses_rows_ending_in_different_segments():
    from tarm_plugin.answer import check_equal_segments
    from tarm_plugin.errors import TarmError

    pad, L = 1, 4
    same = torch.tensor([[2, 5, 6, 7, 8, 9, 1, 1], [2, 5, 6, 7, 8, 1, 1, 1]])  # both 2 segments
    check_equal_segments(same, pad, L)
    mixed = torch.tensor([[2, 5, 6, 7, 8, 9, 1, 1], [2, 5, 6, 1, 1, 1, 1, 1]])  # 2 and 1 segments
    with pytest.raises(TarmError, match="--eval-exact-match-segments needs samples with the same number"):
        check_equal_segments(mixed, pad, L)


def test_answer_counts_of_a_padding_shard_and_of_too_short_samples(dict_dir):
    # a rank past the split's end gets one row of padding: nothing to count, no decoding;
    # samples shorter than the answer asked for: one line naming the flag
    from tarm_plugin.answer import answer_counts
    from tarm_plugin.errors import TarmError

    L = 4
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "3")
    pad = model.decoder.padding_idx
    empty = torch.full((1, L), pad)
    sample = {"net_input": {"src_tokens": empty, "segment_length": L}, "target": empty}
    assert answer_counts(model.eval(), sample, 3, pad) == {"em_correct": 0, "em_total": 0}
    src = torch.randint(4, 60, (2, 2 * L))
    sample = {"net_input": {"src_tokens": src, "segment_length": L}, "target": src}
    with pytest.raises(TarmError, match="--eval-exact-match-segments 3: .* 2 segments"):
        answer_counts(model, sample, 3, pad)
