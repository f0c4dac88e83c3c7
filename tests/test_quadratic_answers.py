"""scripts/quadratic_answers.py: the quadratic answers' accuracy, kinds, misses and where
the steps computed a root, on hand-made predictions."""

import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from quadratic_answers import (  # noqa: E402
    accuracy_by,
    count_misses,
    miss_type,
    normalize_answer,
    split_by_kind,
    value_segments,
)


def test_accuracy_by_kind_counts_token_matches():
    refs = ["x1=-3,x2=1", "x=5", "noroots", "x1=-100,x2=99"]
    right = [True, False, True, False]
    assert split_by_kind(refs, right) == {"two_roots": (0.5, 2), "double_root": (0.0, 1), "no_roots": (1.0, 1)}
    assert accuracy_by(["a", None, "a", "b"], right) == {"a": (1.0, 2), "b": (0.0, 1)}  # None: left out
    assert normalize_answer("n o r o o t s _ _ </s>") == "noroots"
    with pytest.raises(ValueError):
        accuracy_by(["a"], [])


def test_miss_types():
    ref = "x1=-3,x2=1"
    assert miss_type("x 1 = - 3 , x 2 = 1 _ _", ref, True) == ""
    # the text right, the tokens not (a field pad or </s> out of place): wrong, as validation counts it
    assert miss_type("x 1 = - 3 , x 2 = _ 1 _", ref + " _ _", False) == "layout"
    assert miss_type("x1=-4,x2=1", ref, False) == "x1 only"
    assert miss_type("x1=-3,x2=7", ref, False) == "x2 only"
    assert miss_type("x1=1,x2=-3", ref, False) == "both roots"  # roots in the wrong order
    assert miss_type("x1=-3,x2=1,x3=2", ref, False) == "wrong kind"
    assert miss_type("x1=5,x2=5", "x=5", False) == "wrong kind"   # a double root written as two
    assert miss_type("noroots", ref, False) == "wrong kind"        # none where there are two
    assert miss_type("x=-5", "x=5", False) == "value"
    refs = [ref, ref, ref, "x=5", "noroots"]
    preds = ["x1=-4,x2=1", "x1=0,x2=1", ref, "x1=5,x2=5", "noroots"]
    assert count_misses(preds, refs, [False, False, True, False, True]) == {"x1 only": 2, "wrong kind": 1}


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
