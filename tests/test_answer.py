"""The exact-match accuracy: hand-made predictions, and greedy decoding with memory."""

import pytest
import torch

from conftest import build
from tarm_plugin.answer import (
    answer_accuracy,
    count_misses,
    exact_match_rows,
    greedy_last_segments,
    miss_type,
    normalize_answer,
    split_by_kind,
    value_segments,
)


def test_accuracy_on_hand_made_predictions():
    refs = ["x1=-3,x2=1", "x=5", "noroots", "x1=-100,x2=99"]
    assert answer_accuracy(refs, refs) == 1.0
    preds = ["x1=-3,x2=1", "x=-5", "noroots", "x1=-100,x2=9"]  # right, wrong sign, right, cut short
    assert answer_accuracy(preds, refs) == 0.5
    # field padding, spaces and </s> are not part of the answer
    assert answer_accuracy(["x 1 = - 3 , x 2 = 1 _ _ _ </s>"], ["x1=-3,x2=1"]) == 1.0
    assert answer_accuracy(["x1=1,x2=-3"], ["x1=-3,x2=1"]) == 0.0  # roots in the wrong order
    assert answer_accuracy(["x1=-3,x2=1"], ["noroots"]) == 0.0     # roots where there are none
    assert answer_accuracy(["noroots"], ["x=5"]) == 0.0            # none where there is one
    assert normalize_answer("n o r o o t s _ _") == "noroots"
    by_kind = split_by_kind(preds, refs)
    assert by_kind == {"two_roots": (0.5, 2), "double_root": (0.0, 1), "no_roots": (1.0, 1)}
    with pytest.raises(ValueError):
        answer_accuracy(["x=1"], [])


def test_miss_types():
    ref = "x1=-3,x2=1"
    assert miss_type("x 1 = - 3 , x 2 = 1 _ _", ref) == ""
    assert miss_type("x1=-4,x2=1", ref) == "x1 only"
    assert miss_type("x1=-3,x2=7", ref) == "x2 only"
    assert miss_type("x1=1,x2=-3", ref) == "both roots"
    assert miss_type("x1=-3,x2=1,x3=2", ref) == "wrong kind"
    assert miss_type("x1=5,x2=5", "x=5") == "wrong kind"   # a double root written as two
    assert miss_type("noroots", ref) == "wrong kind"
    assert miss_type("x=-5", "x=5") == "value"
    refs = [ref, ref, ref, "x=5", "noroots"]
    preds = ["x1=-4,x2=1", "x1=0,x2=1", ref, "x1=5,x2=5", "noroots"]
    assert count_misses(preds, refs) == {"x1 only": 2, "wrong kind": 1}


def test_value_segments():
    # a double-root sample as the model reads it (</s> first): x1's value 51 is read in
    # segment 4, x2's too; one position earlier x1's value straddles segments 3 and 4
    sample = ("6*x^2-612*x+15606=0___________" "D=(-612)^2-4*6*15606=374544-37"
              "4544=0;sqrtD=0;x1=(612-0)/12=5" "1;x2=(612+0)/12=51____________")
    tokens = ["</s>"] + list(sample)
    assert value_segments(tokens, "x1", 30) == (4, 4)
    assert value_segments(tokens, "x2", 30) == (4, 4)
    assert value_segments(tokens[1:], "x1", 30) == (3, 4)
    assert value_segments(list("x^2+1=0;D<0;noroots"), "x1", 30) is None


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
    from tarm_plugin.criterions.tarm_lm_loss import check_equal_segments
    from tarm_plugin.errors import TarmError

    pad, L = 1, 4
    same = torch.tensor([[2, 5, 6, 7, 8, 9, 1, 1], [2, 5, 6, 7, 8, 1, 1, 1]])  # both 2 segments
    check_equal_segments(same, pad, L)
    mixed = torch.tensor([[2, 5, 6, 7, 8, 9, 1, 1], [2, 5, 6, 1, 1, 1, 1, 1]])  # 2 and 1 segments
    with pytest.raises(TarmError, match="--eval-exact-match-segments needs samples with the same number"):
        check_equal_segments(mixed, pad, L)
