"""scripts/quadratic_answers.py: the quadratic answers' accuracy, kinds, misses and where
the steps computed a root, on hand-made predictions."""

import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from quadratic_answers import (  # noqa: E402
    answer_accuracy,
    count_misses,
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
