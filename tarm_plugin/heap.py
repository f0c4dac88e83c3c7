"""Hand the heap's free pages back to the system during long evaluations on CPU.

One 848-batch validation of the long-document models (8k vocabulary, 8 x 64
tokens) peaked fairseq-train at a maximum RSS of 13.0 GiB, against 1.2 GiB with
a trim every 32 batches, the same loss (``results/performance/heap_trim.md``);
of two runs side by side one was killed for memory. Our reading, not measured:
glibc serves large blocks with ``mmap`` and returns them when freed, but each
such block freed raises its threshold for ``mmap`` to that size (up to 32 MiB),
so after a while of training tensors of a few MiB come from the heap, where
free blocks that are not at its top stay with the process (``malloc_info``
after a validation: 9.16 of 9.47 GB free, one free block of 8.69 GB).
``malloc_trim(0)`` returns the free pages of every free block; a call every few
dozen batches bounds the growth at little cost (measured: the peak above).

Without glibc nothing happens. On a GPU the tensors are not on the heap and a
trim finds little to do (it walks the free blocks only).
"""

import ctypes
import ctypes.util

TRIM_EVERY = 32  # batches between trims (the measured peak: 1.2 GiB); 32 x 16 MB logits is 0.5 GB


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


class HeapTrim:
    """Counts evaluation batches and trims the heap every ``every`` batches."""

    def __init__(self, every: int = TRIM_EVERY):
        self.every, self.batches = every, 0
        self.trim = _malloc_trim()

    def after_batch(self) -> None:
        self.batches += 1
        if self.trim is not None and self.every > 0 and self.batches % self.every == 0:
            self.trim(0)

    def __call__(self, sample):
        """As a batch transform of eval-lm's iterator: the batch before it passes on."""
        self.after_batch()
        return sample
