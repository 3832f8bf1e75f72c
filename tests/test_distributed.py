"""A run on several processes under torchrun (lib/training/distributed.py): on this CPU, gloo and two
processes on the session's tiny data with the baseline CNN (no batch norm: each rank's share would
otherwise be normalised over itself, and the comparison with one process would not be exact in intent)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lib.config import run_config
from lib.paths import PROJECT_ROOT
from lib.report.facts import run_facts
from lib.data import EpochOrder
from lib.training import distributed, loop
from lib.training.run_folder import RunFolder

# Without augmentation both runs see the same tiles in the same batches and draw nothing else.
TINY_RUN = {"profile": "quick", "device": "cpu", "epochs": 2, "subset": 48, "augment": False, "checkpoint_every_s": 0, "seed": 0}


def tiny_config(tiny_data, runs_dir, **extra):
    return run_config("baseline", data_dir=str(tiny_data), runs_dir=str(runs_dir), **(TINY_RUN | extra))


def weights_of(run_dir, which="last"):
    return RunFolder(run_dir).load_checkpoint(which)["model"]


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"


@pytest.mark.parametrize("batch_size", [8, 7], ids=["even shares", "uneven shares (4 and 3)"])
def test_two_processes_train_the_weights_and_figures_of_one(tiny_data, tmp_path, capsys, batch_size):
    """Same initial weights, same tile order, global batch B on one process and on two: after two
    epochs the same weights (float tolerance), and every epoch's training and validation figures."""
    one = loop.fit(tiny_config(tiny_data, tmp_path / "one", batch_size=batch_size))
    capsys.readouterr()
    two = loop.fit(tiny_config(tiny_data, tmp_path / "two", batch_size=batch_size, nproc_per_node=2))
    shown = capsys.readouterr().out
    assert_same_weights(weights_of(tmp_path / "one" / "baseline", "initial"), weights_of(tmp_path / "two" / "baseline", "initial"), 0)
    assert_same_weights(weights_of(tmp_path / "one" / "baseline"), weights_of(tmp_path / "two" / "baseline"))
    for a, b in zip(one.history, two.history, strict=True):
        for name in ("train_loss", "valid_loss"):
            assert b[name] == pytest.approx(a[name], rel=1e-5), name
        for name in ("train_accuracy", "valid_accuracy", "lr"):
            assert b[name] == a[name], name
    assert two.summary["processes"] == {"processes": 2, "nodes": 1, "nproc_per_node": 2, "backend": "gloo"}
    assert one.summary["processes"]["processes"] == 1
    # The report's environment table says how each run was trained.
    assert run_facts(two).processes == "2 processes under torchrun (gloo, 2 per node, 1 node; DistributedDataParallel)"
    assert run_facts(one).processes == "one process"
    # The notebook shows the run as a one-process run does: the command, the data lines, the epoch lines.
    assert "torchrun --standalone --nproc-per-node 2 -m lib.training" in shown
    assert len(re.findall(r"\|\| \[\d/2\], train_loss", shown)) == 2 and "each global batch of" in shown


WRITES_NOTHING_BUT_RANK_0 = """
    import os
    import lib.files
    import torch.utils.tensorboard
    from lib.training import distributed

    if os.environ["RANK"] != "0":  # any file this rank writes (run folder, tile cache) or TensorBoard stops the run
        def refuse(*args, **kwargs):
            raise AssertionError(f"rank {os.environ['RANK']} wrote {args[:1]}")
        lib.files.write_whole = refuse
        torch.utils.tensorboard.SummaryWriter.__init__ = refuse
    raise SystemExit(distributed.main())
"""


def entry_script(tmp_path, name, body):
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(body))
    return (str(script),)


def test_only_rank_0_writes_the_run_folder_and_the_tile_cache(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "runs", batch_size=8, nproc_per_node=2, epochs=1, cache_dir=str(tmp_path / "cache"))
    result = loop._fit_under_torchrun(config, entry=entry_script(tmp_path, "rank0_writes", WRITES_NOTHING_BUT_RANK_0))
    folder = RunFolder(tmp_path / "runs" / "baseline")
    assert result.summary["epochs"] == 1 and folder.check_whole()
    written = sorted(path.name for path in folder.path.iterdir())
    assert written == ["best.pt", "config.json", "history.json", "initial.pt", "last.pt", "launch.json", "result.json", "split.csv",
                       "tensorboard"]  # fmt: skip
    assert json.loads((folder.path / "launch.json").read_text())["nproc_per_node"] == 2


DIES = """
    import os, signal
    from lib.training import distributed, loop

    one_epoch = loop.train_one_epoch

    def dying(*args, **kwargs):
        if os.environ["RANK"] == "1" and args[5] == {epoch}:
            {how}
        return one_epoch(*args, **kwargs)

    loop.train_one_epoch = dying
    raise SystemExit(distributed.main())
"""


def test_a_killed_rank_ends_the_run_naming_it_and_the_run_resumes_to_the_uninterrupted_weights(tiny_data, tmp_path, capsys):
    """Rank 1 killed (SIGKILL: no word of its own) in the third epoch: one message names rank 1, the
    signal, the epochs last.pt keeps and the command that resumes; resumed under torchrun, the run ends
    with the weights and figures of a two-process run never interrupted (to the bit: gloo sums in a
    fixed order; against one process the difference grows from 1e-6 after two epochs to 1e-4 after
    four, Adam dividing by the small second moments of float rounding)."""
    config = tiny_config(tiny_data, tmp_path / "runs", batch_size=8, nproc_per_node=2, epochs=4)
    killed = entry_script(tmp_path, "killed", DIES.format(epoch=2, how="os.kill(os.getpid(), signal.SIGKILL)"))
    with pytest.raises(distributed.DistributedRunFailed) as failed:
        loop._fit_under_torchrun(config, entry=killed)
    # In torchrun's own output (what a SLURM log keeps), rank 0 says how to resume without a notebook.
    assert "keeps the run's last saved epoch; to continue from it, start the same torchrun command with resume=true" in capsys.readouterr().out
    message = str(failed.value)
    assert "rank 1 of 2 failed first (killed by signal SIGKILL" in message
    assert "holds 2 completed epoch(s) of 4" in message and "-m lib.training" in message and "resume=true" in message
    folder = RunFolder(config.run_dir)
    assert not folder.has_result() and not list(folder.path.glob("*.tmp")), "no half-written file is left"
    resumed = loop.fit(dataclasses.replace(config, resume=True))
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2, 3]
    uninterrupted = loop.fit(tiny_config(tiny_data, tmp_path / "whole", batch_size=8, nproc_per_node=2, epochs=4))
    assert_same_weights(weights_of(config.run_dir), weights_of(uninterrupted.run_dir), atol=0)
    assert [r["valid_loss"] for r in resumed.history] == [r["valid_loss"] for r in uninterrupted.history]


def test_an_error_on_one_rank_is_named_with_its_words(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "runs", batch_size=8, nproc_per_node=2, epochs=2)
    failing = entry_script(tmp_path, "failing", DIES.format(epoch=0, how='raise OSError("the scratch disk went away")'))
    with pytest.raises(distributed.DistributedRunFailed, match=r"rank 1 of 2 failed first \(the scratch disk went away\).*No epoch was "
                                                               r"completed, so there is nothing to resume"):  # fmt: skip
        loop._fit_under_torchrun(config, entry=failing)


@pytest.mark.parametrize("n, batch_size, world", [(43, 8, 2), (40, 8, 4), (37, 6, 3)])
def test_the_epoch_order_is_distributed_samplers_shard_cut_into_batches(n, batch_size, world):
    """With batch_size a multiple of the ranks, each rank's batches are exactly those of a DataLoader
    over torch's DistributedSampler (same seed, set_epoch, drop_last) with batch_size / world; and the
    ranks' shares of each batch together are one process's batch."""
    for epoch in (0, 3):
        alone = EpochOrder(n, batch_size, shuffle=True, seed=5, what="training")
        alone.set_epoch(epoch)
        shares = []
        for rank in range(world):
            order = EpochOrder(n, batch_size, shuffle=True, seed=5, what="training", rank=rank, world=world)
            order.set_epoch(epoch)
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5, drop_last=True)
            sampler.set_epoch(epoch)
            reference = [batch.tolist() for batch in DataLoader(range(n), batch_size=batch_size // world, sampler=sampler, drop_last=True)]
            assert [batch.tolist() for batch in order] == reference
            shares.append(list(order))
        for batch, whole in enumerate(alone):
            assert sorted(torch.cat([share[batch] for share in shares]).tolist()) == sorted(whole.tolist())


def test_uneven_shares_differ_by_one_tile_and_too_few_tiles_are_refused():
    shares = [list(EpochOrder(30, 7, shuffle=False, seed=0, what="training", rank=r, world=2)) for r in range(2)]
    assert [len(b) for b in shares[0]] == [4] * 4 and [len(b) for b in shares[1]] == [3] * 4
    with pytest.raises(ValueError, match=r"the validation set's batches hold 1 tile\(s\), fewer than the 2 processes.*nproc_per_node"):
        EpochOrder(1, 8, shuffle=False, seed=0, what="validation", rank=0, world=2)


def test_unsupported_process_counts_are_refused_by_name(tiny_data, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"batch_size=1 is smaller than nproc_per_node=2: each batch is shared"):
        tiny_config(tiny_data, tmp_path, nproc_per_node=2, batch_size=1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"device='cuda' with nproc_per_node=2 for baseline asks for 2 GPUs, but PyTorch sees none.*'cpu'"):
        distributed.check_processes(dataclasses.replace(tiny_config(tiny_data, tmp_path), device="cuda", nproc_per_node=2))
    with pytest.raises(ValueError, match=r"device='cuda:0' names one GPU.*several processes on one GPU"):
        tiny_config(tiny_data, tmp_path, nproc_per_node=2, device="cuda:0")
    with pytest.raises(ValueError, match=r"nproc_per_node=0 must be at least 1"):
        tiny_config(tiny_data, tmp_path, nproc_per_node=0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config = dataclasses.replace(tiny_config(tiny_data, tmp_path), device="cuda", nproc_per_node=4)
    with pytest.raises(ValueError, match=r"nproc_per_node=4 for baseline asks for one GPU per process, but PyTorch sees 1.*several "
                                         r"processes on one GPU"):  # fmt: skip
        distributed.check_processes(config)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "3"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"torchrun started 3 process\(es\) per node.*nproc_per_node=1"):
        distributed.join(tiny_config(tiny_data, tmp_path))


def test_the_entry_point_reads_a_run_folder_or_a_registry_run(tiny_data, tmp_path, monkeypatch):
    config = tiny_config(tiny_data, tmp_path, nproc_per_node=2)
    distributed.write_launch_file(config, config.run_dir)
    assert distributed.config_from_arguments([str(config.run_dir)]) == config
    assert distributed.config_from_arguments([str(config.run_dir), "resume=true"]) == dataclasses.replace(config, resume=True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    named = distributed.config_from_arguments(["resnet50-10ep", f"data_dir={tiny_data}", "epochs=3", "device=cpu"])
    assert (named.run, named.epochs, named.nproc_per_node) == ("resnet50-10ep", 3, 2), "nproc_per_node follows torchrun's"
    with pytest.raises(FileNotFoundError, match=r"holds no launch.json.*registry run's name"):
        distributed.config_from_arguments([str(tmp_path)])
    with pytest.raises(ValueError, match=r"'epochs' is not name=value"):
        distributed.config_from_arguments(["baseline", "epochs"])
    with pytest.raises(FileNotFoundError, match=r"nope/baseline: no such run folder"):
        distributed.config_from_arguments([str(tmp_path / "nope" / "baseline")])


def test_the_entry_point_says_its_usage_and_an_error_in_one_line(tiny_data, tmp_path, capsys):
    assert distributed.main([]) == 2 and "usage: torchrun" in capsys.readouterr().err
    assert distributed.main(["baseline", f"data_dir={tiny_data}", "epochs=0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("FAILED: rank 0 of 1 (ValueError): parameter epochs=0 must be at least 1 [host ")


def test_the_failed_rank_is_read_from_torchruns_summary_when_the_rank_said_nothing():
    summary = """[rank0]: FAILED: rank 0 of 2 (communication): Connection closed by peer [host h, pid 7]
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_15:00:00
  host      : h
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 8)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 8
"""
    assert distributed.failed_rank(summary.splitlines()) == (1, "killed by signal SIGKILL")
    assert distributed.failed_rank(["FAILED: rank 1 of 2 (OSError): disk gone [host h, pid 9]"]) == (1, "disk gone")
    assert distributed.failed_rank(["nothing to see"]) == (None, "")


def test_rank_streams_differ_and_rank_0_keeps_a_one_process_runs():
    ranks = [distributed.Ranks(rank=r, world=4, local_rank=r, local_world=4, backend="gloo") for r in range(4)]
    seeds = [distributed.rank_seed(0, r) for r in ranks]
    assert seeds[0] is None and len(set(seeds[1:])) == 3
    assert distributed.rank_seed(1, ranks[1]) != seeds[1]


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line holds `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_ctrl_c_stops_torchrun_and_every_rank_and_the_run_resumes(tiny_data, tmp_path):
    """Ctrl-C in the notebook's kernel (SIGINT to the process that called fit) while two ranks train:
    KeyboardInterrupt there, no process of the run left behind, last.pt whole; resumed, it finishes."""
    config = tiny_config(tiny_data, tmp_path / "runs", batch_size=8, nproc_per_node=2, epochs=30)
    code = (f"import dataclasses, json\nfrom lib.config import RunConfig\nfrom lib.training.loop import fit\n"
            f"fit(RunConfig(**json.loads({json.dumps(json.dumps(dataclasses.asdict(config)))})))")  # fmt: skip
    caller = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT)})  # fmt: skip
    history = config.run_dir / "history.json"
    deadline = time.monotonic() + 180
    while not (history.is_file() and len(json.loads(history.read_text() or "[]")) >= 2) and time.monotonic() < deadline:
        time.sleep(0.5)
    caller.send_signal(signal.SIGINT)
    output, _ = caller.communicate(timeout=120)
    assert caller.returncode != 0 and "KeyboardInterrupt" in output, output[-2000:]
    time.sleep(1)
    assert _processes_naming(str(config.run_dir)) == [], "torchrun and its ranks end with the run"
    folder = RunFolder(config.run_dir)
    done = int(folder.load_checkpoint("last")["epoch"]) + 1
    assert not folder.has_result() and 2 <= done < 30
    resumed = loop.fit(dataclasses.replace(config, resume=True))
    assert len(resumed.history) == 30 and folder.check_whole()


def test_a_run_saved_before_nproc_per_node_existed_resumes_as_one_process(tiny_data, tmp_path):
    """config.json of an older workbook has no nproc_per_node: its run was one process, the default,
    so it continues rather than being refused for "None there, 1 now"."""
    config = tiny_config(tiny_data, tmp_path)
    saved = {k: v for k, v in dataclasses.asdict(config).items() if k != "nproc_per_node"}
    assert loop.changed_parameters(saved, config) == []
    assert loop.changed_parameters(saved, dataclasses.replace(config, nproc_per_node=2)) == ["nproc_per_node"]
