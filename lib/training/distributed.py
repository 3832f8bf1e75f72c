"""A run on several processes, on PyTorch's own engine: `torchrun` starts them (nproc_per_node on each
node), torch.distributed joins them (nccl on CUDA, gloo on the CPU), and DistributedDataParallel
all-reduces their gradients after every backward pass, so that every process holds the same weights.

How a run means the same on one process or many (lib/training/loop.py follows it):
- each epoch's tile order is drawn from seed + epoch, the same on every rank, and each global batch of
  `batch_size` tiles is shared among the ranks (lib/data/batches.py, EpochOrder, as DistributedSampler
  with its set_epoch); each rank's loss is its share's summed loss times world / batch_size, so DDP's
  mean over ranks is the global batch's mean gradient, and learning rate and schedule mean the same;
- each rank draws its own augmentation (rank 0 the stream a one-process run draws);
- validation is shared the same way and its per-batch sums all-reduced, so validation loss and accuracy,
  and the plateau schedule stepping on that loss, are a one-process run's on the same tiles (batch-norm
  layers aside: in training each rank normalises over its share, as DDP does; SyncBatchNorm would
  all-reduce every layer's statistics, and gloo has none on the CPU);
- rank 0 alone writes the run folder (checkpoints, history, TensorBoard, result.json); every rank
  resumes from the same last.pt, each with its own random state.

Doors: `fit` (lib/training/loop.py) with nproc_per_node > 1 starts
    torchrun --standalone --nproc-per-node N -m lib.training runs/<run>
which trains the run from the config the notebook wrote into runs/<run>/launch.json, relays its
output, and reads the finished run folder. The same entry point starts a run without a notebook, on
one node or several (README: a SLURM example):
    torchrun --standalone --nproc-per-node 4 -m lib.training resnet50-10ep epochs=20
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint host:29500 -m lib.training ...
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lib.config import RunConfig
from lib.paths import PROJECT_ROOT, pythonpath_with_project

ENTRY_MODULE = "lib.training"  # python -m lib.training: the entry point torchrun starts (lib/training/__main__.py)
LAUNCH_FILE = "launch.json"  # runs/<run>/launch.json: the config a notebook's fit hands to torchrun's processes
FAILED_MARK = "FAILED:"  # how a rank's own failure line starts on stderr, for the launcher to find
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
STOP_WAIT_S = 15  # after Ctrl-C: how long torchrun gets to stop its processes before they are killed (below the pipeline's KERNEL_STOP_S, 20 s, after which it kills the kernel and torchrun with it, but not the ranks, which torchrun starts in sessions of their own)


class DistributedRunFailed(RuntimeError):
    """A run under torchrun ended without its result; the message names the rank, what it said, what
    the run folder keeps, and the command that resumes it."""


@dataclass(frozen=True)
class Ranks:
    """Which process this is among those that train one run."""

    rank: int = 0  # 0 to world - 1; rank 0 writes the run folder
    world: int = 1  # processes in all, on every node
    local_rank: int = 0  # this process's number on its node (its GPU's, on CUDA)
    local_world: int = 1  # processes on this node (nproc_per_node)
    backend: str = ""  # "nccl" or "gloo"; "" for one process without torchrun

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return bool(self.backend)

    def describe(self) -> dict:
        """For result.json: how many processes trained the run, on how many nodes, joined how."""
        return {"processes": self.world, "nodes": self.world // self.local_world, "nproc_per_node": self.local_world,
                "backend": self.backend or "none (one process)"}  # fmt: skip


ONE_PROCESS = Ranks()


def under_torchrun() -> bool:
    """True in a process torchrun started (it sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def check_processes(config: RunConfig, local_world: int | None = None) -> None:
    """Refuse, before anything trains, what a run on `local_world` processes per node (the config's
    nproc_per_node by default) cannot do here: several processes on one GPU (fewer CUDA devices than
    processes). Raises ValueError naming the parameter and what to do."""
    n = local_world or config.nproc_per_node
    if n < 2:
        return
    if _wants_cuda(config.device):
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ValueError(f"device={config.device!r} with nproc_per_node={n} for {config.run} asks for {n} GPUs, but PyTorch sees none "
                             "here: use device='cpu' (the processes share the CPU's cores, gloo), or run on a machine with GPUs")  # fmt: skip
        if gpus < n:
            raise ValueError(f"nproc_per_node={n} for {config.run} asks for one GPU per process, but PyTorch sees {gpus} here "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): several processes on one GPU "
                             f"are not supported. Use nproc_per_node={max(gpus, 1)}, or device='cpu' for CPU processes (gloo)")  # fmt: skip


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def join(config: RunConfig) -> tuple[Ranks, torch.device]:
    """In a process torchrun started: join the run's process group (nccl on CUDA, each process on the
    GPU of its local rank; gloo on the CPU) and return this process's ranks and device. Raises
    ValueError when torchrun's processes per node differ from the config's nproc_per_node, or for
    several processes on one GPU."""
    env = {name: int(os.environ[name]) for name in TORCHRUN_VARIABLES}
    if env["LOCAL_WORLD_SIZE"] != config.nproc_per_node:
        raise ValueError(f"torchrun started {env['LOCAL_WORLD_SIZE']} process(es) per node (--nproc-per-node), but {config.run}'s config "
                         f"says nproc_per_node={config.nproc_per_node}: give both the same number")  # fmt: skip
    check_processes(config, env["LOCAL_WORLD_SIZE"])
    if _wants_cuda(config.device):
        device = torch.device("cuda", env["LOCAL_RANK"])
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    ranks = Ranks(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], backend)
    return ranks, device


def leave(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (nothing with one process)."""
    if ranks.distributed:
        dist.barrier()


def in_turns(ranks: Ranks, work) -> object:
    """`work()` on every rank, rank 0 first, then each node's local rank 0, then the rest, so that what
    the first writes (the decoded tile cache, on a shared or a node's own disk) the others read rather
    than write again at the same time. Returns this rank's result."""
    turns = (ranks.rank == 0, ranks.local_rank == 0 and ranks.rank != 0, ranks.local_rank != 0)
    result = None
    for mine in turns:
        if mine:
            result = work()
        barrier(ranks)
    return result


def sum_across(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """`values` summed over the ranks (all-reduce), on its own device; itself with one process."""
    if ranks.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gathered(value, ranks: Ranks) -> list:
    """Every rank's `value` (picklable), in rank order: [value] with one process."""
    if not ranks.distributed:
        return [value]
    values = [None] * ranks.world
    dist.all_gather_object(values, value)
    return values


def share_buffers(model: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's buffers (batch norm's running statistics) on every rank: each rank updated its own from
    its share of the last batch; validation scores, and checkpoints keep, rank 0's network."""
    if ranks.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def data_parallel(model: torch.nn.Module, ranks: Ranks, device: torch.device):
    """What the training step calls: DistributedDataParallel around `model` under torchrun, `model`
    itself with one process."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def rank_seed(seed: int, ranks: Ranks) -> int | None:
    """The seed of rank r's own augmentation stream: None for rank 0 (it keeps the stream a one-process
    run draws), a seed from numpy's SeedSequence of (seed, rank) for the others (independent streams)."""
    if ranks.rank == 0:
        return None
    return int(np.random.SeedSequence([seed, ranks.rank]).generate_state(1, dtype=np.uint64)[0] % 2**63)


# ---------------------------------------------------------------------------------------------------
# The launcher: a notebook's fit (nproc_per_node > 1) runs torchrun and reads what it wrote.


def torchrun_command(nproc: int, arguments: list[str]) -> list[str]:
    """torchrun on one node (--standalone: its own rendezvous on a free port), as the venv's Python
    runs it (`python -m torch.distributed.run` is the `torchrun` script)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *arguments]


def shown_command(command: list[str]) -> str:
    """The command as a user would type it: `torchrun ...` for the Python that runs torch.distributed.run."""
    if command[1:3] == ["-m", "torch.distributed.run"]:
        command = ["torchrun", *command[3:]]
    return shlex.join(command)


def write_launch_file(config: RunConfig, run_dir: Path) -> Path:
    """runs/<run>/launch.json: the config torchrun's processes train (every field, as config.json)."""
    from lib.files import write_whole

    path = Path(run_dir) / LAUNCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(dataclasses.asdict(config), indent=2).encode(), "runs_dir", tmp=path.with_name(f"{path.name}.{os.getpid()}.tmp"))
    return path


def process_environment(nproc: int, device: str) -> dict:
    """The environment of torchrun's processes: the workbook importable, progress as plain lines (the
    launcher relays them), and on the CPU the cores shared among the processes (torchrun would set
    OMP_NUM_THREADS=1 and warn)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath_with_project(env.get("PYTHONPATH", ""))
    env["HISTO_PROGRESS"] = "plain"
    env["PYTHONUNBUFFERED"] = "1"
    if not _wants_cuda(device):
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


EPOCH_LINE = re.compile(r"\|\| \[(\d+)/(\d+)\]")


def run_torchrun(command: list[str], env: dict, title: str, epochs: int, first_epoch: int = 0) -> tuple[int, list[str]]:
    """Run `command` (torchrun), relaying its output line by line to this process's stdout under an
    epoch bar that follows rank 0's epoch lines (rank 0's own epoch bar, which would repeat it, is
    not relayed). Returns (exit status, the last 400 lines). Ctrl-C (a
    notebook's interrupt, the pipeline's SIGINT or SIGTERM) reaches torchrun too, which stops its
    processes (each stops as a one-process run does: its last checkpoints whole); after STOP_WAIT_S
    they are killed; KeyboardInterrupt is raised again."""
    from lib.progress import progress

    tail: collections.deque[str] = collections.deque(maxlen=400)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, cwd=PROJECT_ROOT)
    bar = progress(desc=title, unit="epoch", total=epochs, initial=first_epoch)
    own_bar = re.compile(rf"^{re.escape(title)}:\s+\d+%\|")
    try:
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            if not own_bar.match(line):
                bar.write(line.rstrip("\n"), file=sys.stdout)
            match = EPOCH_LINE.search(line)
            if match:
                bar.update(int(match.group(1)) + 1 - bar.n)
        status = process.wait()
    except KeyboardInterrupt:
        _stop(process)
        raise
    finally:
        bar.close()
    return status, list(tail)


def _stop(process: subprocess.Popen) -> None:
    """torchrun, asked to stop as Ctrl-C asks it (it forwards the signal to its processes), unless it
    is already stopping (a Ctrl-C in a terminal, or the pipeline's interrupt, reaches the whole process
    group at once, and a second signal would cut its shutdown short); killed if it has not ended
    within STOP_WAIT_S."""
    try:
        process.wait(2)
        return
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        workers = _descendants(process.pid)  # read before torchrun goes: its workers would be left training, orphaned
        process.kill()
        process.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, theirs, ...), read from Linux's /proc (elsewhere none)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the command
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def failed_rank(lines: list[str]) -> tuple[int | None, str]:
    """(the rank whose failure ended the run, what it said) from torchrun's relayed output: a rank's own
    FAILED line (lib.training's entry point prints one for any exception) that is not a communication
    error after another rank ended; else the root cause torchrun names (a rank killed by a signal prints
    nothing of its own); else (None, "")."""
    own = []
    for line in lines:
        match = re.search(rf"{FAILED_MARK} rank (\d+) of \d+ \(([^)]*)\): (.*?)(?: \[host [^\]]*\])?$", line)
        if match:
            own.append((int(match.group(1)), match.group(2), match.group(3)))
    first_cause = [(rank, said) for rank, kind, said in own if kind not in ("communication", "interrupted")]
    if first_cause:
        return first_cause[0]
    text = "\n".join(lines)
    root = re.search(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)(.*?)(?:traceback\s*:\s*(.*?)\n|$)",
                     text, re.S)  # fmt: skip
    if root:
        rank, code = int(root.group(1)), int(root.group(2))
        said = root.group(4).strip() if root.group(4) else ""
        if code < 0:
            said = f"killed by signal {signal.Signals(-code).name}" + (f" ({said})" if said and "Signal" not in said else "")
        return rank, said or f"exit status {code}"
    if own:
        return own[0][0], own[0][2]
    return None, ""


# ---------------------------------------------------------------------------------------------------
# The entry point: python -m lib.training RUN_DIR|RUN [name=value ...], under torchrun.

USAGE = """usage: torchrun [torchrun options] -m lib.training RUN_DIR|RUN [name=value ...]

Trains one run on the processes torchrun starts (torch.distributed: nccl on CUDA, gloo on the CPU).
  RUN_DIR   a run folder holding launch.json (what a notebook's fit writes for nproc_per_node > 1)
  RUN       a registry run (baseline, resnet50-10ep, ...), with any RunConfig field as name=value;
            nproc_per_node follows torchrun's --nproc-per-node unless given
Examples:
  torchrun --standalone --nproc-per-node 2 -m lib.training resnet50-10ep epochs=3 device=cpu
  torchrun --standalone --nproc-per-node 2 -m lib.training runs/resnet50-10ep resume=true
"""


def config_from_arguments(argv: list[str]) -> RunConfig:
    """The run's config from the entry point's arguments (USAGE). Raises ValueError, TypeError or
    ParameterError naming the argument."""
    from lib.config import ParameterError, convert, run_config, validated

    if not argv or argv[0].startswith("-"):
        raise ValueError(USAGE)
    target, settings = argv[0], {}
    if os.sep in target and not Path(target).is_dir():
        raise FileNotFoundError(f"{target}: no such run folder (a folder holding {LAUNCH_FILE}); or give a registry run's name: "
                                "-m lib.training resnet50-10ep name=value ...")  # fmt: skip
    for item in argv[1:]:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"python -m lib.training: {item!r} is not name=value (e.g. epochs=3)")
        settings[name.strip()] = value
    launch = Path(target) / LAUNCH_FILE
    if Path(target).is_dir():
        if not launch.is_file():
            raise FileNotFoundError(f"{target} holds no {LAUNCH_FILE} (a run folder that a notebook's fit with nproc_per_node > 1 "
                                    "prepared); give a registry run's name instead: -m lib.training resnet50-10ep name=value ...")  # fmt: skip
        saved = json.loads(launch.read_text())
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        values = {k: v for k, v in saved.items() if k in fields} | {name: convert(name, value) for name, value in settings.items()}
        return validated(RunConfig(**values))
    if "nproc_per_node" not in settings and "LOCAL_WORLD_SIZE" in os.environ:
        settings["nproc_per_node"] = os.environ["LOCAL_WORLD_SIZE"]
    return run_config(target, **settings)


# Errors that say what is wrong in their message (a parameter, a file, a folder in use): no traceback for them.
EXPECTED_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, KeyError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    """Train one run in this process, one of torchrun's. Ranks other than 0 print nothing but their
    failure. A failure on any rank prints one FAILED line naming the rank (for the launcher and for a
    reader of torchrun's log), after the traceback of an unexpected error; rank 0 adds what last.pt
    keeps and how to resume. Exits 1 (130 after Ctrl-C): torchrun then stops the other ranks."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if rank != 0:  # rank 0 tells the run; the others would repeat it
        sys.stdout = open(os.devnull, "w")
        os.environ["HISTO_PROGRESS"] = "off"
    # torchrun stops the other ranks with SIGTERM once one has failed (a scheduler's time limit sends it
    # too): raised here as an exception, so that this rank says so, and rank 0 how to resume.
    signal.signal(signal.SIGTERM, _terminated)
    config = None
    try:
        from lib.training.loop import fit

        config = config_from_arguments(argv)
        fit(config)
    except BaseException as error:
        if isinstance(error, SystemExit) and not error.code:
            raise
        _say_failure(error, rank, world, config, argv)
        return 130 if isinstance(error, KeyboardInterrupt) else 1
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM in a rank: stops it as Ctrl-C does."""


def _terminated(signum, frame):
    raise Terminated()


def _say_failure(error: BaseException, rank: int, world: int, config: RunConfig | None, argv: list[str]) -> None:
    """The FAILED line of a rank (one write, so that the ranks' lines in torchrun's shared output do not
    interleave), and on rank 0 the resume line."""
    from lib.config import ParameterError

    communication = _communication_error(error)
    if not isinstance(error, (*EXPECTED_ERRORS, ParameterError, KeyboardInterrupt)) and not communication:
        traceback.print_exc()
    if isinstance(error, Terminated):
        kind, said = "interrupted", "stopped by SIGTERM (torchrun stops every rank once one has failed; or a time limit)"
    elif isinstance(error, KeyboardInterrupt):
        kind, said = "interrupted", "stopped by Ctrl-C (SIGINT)"
    elif communication:
        kind, said = "communication", "another rank ended, so this one stopped (torchrun's summary names the rank that failed first)"
    else:
        kind = type(error).__name__
        said = " ".join(str(error).split())[:1500] or type(error).__name__
    lines = [f"{FAILED_MARK} rank {rank} of {world} ({kind}): {said} [host {socket.gethostname()}, pid {os.getpid()}]"]
    if rank == 0 and config is not None:
        last = Path(config.run_dir) / "last.pt"
        if last.is_file() and not (Path(config.run_dir) / "result.json").is_file():
            again = [a for a in argv if not a.startswith(("resume=", "fresh="))]
            lines.append(f"{last} keeps the run's last saved epoch; to continue from it, start the same torchrun command with "
                         f"resume=true: ... -m {ENTRY_MODULE} {shlex.join(again)} resume=true (same nproc_per_node and parameters)")  # fmt: skip
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def _communication_error(error: BaseException) -> bool:
    """A collective that failed because another rank ended (its peer closed the connection): a
    consequence, not the cause."""
    return isinstance(error, getattr(dist, "DistError", ())) or any(
        words in str(error) for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted"))
