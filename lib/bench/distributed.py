"""`make bench`'s distributed rows: one run trained through `fit` three ways on the same tiles,

  plain       one process, no torchrun (what a run with nproc_per_node=1 does);
  torchrun 1  one process under torchrun, DistributedDataParallel around the network: the cost of the
              engine alone (start-up, the process group, DDP's hooks);
  torchrun N  N processes (as many as the machine has GPUs, or 2 on a CPU), each batch shared;

with the training images per second each run's history records (rank 0's clock over the global
batches; the median of the epochs after the first, which pays for warm-up), the scaling efficiency
rate(N) / (N x rate(1 under torchrun)), the loop's overhead of torchrun with one process against the
plain run, and the seconds torchrun takes to start. Measured, never asserted.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from lib.config import run_config
from lib.training.loop import fit


def processes_to_measure(device: torch.device) -> int:
    """N: every GPU on CUDA (at least 1), 2 processes on a CPU (gloo, the cores shared)."""
    return max(1, torch.cuda.device_count()) if device.type == "cuda" else 2


def distributed_record(data_dir: str, device: torch.device, model: str = "baseline", epochs: int = 3, batch_size: int = 32,
                       subset: int = 512, processes: int | None = None, cache_dir: str = "") -> dict:  # fmt: skip
    """Train registry run `model` ("baseline" or a resnet50 run's model through resnet50-10ep) on
    `subset` tiles for `epochs` epochs at global `batch_size`, plain, under torchrun with one
    process, and with `processes` (processes_to_measure by default); returns the record."""
    n = processes or processes_to_measure(device)
    run = "baseline" if model == "baseline" else "resnet50-10ep"
    # The full profile's tile and crop on a GPU (ResNet50 at 256 cropped to 200); the quick one's on a CPU.
    common = {"data_dir": data_dir, "profile": "full" if device.type == "cuda" else "quick", "device": device.type, "epochs": epochs, "batch_size": batch_size, "subset": subset,
              "checkpoint_every_s": 1e9, "weights": None if model == "baseline" else "none", "fresh": True}  # fmt: skip
    if cache_dir:
        common["cache_dir"] = cache_dir
    common = {k: v for k, v in common.items() if v is not None}
    record = {"kind": "distributed", "model": model, "device": device.type, "processes": n, "epochs": epochs, "batch_size": batch_size,
              "subset": subset}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="histo-bench-ddp-") as scratch:
        ways = {"plain": 1, "torchrun_1": 1, f"torchrun_{n}": n}
        for name, nproc in ways.items():
            config = run_config(run, runs_dir=str(Path(scratch) / name), nproc_per_node=nproc, **common)
            if name == "torchrun_1":
                from lib.training.loop import _fit_under_torchrun  # nproc_per_node=1 never starts torchrun by itself

                run_it = _fit_under_torchrun
            else:
                run_it = fit
            print(f"bench: {run} {name.replace('_', ' ')} ({nproc} process{'es' if nproc > 1 else ''}), {epochs} epochs of {subset} tiles ...",
                  flush=True)  # fmt: skip
            start = time.perf_counter()
            result = run_it(config)
            wall = time.perf_counter() - start
            rates = [row["train_images_per_s"] for row in result.history]
            record[name] = statistics.median(rates[1:] or rates)
            record[f"{name}_wall_s"] = wall
            record[f"{name}_loop_s"] = result.summary["elapsed_s"]
    rate_n, rate_1 = record[f"torchrun_{n}"], record["torchrun_1"]
    record["scaling_efficiency"] = rate_n / (n * rate_1)
    record["torchrun_1_overhead"] = 1 - rate_1 / record["plain"]  # the loop's: images/s lost to DDP with one process
    record["torchrun_startup_s"] = (record["torchrun_1_wall_s"] - record["torchrun_1_loop_s"]) - (record["plain_wall_s"] - record["plain_loop_s"])
    return record


def describe(record: dict) -> str:
    n = record["processes"]
    return (f"  {record['model']} on {record['device']}: plain {record['plain']:.1f} img/s, torchrun 1 process {record['torchrun_1']:.1f} "
            f"(loop overhead {100 * record['torchrun_1_overhead']:+.1f} %, start-up {record['torchrun_startup_s']:.1f} s), torchrun {n} "
            f"processes {record[f'torchrun_{n}']:.1f} img/s: scaling efficiency {record['scaling_efficiency']:.2f} "
            f"(= {record[f'torchrun_{n}']:.1f} / ({n} x {record['torchrun_1']:.1f}))")  # fmt: skip
