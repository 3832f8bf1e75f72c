"""Several run notebooks at once (`make run-all JOBS=N`): which devices each one gets, and what its
kernel's environment adds to the pipeline's. Pure bookkeeping; lib/pipeline.py starts the kernels.

With CUDA and two or more GPUs, each run gets GPUs of its own (its `nproc_per_node`, 1 by default)
through CUDA_VISIBLE_DEVICES, and waits while too few are free. With one GPU the runs share it; on
the CPU they share the cores, each kernel's OpenMP and MKL threads set to its share."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from lib.config import ParameterError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def check_jobs(value) -> int:
    """The `jobs` option as a whole number of at least 1. Raises ParameterError naming it."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ParameterError(f"jobs={value!r} is not a whole number of at least 1: it says how many run notebooks execute at once "
                             "(JOBS=2 with make, jobs=2 with python -m lib.pipeline; 1, the default, runs them one after another)")  # fmt: skip
    return int(text)


def processes_of(config) -> int:
    """How many processes train the run together (RunConfig.nproc_per_node, 1 where the field is absent)."""
    return int(getattr(config, "nproc_per_node", 1) or 1)


def visible_gpus(count: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """The names the first `count` GPUs this process sees go by in a child's CUDA_VISIBLE_DEVICES:
    the entries of this process's own CUDA_VISIBLE_DEVICES when it has one (GPU 0 here may be GPU 2
    of the machine, or a UUID), else 0, 1, ..."""
    environ = os.environ if environ is None else environ
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is None:
        return [str(i) for i in range(count)]
    return [name.strip() for name in given.split(",") if name.strip()][:count]


def cpu_cores() -> int:
    """The cores this process may run on (its affinity: taskset, a container's cpuset), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def check_devices(configs: Mapping[str, object], cuda_runs: set[str], jobs: int, gpus: list[str]) -> None:
    """Refuse, by name and before any notebook starts, what JOBS=`jobs` cannot place: a run on CUDA
    that needs more GPUs than the `gpus` visible (it would wait for ever), and, where each run gets
    GPUs of its own (two or more), a run pinned to one GPU by device=cuda:N. `cuda_runs`: the runs
    whose device is CUDA. Raises ParameterError."""
    if jobs == 1:
        return
    for run in sorted(cuda_runs):
        config = configs[run]
        needed = processes_of(config)
        if needed > max(len(gpus), 1):
            raise ParameterError(f"{run} needs {needed} GPUs (nproc_per_node={needed}, one per process), but {len(gpus)} "
                                 f"{'is' if len(gpus) == 1 else 'are'} visible here (CUDA_VISIBLE_DEVICES="
                                 f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): with JOBS={jobs} it would wait for ever. "
                                 f"Give NPROC_PER_NODE={max(len(gpus), 1)} or fewer, or run it on the CPU (DEVICE=cpu)")  # fmt: skip
        # Refused, not kept on its GPU: inside a kernel that sees only its own GPUs, cuda:N names the
        # N-th of those (another GPU, or none), and leaving the kernel all GPUs would put every run on one.
        if len(gpus) >= 2 and ":" in str(config.device):
            raise ParameterError(f"{run}: device={config.device!r} pins it to one GPU, while JOBS={jobs} gives each run GPUs of its own "
                                 f"among the {len(gpus)} here, through its kernel's CUDA_VISIBLE_DEVICES (in which {config.device} "
                                 "names another GPU, or none). Leave DEVICE out (or DEVICE=cuda) and JOBS places the runs, or give "
                                 f"JOBS=1 to run them one after another on {config.device}")  # fmt: skip


@dataclass(frozen=True)
class Placement:
    """Where one run notebook executes: `where` in words for the console, `environment` what its
    kernel's environment adds to the pipeline's, `gpus` the positions taken from the plan's GPUs."""

    where: str
    environment: dict[str, str] = field(default_factory=dict)
    gpus: tuple[int, ...] = ()


class DevicePlan:
    """How `at_once` run notebooks share this machine's `gpus` (their CUDA_VISIBLE_DEVICES names,
    visible_gpus) and `cores`. place() gives a starting run its devices or None while too few GPUs
    are free; release() gives them back when it ends. `environ` (this process's environment by
    default): thread counts already set there are kept, and said."""

    def __init__(self, at_once: int, gpus: list[str], cores: int, environ: Mapping[str, str] | None = None):
        self.at_once, self.gpus, self.cores = at_once, list(gpus), cores
        self.environ = os.environ if environ is None else environ
        self.own_gpus = len(self.gpus) >= 2
        self._free = list(range(len(self.gpus)))

    def describe(self) -> str:
        """How the runs share the machine, for the console's first line."""
        if self.own_gpus:
            return (f"each on GPUs of its own among the {len(self.gpus)} here (CUDA_VISIBLE_DEVICES; a run waits until "
                    "enough are free), or sharing the CPU's cores where a run's device is the CPU")  # fmt: skip
        if self.gpus:
            return "sharing the one GPU (or the CPU's cores where a run's device is the CPU)"
        return f"sharing the CPU's {self.cores} core(s)"

    def free_gpus(self) -> int:
        return len(self._free)

    def place(self, cuda: bool, processes: int = 1) -> Placement | None:
        """The devices for a run starting now: on CUDA with several GPUs, the `processes` lowest
        free ones (None when fewer are free); on CUDA with one GPU, that GPU, shared; on the CPU, a
        share of the cores, max(1, cores // (at_once * processes)) threads per process."""
        if cuda and self.own_gpus:
            if len(self._free) < processes:
                return None
            taken, self._free = tuple(self._free[:processes]), self._free[processes:]
            names = ",".join(self.gpus[i] for i in taken)
            return Placement(f"GPU{'s' if len(taken) > 1 else ''} {names} of its own", {"CUDA_VISIBLE_DEVICES": names}, taken)
        if cuda:
            return Placement("the GPU, shared with the runs beside it")
        threads = max(1, self.cores // (self.at_once * processes))
        environment = {name: str(threads) for name in THREAD_VARIABLES if name not in self.environ}
        kept = [f"{name}={self.environ[name]}" for name in THREAD_VARIABLES if name in self.environ]
        share = f"{threads} thread{'s' if threads > 1 else ''} of the {self.cores} core(s)"
        return Placement(f"the CPU, {share}" + (f" ({', '.join(kept)} kept, as set in the environment)" if kept else ""), environment)

    def release(self, placement: Placement) -> None:
        self._free = sorted({*self._free, *placement.gpus})
