"""Where this process sits among fairseq's data-parallel ranks, and what ranks may send."""

from typing import Tuple

import torch
from fairseq.distributed import utils as dist_utils


def data_parallel_shard() -> Tuple[int, int]:
    """(rank, world size) among the data-parallel ranks; (0, 1) when fairseq runs single-process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, 1
    return dist_utils.get_data_parallel_rank(), dist_utils.get_data_parallel_world_size()


def allow_checkpoint_broadcast() -> None:
    """fairseq hands the checkpoint that rank 0 loaded to the other ranks through
    torch.save/torch.load (distributed_utils.broadcast_object). torch >= 2.6 loads
    with weights_only=True, which refuses the omegaconf config inside, so a
    multi-process run could not resume at all. These are plain data containers."""
    if not hasattr(torch.serialization, "add_safe_globals"):
        return
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    torch.serialization.add_safe_globals([DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode,
                                          collections.defaultdict, dict, list, int, typing.Any,
                                          dist_utils._TensorPlaceholder])


def unwrap(model):
    """The model inside fairseq's DDP wrappers (each holds the next as ``module``)."""
    while hasattr(model, "module"):
        model = model.module
    return model
