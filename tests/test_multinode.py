"""Beyond one torchrun on one node (docs/several_machines.md), all on this machine
over loopback: two torchrun agents as two nodes, fairseq under (stand-in) srun,
a rank SIGKILLed under torchrun --max-restarts 1 and a whole job killed and
relaunched, and a second run into a save dir that a live run holds.

Every process a test starts carries TARM_TEST_JOB=<id> in its environment; the
``job`` fixture SIGKILLs all of them when the test ends (torchrun's ranks run in
sessions of their own, so killing the agent alone would leave them)."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch

from conftest import BIN, ROOT, forkserver, free_port, run
from test_cli import MODEL, TASK, train_losses

pytestmark = pytest.mark.cli

LAUNCHER = os.path.join(ROOT, "scripts", "fairseq_train_cpu_ddp.sh")
# as tests/test_resume_ddp.py: --dropout 0 for bit-exact 2-process resumes
FLAGS = ["--save-interval-updates", "5", "--disable-validation", "--seed", "3", "--dropout", "0",
         "--ddp-backend", "legacy_ddp", "--distributed-backend", "gloo"]
TIMEOUT = 120  # per launch; each takes seconds


def train_args(data, save_dir, *flags, max_update, batch_size=4):
    """fairseq-train's arguments (after the program) for the tiny model of test_cli.py."""
    return [data, *TASK, *MODEL, "--criterion", "tarm_lm_loss", "--num-memory-tokens", "4",
            "--memory-ema-alpha", "0.5", "--bptt-segments", "2", "--batch-size", str(batch_size),
            "--optimizer", "adam", "--lr", "3e-3", "--max-update", str(max_update), "--cpu",
            "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--log-format", "json",
            "--log-interval", "1", "--no-progress-bar", "--num-workers", "0", *FLAGS, *flags]


def torchrun(port, *opts, nproc=2):
    return ["torchrun", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(port), *opts, "--no-python", LAUNCHER]


def torchrun_restarting(port, nproc=2):
    """torchrun that restarts its ranks once; the rendezvous store is not shared with the
    ranks (a fresh one per attempt), see docs/several_machines.md."""
    return ["torchrun", "--nproc_per_node", str(nproc), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", "1", "--no-python", LAUNCHER]


FRESH_STORE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def params(ckpt):
    return {k: v for k, v in ckpt["model"].items() if torch.is_tensor(v) and v.is_floating_point()}


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def carried(ckpt):
    """The training streams' carried memory, [streams, m, d], in stream order
    (rank r's row b is stream r * batch_size + b)."""
    extra = ckpt["model"]["carried._extra_state"]
    if extra["world_size"] == 1:
        return extra["carried"]["train"]
    per_rank = extra["per_rank"]["train"]
    return per_rank.reshape(-1, *per_rank.shape[2:])


class Job:
    """Processes started for one test, all marked with TARM_TEST_JOB."""

    def __init__(self):
        self.id = uuid.uuid4().hex
        self.popens = []

    def env(self, extra=None):
        env = dict(os.environ)
        env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(forkserver())  # the fork server's shims, as conftest.run
        env["TARM_TEST_JOB"] = self.id
        env.update(extra or {})
        return env

    def start(self, cmd, log, env=None):
        """Start ``cmd`` in a session of its own, stdout and stderr to the file ``log``."""
        with open(log, "w") as f:
            p = subprocess.Popen(cmd, cwd=ROOT, env=self.env(env), stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.popens.append(p)
        return p

    def run(self, cmd, env=None):
        return run(cmd, env={"TARM_TEST_JOB": self.id, **(env or {})}, timeout=TIMEOUT)

    def pids(self, **want):
        """Live processes of this job whose environment has every ``NAME=value`` of ``want``."""
        marks = [f"TARM_TEST_JOB={self.id}".encode()] + [f"{k}={v}".encode() for k, v in want.items()]
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if all(m in env for m in marks):
                found.append(int(d))
        return found

    def kill(self, **want):
        """SIGKILL this job's processes (those matching ``want``) until none is left."""
        deadline = time.monotonic() + 20
        while True:
            pids = self.pids(**want)
            if not pids:
                break
            assert time.monotonic() < deadline, f"processes survive SIGKILL: {pids}"
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
            for p in self.popens:
                p.poll()  # reap ours: a zombie's environment reads empty


@pytest.fixture
def job():
    j = Job()
    yield j
    j.kill()
    for p in j.popens:
        p.wait(timeout=10)


def wait_for(log, pattern, popens, after=0, timeout=TIMEOUT):
    """The first match of ``pattern`` in the file ``log`` from offset ``after``."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log) as f:
            text = f.read()
        m = re.compile(pattern).search(text, after)
        if m:
            return m
        if time.monotonic() > deadline or all(p.poll() is not None for p in popens):
            pytest.fail(f"no /{pattern}/ in {log}:\n{text[-3000:]}")
        time.sleep(0.05)


def read(log):
    with open(log) as f:
        return f.read()


@pytest.fixture(scope="module")
def one_process(ptb_small, tmp_path_factory):
    """One process with the whole batch of 8 streams, 10 updates: (losses, save dir)."""
    save = tmp_path_factory.mktemp("one_process")
    p = run(["fairseq-train", *train_args(ptb_small[0], save, max_update=10, batch_size=8)], timeout=TIMEOUT)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return train_losses(p.stdout + p.stderr), save


# ------------------------------------------------------------------ 1. two torchrun nodes
def two_nodes(job, data, save, tmp_path, tag, max_update):
    """Two torchrun agents, --nnodes 2 --node_rank 0/1, one process each; rank 0's log."""
    port = free_port()
    logs = [tmp_path / f"{tag}_node{r}.log" for r in (0, 1)]
    procs = [job.start(torchrun(port, "--nnodes", "2", "--node_rank", str(r), nproc=1) +
                       train_args(data, save, max_update=max_update), logs[r]) for r in (0, 1)]
    for p, log in zip(procs, logs):
        try:
            p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"timeout: {read(log)[-3000:]}")
        assert p.returncode == 0, read(log)[-3000:]
    return read(logs[0])


def test_two_torchrun_nodes_match_one_process_and_resume_each_ranks_memory(ptb_small, one_process,
                                                                            tmp_path, job):
    data, _ = ptb_small
    one, one_dir = one_process
    save = tmp_path / "two_nodes"
    log = two_nodes(job, data, save, tmp_path, "first", max_update=5)
    assert "training on 2 devices" in log
    two = train_losses(log)
    assert sorted(two) == list(range(1, 6))
    for u in two:  # 2 nodes x 4 streams == 1 process x 8 streams
        assert two[u] == pytest.approx(one[u], abs=2e-3), f"update {u}"
    # rank r's memory is streams 4r..4r+3 of the one process's
    ref5 = carried(checkpoint(one_dir / "checkpoint_1_5.pt"))
    assert (carried(checkpoint(save / "checkpoint_last.pt")) - ref5).abs().max() < 1e-4

    log = two_nodes(job, data, save, tmp_path, "resumed", max_update=10)
    assert "Loaded checkpoint" in log and "@ 5 updates" in log
    resumed = train_losses(log)
    assert sorted(resumed) == list(range(6, 11))
    for u in resumed:
        assert resumed[u] == pytest.approx(one[u], abs=2e-3), f"update {u}"
    # each rank read its own memory back: a swapped or restarted (E_0) memory would
    # not reach the one process's memory after update 10
    last, ref10 = checkpoint(save / "checkpoint_last.pt"), checkpoint(one_dir / "checkpoint_last.pt")
    assert (carried(last) - carried(ref10)).abs().max() < 1e-4
    assert max_diff(params(last), params(ref10)) < 1e-3  # Adam amplifies the sums' order


# ----------------------------------------------------------------------- 2. SLURM, srun
SCONTROL = """#!/usr/bin/env bash
# stand-in for `scontrol show hostnames NODELIST`: node i of the list is 127.0.0.i
[[ "$1 $2" == "show hostnames" && $# == 3 ]] || {{ echo "stand-in scontrol: only 'show hostnames LIST'" >&2; exit 1; }}
echo "$3" >> {calls}
for ((i = 1; i <= SLURM_NNODES; i++)); do echo "127.0.0.$i"; done
"""
SRUN = """#!/usr/bin/env bash
# stand-in for srun inside an allocation: starts SLURM_NTASKS tasks, SLURM_NTASKS / SLURM_NNODES
# per node, with the variables srun sets; fails if a task fails (options are ignored)
while [[ $1 == -* ]]; do shift; done
per_node=$((SLURM_NTASKS / SLURM_NNODES)) pids=()
for ((t = 0; t < SLURM_NTASKS; t++)); do
    SLURM_PROCID=$t SLURM_LOCALID=$((t % per_node)) SLURM_NODEID=$((t / per_node)) \\
        SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST SLURM_STEP_NUM_TASKS=$SLURM_NTASKS "$@" &
    pids+=($!)
done
status=0
for p in "${{pids[@]}}"; do wait "$p" || status=$?; done
exit $status
"""


def slurm_allocation(tmp_path):
    """PATH entry with stand-in srun and scontrol, and the variables of a 2-node, 1-task-per-node job."""
    bin_dir = tmp_path / "slurm_bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", SCONTROL.format(calls=tmp_path / "scontrol_calls")), ("srun", SRUN.format())):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NNODES": "2", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1"}
    return str(bin_dir), env


def test_fairseqs_slurm_inference_on_cpu(tmp_path, monkeypatch):
    """What the launcher works around: fairseq 0.12 reads the master from scontrol as the
    launcher does, but counts GPUs for the rank and world size (0 on CPU)."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.distributed import utils as dist_utils
    from omegaconf import OmegaConf

    bin_dir, env = slurm_allocation(tmp_path)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    for k, v in {**env, "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    cfg = OmegaConf.structured(FairseqConfig()).distributed_training
    cfg.distributed_world_size, cfg.distributed_port = 2, 29999
    dist_utils.infer_init_method(cfg)
    assert cfg.distributed_init_method == "tcp://127.0.0.1:29999"  # what the launcher passes
    # rank node_id * cuda_device_count() and world size nnodes * cuda_device_count(), and it
    # would spawn min(cuda_device_count(), world size) = 0 processes and exit 0
    assert torch.cuda.device_count() == 0
    assert (cfg.distributed_rank, cfg.distributed_world_size, cfg.distributed_no_spawn) == (0, 0, False)


def test_slurm_recipe_on_cpu_matches_one_process(ptb_small, one_process, tmp_path, job):
    """Two SLURM tasks on two (loopback) nodes; then torchrun on one node resumes their
    checkpoint: the same world size, so each rank takes its own memory back."""
    data, _ = ptb_small
    one, one_dir = one_process
    bin_dir, env = slurm_allocation(tmp_path)
    env.update(PATH=bin_dir + os.pathsep + job.env()["PATH"], PORT=str(free_port()))
    save = tmp_path / "slurm"
    p = job.run(["bash", "examples/slurm/train_cpu.sbatch", *train_args(data, save, max_update=5)], env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "training on 2 devices" in out
    assert (tmp_path / "scontrol_calls").read_text().split() == ["node[1-2]", "node[1-2]"]  # each task asked
    assert re.search(r"distributed init \(rank 0\): tcp://127\.0\.0\.1:\d+", out)
    two = train_losses(out)
    assert sorted(two) == list(range(1, 6))
    for u in two:
        assert two[u] == pytest.approx(one[u], abs=2e-3), f"update {u}"
    per_rank = checkpoint(save / "checkpoint_last.pt")["model"]["carried._extra_state"]["per_rank"]["train"]
    assert per_rank.shape[0] == 2 and not torch.equal(per_rank[0], per_rank[1])

    p = job.run(torchrun(free_port()) + train_args(data, save, max_update=10))
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    resumed = train_losses(out)
    assert sorted(resumed) == list(range(6, 11))
    for u in resumed:
        assert resumed[u] == pytest.approx(one[u], abs=2e-3), f"update {u}"
    ref10 = checkpoint(one_dir / "checkpoint_last.pt")
    assert (carried(checkpoint(save / "checkpoint_last.pt")) - carried(ref10)).abs().max() < 1e-4


def test_launcher_names_what_is_missing(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE"))}
    p = subprocess.run(["bash", LAUNCHER, "DATA"], env=clean, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "run under torchrun" in p.stderr
    bin_dir, env = slurm_allocation(tmp_path)
    env = {**clean, **env, "SLURM_PROCID": "0", "PATH": bin_dir + os.pathsep + clean["PATH"]}
    p = subprocess.run(["bash", LAUNCHER, "DATA"], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--distributed-port" in p.stderr
    # restarts with the agent's store lent to the ranks (torchrun's static rendezvous)
    env = {**clean, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "TORCHELASTIC_MAX_RESTARTS": "1",
           "TORCHELASTIC_USE_AGENT_STORE": "True"}
    p = subprocess.run(["bash", LAUNCHER, "DATA"], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in p.stderr


# ------------------------------------------------- 3. a killed rank, a killed job
def test_killed_rank_and_killed_job_resume_exactly(ptb_small, tmp_path, job):
    """torchrun --max-restarts 1: rank 1 is SIGKILLed after a checkpoint, the agent
    restarts both ranks from checkpoint_last.pt; then the whole job (agent and ranks)
    is SIGKILLed and the same command relaunched. The weights at the end are the
    uninterrupted run's."""
    data, _ = ptb_small
    n = 25
    straight = job.run(torchrun(free_port()) + train_args(data, tmp_path / "straight", max_update=n))
    assert straight.returncode == 0, (straight.stdout + straight.stderr)[-3000:]

    save, log = tmp_path / "killed", tmp_path / "killed.log"
    cmd = torchrun_restarting(free_port()) + train_args(data, save, max_update=n)
    p = job.start(cmd, log, env=FRESH_STORE)
    saved = wait_for(log, r"Saved checkpoint \S+ \(epoch 1 @ (\d+) updates", [p])
    assert int(saved.group(1)) < n, "the run ended before the kill"
    rank1 = job.pids(RANK="1", TORCHELASTIC_RESTART_COUNT="0")
    assert len(rank1) == 1, rank1
    os.kill(rank1[0], signal.SIGKILL)
    loaded = wait_for(log, r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch 1 @ (\d+) updates\)", [p],
                      after=saved.end())
    assert int(loaded.group(1)) >= int(saved.group(1))
    assert job.pids(TORCHELASTIC_RESTART_COUNT="1"), "the agent restarted the workers"
    again = wait_for(log, r"Saved checkpoint \S+ \(epoch 1 @ (\d+) updates", [p], after=loaded.end())
    assert int(again.group(1)) < n, "the run ended before the job was killed"
    job.kill()  # the agent and both ranks, as a crashed machine or a preempted job
    assert p.wait(timeout=10) != 0

    relaunched = job.run(cmd, env=FRESH_STORE)
    out = relaunched.stdout + relaunched.stderr
    assert relaunched.returncode == 0, out[-3000:]
    resumed_at = re.findall(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch 1 @ (\d+) updates\)", out)
    assert len(resumed_at) == 1 and int(again.group(1)) <= int(resumed_at[0]) < n, out[-3000:]
    assert max(train_losses(out)) == n
    a, b = checkpoint(tmp_path / "straight" / "checkpoint_last.pt"), checkpoint(save / "checkpoint_last.pt")
    assert max_diff(params(a), params(b)) < 1e-6
    assert torch.allclose(carried(a), carried(b), atol=1e-6)


# ---------------------------------------------------------- 4. two runs, one save dir
def test_save_dir_lock_dies_with_its_holder(tmp_path):
    from tarm_plugin.savedir import LOCK_FILE, lock_save_dir

    save = tmp_path / "s"
    save.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"f = open({str(save / LOCK_FILE)!r}, 'a+'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
         "f.write(f'pid {os.getpid()} on test'); f.flush(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_save_dir(str(save)) == f"pid {holder.pid} on test"
    finally:
        holder.kill()
        holder.wait()
    assert lock_save_dir(str(save)) is None  # left by a dead process: never blocks
    assert (save / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    assert lock_save_dir(str(save)) is None  # this process holds it already


def test_second_run_into_a_held_save_dir_stops(ptb_small, tmp_path, job):
    """The agent of a 2-rank run is SIGKILLed and its ranks train on (sessions of their
    own); the same command again stops on both ranks with one line naming rank 0."""
    data, _ = ptb_small
    save, log = tmp_path / "s", tmp_path / "first.log"
    cmd = torchrun(free_port()) + train_args(data, save, "--no-save", max_update=100000)
    # the real torchrun: the fork server's would take the ranks along when its shim dies
    agent = job.start([os.path.join(BIN, "torchrun"), *cmd[1:]], log)
    wait_for(log, r"train_inner", [agent])
    holder = (save / "tarm.lock").read_text()
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait(timeout=10)
    ranks = job.pids(RANK="0") + job.pids(RANK="1")
    assert len(ranks) == 2, "the ranks outlive their agent"

    p = job.run(cmd)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    errors = [line for line in out.splitlines() if "tarm: error" in line]
    assert len(errors) == 1, out[-3000:]
    assert f"--save-dir {save} is in use by another run ({holder.strip()}," in errors[0]
    assert "train_inner" not in out
    assert sorted(job.pids(RANK="0") + job.pids(RANK="1")) == sorted(ranks), "the first run trains on"

    job.kill()  # the orphaned ranks: their lock goes with them
    p = job.run(["fairseq-train", *train_args(data, save, "--no-save", max_update=2)])
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert (save / "tarm.lock").read_text() != holder
