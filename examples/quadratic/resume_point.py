"""The update count a fairseq run directory resumes from: that of DIR/checkpoint_last.pt,
0 if the run has not saved a checkpoint yet. examples/quadratic/cpu_runs.sh reads it to
decide which phase a run is in and what is left of it.

fairseq saves a checkpoint's first file atomically (a .tmp file renamed) and then copies
it, non-atomically, to the others (checkpoint_best.pt, checkpoint_last.pt). A kill during
that copy leaves checkpoint_last.pt truncated (or absent after the very first save); then
the newest complete checkpoint in DIR, the first file of that same save, is put in its
place (a note on stderr) and the run resumes from it.

    python examples/quadratic/resume_point.py DIR
"""

import glob
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from lab import checkpoint_updates as updates  # noqa: E402  (the experiment library)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/quadratic/resume_point.py DIR")
    run_dir = sys.argv[1]
    last = os.path.join(run_dir, "checkpoint_last.pt")
    others = [p for p in glob.glob(os.path.join(run_dir, "checkpoint*.pt")) if p != last]
    if os.path.isfile(last):
        n = updates(last)
        if n is not None:
            print(n)
            return
    elif not others:
        print(0)
        return
    readable = [(n, p) for p in others if (n := updates(p)) is not None]
    if not readable:
        sys.exit(f"resume_point: error: {last} is unreadable and no other checkpoint in {run_dir} is complete")
    n, src = max(readable)
    shutil.copyfile(src, last + ".tmp")
    os.replace(last + ".tmp", last)
    print(f"resume_point: {last} was missing or truncated; replaced by {os.path.basename(src)} "
          f"({n} updates)", file=sys.stderr)
    print(n)


if __name__ == "__main__":
    main()
