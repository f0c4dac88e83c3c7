"""The heap handed back during long CPU evaluations (tarm_plugin.heap): glibc keeps the holes
that equal-sized batches leave once training has raised its mmap threshold; the trim every
32 batches bounds what a validation keeps."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

# A validation's allocations after training: a freed 30 MiB block raises glibc's mmap
# threshold, then each batch allocates a 16 MB logits tensor and a loss, and keeps a
# small tensor (a logged loss) that lands beside the hole.
PATTERN = """
import sys, torch, torch.nn.functional as F
from tarm_plugin.heap import HeapTrim
torch.set_num_threads(1)
def rss_mb():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
big = torch.empty(30 << 20, dtype=torch.uint8); big.fill_(1); del big
x, w = torch.randn(512, 256), torch.randn(8008, 256)
target = torch.randint(0, 8008, (512,))
heap = HeapTrim(every=int(sys.argv[1]))
start, kept = rss_mb(), []
for _ in range(256):
    kept.append(F.cross_entropy(x @ w.t(), target, reduction="none").sum())
    heap.after_batch()
print(rss_mb() - start)
"""


def growth_mb(every):
    p = subprocess.run([sys.executable, "-c", PATTERN, str(every)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout.split()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_trim_every_32_batches_bounds_what_an_evaluation_loop_keeps():
    kept = 0
    # never trimmed, the holes appear in most runs, not all (measured: 55-3,500 MB). The heap
    # itself grows by that much (mallinfo2's arena, nearly all of it free), so it is glibc's
    # placement, not an RSS artefact; it varies with PYTHONHASHSEED fixed, with one arena
    # (glibc.malloc.arena_max=1) and with a fixed mmap threshold alike: cause not found
    for _ in range(3):
        kept = max(kept, growth_mb(0))
        if kept >= 1000:
            break
    if kept < 1000:
        pytest.skip(f"this allocator keeps {kept} MB without the trim: nothing to bound here")
    trimmed = growth_mb(32)
    assert trimmed < 400, f"with the trim every 32 batches the loop still kept {trimmed} MB (without: {kept} MB)"
