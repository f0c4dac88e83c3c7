"""Where this process sits among fairseq's data-parallel ranks."""

from typing import Tuple

import torch
from fairseq.distributed import utils as dist_utils


def data_parallel_shard() -> Tuple[int, int]:
    """(rank, world size) among the data-parallel ranks; (0, 1) when fairseq runs single-process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, 1
    return dist_utils.get_data_parallel_rank(), dist_utils.get_data_parallel_world_size()
