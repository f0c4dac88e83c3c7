"""One training run per save dir.

torch's elastic agent starts each rank in a session of its own, so killing the
agent (or a job script) can leave the ranks training; a relaunch into the same
``--save-dir`` would then train beside them, both writing ``checkpoint_last.pt``.
fairseq-train's rank 0 therefore holds an exclusive ``fcntl`` lock on
``SAVE_DIR/tarm.lock`` for as long as it lives: the kernel drops the lock when
the process ends however it ends (a ``kill -9`` included), so a lock left by a
dead run never blocks. The file itself stays, naming the last holder.
"""

import errno
import fcntl
import logging
import os
import socket
import time
from typing import Optional

import torch
from fairseq.distributed import utils as dist_utils

logger = logging.getLogger(__name__)

LOCK_FILE = "tarm.lock"
_held = {}  # real path of a lock file -> its open file (the lock lives as long as it)
_checked = set()  # save dirs hold_save_dir has settled in this process


def lock_save_dir(save_dir: str, lock_file: str = LOCK_FILE) -> Optional[str]:
    """Take the lock on ``save_dir`` for this process: None when it holds it
    (now or already), else who holds it ("pid N on HOST since TIME"). ``lock_file``:
    another lock in the same dir (a driver's, held around the fairseq-train it starts)."""
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, lock_file)
    key = os.path.realpath(path)
    if key in _held:
        return None
    f = open(path, "a+")
    try:
        # POSIX record locks (lockf), not flock: they also hold across machines on NFS,
        # and a fork (DataLoader workers) does not inherit them
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            f.close()
            logger.warning(f"cannot lock {path} ({e.strerror}): another run training into "
                           f"{save_dir} at the same time would not be detected")
            _held[key] = None
            return None
        f.seek(0)
        holder = f.read().strip() or "a process that has not written its name yet"
        f.close()  # this process holds no lock on the file: closing drops none
        return holder
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _held[key] = f
    return None


def hold_save_dir(save_dir: str) -> None:
    """fairseq-train: rank 0 takes the save dir's lock; if another live run holds
    it, every rank stops (rank 0 with one line naming the holder). With several
    ranks a collective on its first call per save dir, so every rank calls it at
    the same step; later calls return at once."""
    if save_dir in _checked:
        return
    _checked.add(save_dir)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    holder = lock_save_dir(save_dir) if rank == 0 else None
    if distributed:
        holder = dist_utils.broadcast_object(holder, src_rank=0, group=dist_utils.get_global_group())
    if holder is None:
        return
    if rank == 0:
        raise SystemExit(f"tarm: error: --save-dir {save_dir} is in use by another run ({holder}, "
                         f"{os.path.join(save_dir, LOCK_FILE)}): stop that run or train into another --save-dir")
    raise SystemExit(1)
