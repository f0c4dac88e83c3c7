"""scripts/make_quadratic.py: distribution, mathematics, determinism, no split overlap."""

import importlib.util
import math
import os
import re

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("make_quadratic", os.path.join(ROOT, "scripts", "make_quadratic.py"))
mq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mq)


@pytest.fixture(scope="module")
def splits():
    return mq.generate(4000, 500, 500, seed=7)


def test_distribution(splits):
    qs = [q for s in splits.values() for q in s]
    with_roots = [q for q in qs if q.roots is not None]
    share = 1 - len(with_roots) / len(qs)
    assert abs(share - 0.2) < 0.03, share  # ~20% without real roots (5000 draws: sd ~0.006)
    roots = [x for q in with_roots for x in q.roots]
    assert min(roots) >= -100 and max(roots) <= 100
    assert min(roots) <= -95 and max(roots) >= 95  # the whole range is used
    mults = {q.a for q in qs}
    assert mults == set(range(1, 11))  # the multiplier is the leading coefficient


def test_every_sample_is_mathematically_right(splits):
    for q in (q for s in splits.values() for q in s):
        d = q.b * q.b - 4 * q.a * q.c
        assert mq.discriminant(q) == d
        steps = mq.steps_text(q)
        assert f"={d}" in steps.split(";")[0]
        # the steps' own arithmetic
        m = re.match(r"D=\(?(-?\d+)\)?\^2-4\*(\d+)\*\(?(-?\d+)\)?=(\d+)([+-]\d+)=(-?\d+)", steps)
        b, a, c, b2, rest, dd = (int(g) for g in m.groups())
        assert (b, a, c) == (q.b, q.a, q.c) and b2 == b * b and rest == -4 * a * c and dd == d
        if q.roots is None:
            assert d < 0 and steps.endswith(";D<0") and mq.answer_text(q) == "noroots"
        else:
            x1, x2 = q.roots
            assert d >= 0
            for x in (x1, x2):
                assert q.a * x * x + q.b * x + q.c == 0
            s = math.isqrt(d)
            assert s * s == d and f"sqrtD={s}" in steps
            assert steps.endswith(f"={x2}") and f"={x1};" in steps
            want = f"x={x1}" if x1 == x2 else f"x1={x1},x2={x2}"
            assert mq.answer_text(q) == want


def test_layout_puts_the_answer_alone_in_the_last_segment(splits):
    for q in splits["test"][:200]:
        chars = mq.sample_line(q).split(" ")
        assert len(chars) == 179  # + </s> = 180 = 6 x 30
        assert "".join(chars[:30]).rstrip("_") == mq.equation_text(q)
        assert "".join(chars[150:]).rstrip("_") == mq.answer_text(q)


def test_determinism_and_no_overlap(splits):
    again = mq.generate(4000, 500, 500, seed=7)
    assert again == splits
    other = mq.generate(4000, 500, 500, seed=8)
    assert other != splits
    keys = {name: {(q.a, q.b, q.c) for q in qs} for name, qs in splits.items()}
    assert all(len(keys[n]) == len(splits[n]) for n in keys), "no repeats within a split"
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"]
    assert not keys["valid"] & keys["test"]


def test_no_roots_share_holds_in_every_split_when_equations_run_low():
    # 203k distinct equations have integer roots; at 100k samples repeats are frequent,
    # and redrawing a repeat must not shift the kind mix between splits
    splits = mq.generate(100_000, 2_000, 2_000, seed=1)
    for name, qs in splits.items():
        share = sum(q.roots is None for q in qs) / len(qs)
        assert abs(share - 0.2) < 0.03, (name, share)  # 2,000 draws: sd ~0.009
    tail = splits["train"][-20_000:]
    assert abs(sum(q.roots is None for q in tail) / len(tail) - 0.2) < 0.015
