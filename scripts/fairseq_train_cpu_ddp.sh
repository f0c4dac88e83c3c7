#!/usr/bin/env bash
# Multi-process fairseq-train on CPU under torchrun:
#   torchrun --nproc_per_node 2 --no-python scripts/fairseq_train_cpu_ddp.sh DATA ... --cpu --distributed-backend gloo
# fairseq 0.12 infers torchrun's rank as RANK % cuda_device_count (a division by
# zero without GPUs), so hand it the rank and world size that torchrun set.
# fairseq's pytorch_ddp passes CUDA device ids; legacy_ddp works on CPU.
exec fairseq-train --ddp-backend legacy_ddp "$@" --distributed-init-method env:// --distributed-no-spawn \
    --distributed-world-size "${WORLD_SIZE:?run under torchrun}" --distributed-rank "${RANK:?run under torchrun}"
