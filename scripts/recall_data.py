"""Long-range recall's data: samples of key-value facts, D filler segments and the
question, fairseq-preprocess'd into a data-bin per training spec or curriculum stage
(scripts/recall.py).

A sample, one line, cut into segments of L tokens (memory reset per sample):

  segment 0        P facts "k v" (distinct keys k*, independent values v*), then filler f*
  segments 1..D    filler (random f* tokens)
  segment D+1      the P keys again, shuffled, each followed by its value, then </s>
"""

import os
import random
import shutil
import subprocess

from lab import read_json, save_json, tool


def make_sample(rng: random.Random, n_facts: int, distance: int, L: int, n_keys: int,
                n_values: int, n_filler: int):
    """One sample as a token list (fairseq-preprocess appends </s>)."""
    if 2 * n_facts + 1 > L:
        raise ValueError(f"{n_facts} facts need 2P+1 = {2 * n_facts + 1} tokens, more than --segment-length {L}")
    if n_facts > n_keys:
        raise ValueError(f"{n_facts} facts need at least as many distinct keys")
    keys = rng.sample(range(n_keys), n_facts)
    # values drawn independently: with distinct values the last answer would follow by
    # elimination, and a model that only remembered the set of values would look good
    values = [rng.randrange(n_values) for _ in range(n_facts)]
    filler = lambda n: [f"f{rng.randrange(n_filler)}" for _ in range(n)]  # noqa: E731
    facts = [t for k, v in zip(keys, values) for t in (f"k{k}", f"v{v}")]
    order = rng.sample(range(n_facts), n_facts)
    question = [t for i in order for t in (f"k{keys[i]}", f"v{values[i]}")]
    return facts + filler(L - len(facts)) + filler(distance * L) + question


def answer_positions(n_facts: int, distance: int, L: int):
    """Indices of the values in a sample's token list (= in the task's target row)."""
    start = (distance + 1) * L
    return [start + 2 * i + 1 for i in range(n_facts)]


def row_answer_positions(lengths, n_facts: int):
    """[B, P] indices of the values in each row, from the row's length in tokens (with its
    </s>): the question is every row's last 2P + 1 tokens, whatever its distance D."""
    import torch

    first_key = lengths.long() - 2 * n_facts - 1
    return first_key[:, None] + 1 + 2 * torch.arange(n_facts)


def symbols(n_keys, n_values, n_filler):
    return ([f"k{i}" for i in range(n_keys)] + [f"v{i}" for i in range(n_values)]
            + [f"f{i}" for i in range(n_filler)])


def spec_name(distances):
    return "-".join(str(d) for d in distances)


def build_data(args, train_distances, n_facts, test_distances, name=None, valid_samples=64):
    """Generate and fairseq-preprocess one data-bin; returns (dir, {test D: split name}).

    Train and valid samples cycle through ``train_distances`` (equal shares; the task
    shuffles them). ``name`` (default ``D<spec>_P<P>``) names the directory and seeds the
    data. Every data-bin uses the same dict.txt (all symbols), so a checkpoint loads on any
    of them."""
    out = os.path.join(args.out, "data", name or f"D{spec_name(train_distances)}_P{n_facts}")
    splits = {d: "test" if i == 0 else f"test{i}" for i, d in enumerate(test_distances)}

    def built(path):
        meta_path = os.path.join(path, "recall.json")
        if not os.path.exists(meta_path):
            return False
        meta = read_json(meta_path)
        return meta["test_distances"] == list(test_distances) and meta.get("valid_samples", 64) == valid_samples

    if built(out):
        return out, splits
    # built aside and moved in when complete: two invocations sharing --out (one per core)
    # may build the same data-bin at once, and neither sees a half-built one
    tmp = f"{out}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    raw = os.path.join(tmp, "raw")
    os.makedirs(raw)
    seed = (hash_seed(args.data_seed, spec_name(train_distances), n_facts) if name is None
            else hash_seed(args.data_seed, name))
    rng = random.Random(seed)
    gen = lambda d: make_sample(rng, n_facts, d, args.segment_length, args.keys,  # noqa: E731
                                args.values, args.filler)

    def write(name, lines):
        path = os.path.join(raw, name)
        with open(path, "w") as f:
            f.writelines(" ".join(x) + "\n" for x in lines)
        return path

    train = write("train.txt", [gen(train_distances[i % len(train_distances)]) for i in range(args.train_samples)])
    valid = write("valid.txt", [gen(train_distances[i % len(train_distances)]) for i in range(valid_samples)])
    tests = [write(f"test_D{d}.txt", [gen(d) for _ in range(args.test_samples)]) for d in test_distances]
    dict_path = os.path.join(raw, "dict.txt")
    with open(dict_path, "w") as f:
        f.writelines(f"{s} 1\n" for s in symbols(args.keys, args.values, args.filler))
    cmd = [tool("fairseq-preprocess"), "--only-source", "--srcdict", dict_path, "--trainpref", train,
           "--validpref", valid, "--testpref", ",".join(tests), "--destdir", tmp, "--workers", "1"]
    with open(os.path.join(tmp, "preprocess.log"), "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, env=child_env())
    save_json(os.path.join(tmp, "recall.json"),
              {"train_distances": list(train_distances), "facts": n_facts, "seed": seed,
               "test_distances": list(test_distances), "splits": {str(k): v for k, v in splits.items()},
               "valid_samples": valid_samples})
    if built(out):  # the other invocation was first: the same data (same seed)
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(out, ignore_errors=True)  # other test distances, or an interrupted build
        os.rename(tmp, out)
    return out, splits


def stage_data(args, stage, n_facts):
    """A curriculum stage's data-bin: train and valid with D cycling through 1..stage (equal
    shares), test splits at --curriculum-test (every stage's, so any checkpoint can be tested)."""
    return build_data(args, tuple(range(1, stage + 1)), n_facts, tuple(args.curriculum_test),
                      name=stage_data_name(stage, n_facts), valid_samples=args.curriculum_valid_samples)


def stage_data_name(stage, n_facts):
    """The directory name of stage ``stage``'s data-bin under ``--out``/data."""
    return f"curriculum_D1to{stage}_P{n_facts}"


def hash_seed(*parts):
    import hashlib

    return int(hashlib.md5(repr(parts).encode()).hexdigest()[:8], 16)


def child_env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
