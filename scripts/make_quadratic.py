"""Step-by-step quadratic equations (the RMT paper's second task), deterministic by seed.

Each sample is one line of characters, laid out in fixed-width fields so that
with 30-character segments the equation fills segment 1, the solution steps
segments 2-5 and the answer segment 6 (the answer segment never sees the
equation or the steps except through memory):

    equation (30) | steps (120) | answer (29) + </s>   = 180 tokens = 6 x 30

  equation  4*x^2+8*x-12=0
  steps     D=8^2-4*4*(-12)=64+192=256;sqrtD=16;x1=(-8-16)/8=-3;x2=(-8+16)/8=1
  answer    x1=-3,x2=1      (or x=5 for a double root, or noroots)

Roots x1, x2 are integers drawn uniformly from -100..100; the equation is
k*(x - x1)*(x - x2) = 0 expanded, k drawn from 1..10. A share ``--no-roots``
(default 20%) instead has a negative discriminant: k*(x^2 + b*x + c) with
b uniform in -200..200 and c uniform in (b^2/4, b^2/4 + 2500]. No equation
appears in two splits (nor twice in one).

Writes ``{train,valid,test}.txt`` (characters separated by spaces, ``_`` for
field padding, one sample per line) and ``{split}.answers`` (the plain answer
of each sample) to OUT_DIR; binarize with fairseq-preprocess --only-source.

Usage: python scripts/make_quadratic.py OUT_DIR [--train 100000 --valid 1000 --test 1000 --seed 1]
The layout follows the RMT paper's quadratic task (character level, 180
tokens per sample in 6 segments of 30, loss on the last 150); its split sizes
are not in our references, so the defaults (100k/1k/1k) are our choice.
"""

import argparse
import math
import os
import random
from dataclasses import dataclass
from typing import Optional, Tuple

PAD = "_"
FIELDS = (30, 120, 29)  # equation, steps, answer (+ </s> from fairseq-preprocess)
ROOT_RANGE = 100
MULT_RANGE = 10


@dataclass(frozen=True)
class Quadratic:
    a: int
    b: int
    c: int
    roots: Optional[Tuple[int, int]]  # (x1 <= x2), or None without real roots


def draw(rng: random.Random, no_roots: bool) -> Quadratic:
    k = rng.randint(1, MULT_RANGE)
    if no_roots:
        b = rng.randint(-2 * ROOT_RANGE, 2 * ROOT_RANGE)
        c = b * b // 4 + rng.randint(1, 2500)  # c > b^2/4, so b^2 - 4c < 0
        return Quadratic(k, k * b, k * c, None)
    x1, x2 = sorted((rng.randint(-ROOT_RANGE, ROOT_RANGE), rng.randint(-ROOT_RANGE, ROOT_RANGE)))
    return Quadratic(k, -k * (x1 + x2), k * x1 * x2, (x1, x2))


def term(v: int) -> str:
    return f"({v})" if v < 0 else str(v)


def equation_text(q: Quadratic) -> str:
    def signed(v):
        return f"+{v}" if v >= 0 else str(v)
    return f"{q.a}*x^2{signed(q.b)}*x{signed(q.c)}=0"


def discriminant(q: Quadratic) -> int:
    return q.b * q.b - 4 * q.a * q.c


def steps_text(q: Quadratic) -> str:
    d, b2, four_ac = discriminant(q), q.b * q.b, 4 * q.a * q.c
    rest = f"-{four_ac}" if four_ac >= 0 else f"+{-four_ac}"
    text = f"D={term(q.b)}^2-4*{q.a}*{term(q.c)}={b2}{rest}={d}"
    if d < 0:
        return text + ";D<0"
    s = math.isqrt(d)
    x1, x2 = (-q.b - s) // (2 * q.a), (-q.b + s) // (2 * q.a)
    return text + (f";sqrtD={s};x1=({-q.b}-{s})/{2 * q.a}={x1}"
                   f";x2=({-q.b}+{s})/{2 * q.a}={x2}")


def answer_text(q: Quadratic) -> str:
    if q.roots is None:
        return "noroots"
    x1, x2 = q.roots
    return f"x={x1}" if x1 == x2 else f"x1={x1},x2={x2}"


def sample_line(q: Quadratic) -> str:
    parts = (equation_text(q), steps_text(q), answer_text(q))
    chars = ""
    for part, width in zip(parts, FIELDS):
        assert len(part) <= width, (part, width)
        chars += part + PAD * (width - len(part))
    return " ".join(chars)


def generate(n_train: int, n_valid: int, n_test: int, seed: int, no_roots_share: float = 0.2):
    """{split: [Quadratic]} with no equation repeated anywhere.

    The kind is drawn first and a repeat is redrawn within its kind: the ~203k
    equations with integer roots run low at 100k samples, and redrawing the kind
    too would raise the no-roots share from split to split (train 24%, test 29%)."""
    rng = random.Random(seed)
    seen, splits = set(), {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        out = []
        while len(out) < n:
            no_roots = rng.random() < no_roots_share
            q = draw(rng, no_roots)
            while (q.a, q.b, q.c) in seen:
                q = draw(rng, no_roots)
            seen.add((q.a, q.b, q.c))
            out.append(q)
        splits[split] = out
    return splits


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=100_000)
    p.add_argument("--valid", type=int, default=1_000)
    p.add_argument("--test", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-roots", type=float, default=0.2, help="share without real roots")
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for split, qs in generate(args.train, args.valid, args.test, args.seed, args.no_roots).items():
        with open(os.path.join(args.out_dir, f"{split}.txt"), "w") as f:
            f.writelines(sample_line(q) + "\n" for q in qs)
        with open(os.path.join(args.out_dir, f"{split}.answers"), "w") as f:
            f.writelines(answer_text(q) + "\n" for q in qs)
        print(f"{split}: {len(qs)} samples")


if __name__ == "__main__":
    main()
