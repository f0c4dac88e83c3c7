"""The stream layout: every token of a split is a target exactly once, in order."""

import numpy as np
import pytest
import torch

from tarm_plugin.datasets import SegmentStreamDataset
from tarm_plugin.errors import TarmError

PAD, EOS = 1, 2


@pytest.mark.parametrize("n,bsz,L,k,shards", [
    (1000, 4, 7, 3, 1),   # nothing divides evenly
    (1000, 3, 5, 2, 2),   # two ranks
    (97, 2, 4, 4, 3),     # three ranks, short split
    (64, 2, 8, 2, 2),     # everything divides
    (5, 5, 3, 1, 1),      # one token per stream
])
def test_every_token_is_a_target_exactly_once(n, bsz, L, k, shards):
    # token values encode their position, so we can track each one
    tokens = np.arange(n, dtype=np.int64) + 10
    seen = []
    n_items = set()
    for shard in range(shards):
        ds = SegmentStreamDataset(tokens, bsz, L, k, PAD, EOS, "test", shard_id=shard, num_shards=shards)
        n_items.add(len(ds))
        for i in range(len(ds)):
            batch = ds.collater([ds[i]])
            src, tgt = batch["net_input"]["src_tokens"], batch["target"]
            assert src.shape == tgt.shape == (bsz, src.size(1)) and src.size(1) % L == 0
            assert src.size(1) <= k * L
            reset = batch["net_input"]["reset"]  # [B, n]: a stream starts at segment 0 of batch 0
            assert reset.shape == (bsz, src.size(1) // L) and not reset[:, 1:].any()
            assert reset[:, :1].tolist() == [[i == 0]] * bsz if src.size(1) else True
            assert batch["ntokens"] == int(tgt.ne(PAD).sum())
            real = tgt.ne(PAD)
            # padding only at the end of a row
            assert torch.equal(real, real.cumprod(dim=1).bool())
            # the input of each token is the token before it (</s> for the split's first)
            expect_src = torch.where(tgt == 10, torch.full_like(tgt, EOS), tgt - 1)
            assert torch.equal(src[real], expect_src[real])
            seen.extend(tgt[real].tolist())
    assert len(n_items) == 1, "every rank must get the same number of batches"
    assert sorted(seen) == list(range(10, 10 + n)), "a token was lost or duplicated"


def test_streams_are_contiguous_across_batches():
    tokens = np.arange(200, dtype=np.int64) + 10
    ds = SegmentStreamDataset(tokens, 3, 4, 2, PAD, EOS, "train")
    rows = [torch.cat([ds[i]["target"][b] for i in range(len(ds))]) for b in range(3)]
    for row in rows:
        row = row[row.ne(PAD)]
        assert torch.equal(row[1:] - row[:-1], torch.ones(len(row) - 1, dtype=torch.long))


def test_too_many_streams_is_a_clear_error():
    with pytest.raises(TarmError, match="batch size"):
        SegmentStreamDataset(np.arange(5), 4, 2, 1, PAD, EOS, "valid", num_shards=2)
