#!/usr/bin/env bash
# Multi-process fairseq-train on CPU, one process per rank, under torchrun or srun:
#   torchrun --nproc_per_node 2 --no-python scripts/fairseq_train_cpu_ddp.sh DATA ... --cpu --distributed-backend gloo
#   torchrun --nnodes 2 --node_rank N --nproc_per_node 1 --master_addr HOST --master_port P \
#       --no-python scripts/fairseq_train_cpu_ddp.sh DATA ... --cpu --distributed-backend gloo
#   srun scripts/fairseq_train_cpu_ddp.sh DATA ... --cpu --distributed-backend gloo --distributed-port P
# (docs/several_machines.md). fairseq 0.12 assumes one process per GPU when it reads
# the launcher's environment, which goes wrong without GPUs:
# - torchrun: it takes the device as RANK % cuda_device_count (a division by zero);
# - srun, one task per node: rank node_id * 0 = 0 and world size nnodes * 0 = 0, then it
#   spawns min(0, ...) = 0 processes and exits 0 having trained nothing;
# - srun, several tasks per node: torch.cuda.set_device(SLURM_LOCALID).
# So hand fairseq the rank, world size and init method itself. Under srun they are
# what fairseq's SLURM inference reads (fairseq/distributed/utils.py _infer_slurm_init):
# the first host of `scontrol show hostnames` on the step's (else the job's) node list,
# --distributed-port, SLURM_PROCID, SLURM_NTASKS.
# Restarts (torchrun --max-restarts) need a rendezvous store that is not shared (below).
# fairseq's pytorch_ddp passes CUDA device ids; legacy_ddp works on CPU.
set -euo pipefail
die() { echo "fairseq_train_cpu_ddp.sh: error: $*" >&2; exit 2; }

if [[ -n "${RANK:-}" && -n "${WORLD_SIZE:-}" ]]; then  # torchrun
    # torchrun's static rendezvous (and c10d's by default) keeps one store for all attempts
    # and lends it to the ranks: restarted ranks can read the killed ones' addresses there
    # and fail to connect (pytorch/pytorch#135712). Stop before training, not at the restart.
    if (( ${TORCHELASTIC_MAX_RESTARTS:-0} > 0 )) && [[ ${TORCHELASTIC_USE_AGENT_STORE:-} == True ]]; then
        [[ ${LOCAL_RANK:-0} != 0 ]] && exit 2
        die "torchrun --max-restarts needs a fresh rendezvous store per attempt: launch with" \
            "--rdzv-backend c10d --rdzv-endpoint HOST:PORT and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/several_machines.md)"
    fi
    init=env:// rank=$RANK world=$WORLD_SIZE
elif [[ -n "${SLURM_PROCID:-}" ]]; then  # srun
    port=
    args=("$@")
    for i in "${!args[@]}"; do
        case ${args[$i]} in
            --distributed-port) port=${args[$((i + 1))]:-} ;;
            --distributed-port=*) port=${args[$i]#*=} ;;
        esac
    done
    [[ $port =~ ^[0-9]+$ && $port -gt 0 ]] || die "under srun pass --distributed-port PORT (a free TCP port on the first node)"
    nodes=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:?SLURM_PROCID is set but no SLURM_JOB_NODELIST}}
    hosts=$(scontrol show hostnames "$nodes") || die "scontrol show hostnames $nodes failed"
    host=${hosts%%$'\n'*}
    [[ -n $host ]] || die "scontrol show hostnames $nodes printed no host"
    init=tcp://$host:$port rank=$SLURM_PROCID world=${SLURM_NTASKS:?SLURM_PROCID is set but no SLURM_NTASKS}
else
    die "run under torchrun (RANK, WORLD_SIZE) or srun (SLURM_PROCID); one process needs no launcher: fairseq-train ... --cpu"
fi
exec fairseq-train --ddp-backend legacy_ddp "$@" --distributed-init-method "$init" --distributed-no-spawn \
    --distributed-world-size "$world" --distributed-rank "$rank"
