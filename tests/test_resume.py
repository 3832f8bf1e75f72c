"""Interrupted runs lose nothing: SIGKILL mid-epoch, resume, and end bit for bit where an
uninterrupted run ends; a non-finite loss stops the run by name with the last checkpoint kept."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lib.config import run_config
from lib.training.loop import fit

from tests.conftest import PROJECT_ROOT

TINY = {"profile": "quick", "epochs": 3, "batch_size": 8, "subset": 0, "device": "cpu", "seed": 5}


def _train_in_subprocess(data_dir, runs_dir, **overrides) -> subprocess.Popen:
    code = (
        "from lib.config import run_config; from lib.training.loop import fit; "
        f"fit(run_config('baseline', data_dir={str(data_dir)!r}, runs_dir={str(runs_dir)!r}, **{TINY | overrides!r}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("completed, checkpoint_every_s, saved_epoch", [(1, 0, 0), (2, 3600, 0)])
def test_killed_mid_epoch_then_resumed_ends_bit_for_bit(tiny_data, tmp_path, completed, checkpoint_every_s, saved_epoch):
    """Killed after `completed` epochs; with an hour between checkpoints the second epoch was not
    saved, so the resumed run repeats it and must still end where the uninterrupted run ends."""
    whole = fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path / "whole"), **TINY))

    process = _train_in_subprocess(tiny_data, tmp_path / "killed", checkpoint_every_s=checkpoint_every_s)
    run_dir = tmp_path / "killed" / "baseline"
    history = run_dir / "history.json"
    deadline = time.time() + 240
    while not (history.exists() and len(json.loads(history.read_text())) == completed):
        assert process.poll() is None and time.time() < deadline, f"the training process ended before epoch {completed}"
        time.sleep(0.05)
    time.sleep(0.6)  # into the next epoch
    assert process.poll() is None, "the run finished before it could be interrupted; make the test's epochs longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(json.loads(history.read_text())) == completed, f"killed mid-epoch: {completed} epochs complete"
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == saved_epoch

    resumed = fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path / "killed"), resume=True, **TINY))
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    for key in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
        assert [r[key] for r in resumed.history] == [r[key] for r in whole.history], key
    a = torch.load(tmp_path / "whole" / "baseline" / "last.pt", weights_only=True)["model"]
    b = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"


@pytest.mark.parametrize("checkpoint_every_s, saved_epochs", [(0, [0, 1, 2]), (3600, [0, 2])])
def test_last_checkpoint_after_the_first_epoch_then_at_most_every_interval_and_the_last(
    tiny_data, tmp_path, monkeypatch, checkpoint_every_s, saved_epochs
):
    import lib.training.run_folder

    saved, save = [], lib.training.run_folder.save_atomically
    monkeypatch.setattr(lib.training.run_folder, "save_atomically", lambda obj, path: (path.name == "last.pt" and saved.append(obj["epoch"]), save(obj, path)))
    fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), checkpoint_every_s=checkpoint_every_s, **TINY))
    assert saved == saved_epochs


def test_resume_refuses_other_parameters(tiny_data, tmp_path):
    fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), **(TINY | {"epochs": 1})))
    with pytest.raises(ValueError, match="other parameters \\(batch_size: 8 there, 4 now; epochs: 1 there, 3 now\\)"):
        fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), resume=True, **(TINY | {"batch_size": 4})))


def test_non_finite_loss_stops_naming_epoch_and_batch(tiny_data, tmp_path):
    config = run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), **(TINY | {"lr": 1e30}))
    with pytest.raises(FloatingPointError, match=r"at epoch \d+, batch \d+.*last good checkpoint"):
        fit(config)


def test_a_fresh_start_clears_an_earlier_runs_state(tiny_data, tmp_path):
    """Otherwise a fresh run interrupted in its first epoch would, on resume, continue the earlier
    run's last.pt under the new parameters."""
    fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), **(TINY | {"epochs": 1})))
    run_dir = tmp_path / "baseline"
    assert (run_dir / "last.pt").exists()
    with pytest.raises(FloatingPointError):  # interrupted during its first epoch
        fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), **(TINY | {"lr": 1e30})))
    assert not any((run_dir / name).exists() for name in ("last.pt", "best.pt", "history.json", "result.json"))
    assert "resume: no completed epoch" in _resume_message(tiny_data, tmp_path)


def _resume_message(tiny_data, runs_dir) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(FloatingPointError):
        fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(runs_dir), resume=True, **(TINY | {"lr": 1e30})))
    return buffer.getvalue()


def test_resuming_a_finished_run_keeps_its_results_and_a_lost_result_is_named(tiny_data, tmp_path, capsys):
    """`make run-all RESUME=true` may re-execute a finished run's notebook (its stamp lost to a failed
    try); that must not fail nor train it again."""
    done = fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), **(TINY | {"epochs": 2})))
    weights = (tmp_path / "baseline" / "best.pt").stat().st_mtime_ns
    again = fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), resume=True, **(TINY | {"epochs": 2})))
    assert "already completed all 2 epochs with these parameters" in capsys.readouterr().out
    assert again.summary == done.summary and (tmp_path / "baseline" / "best.pt").stat().st_mtime_ns == weights, "nothing retrained"
    with pytest.raises(ValueError, match="other parameters.*batch_size"):  # a finished run under other parameters is no resume
        fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), resume=True, **(TINY | {"epochs": 2, "batch_size": 4})))
    (tmp_path / "baseline" / "result.json").unlink()
    with pytest.raises(ValueError, match=r"completed all 2 epochs, but its result\.json is gone .*RESUME=false"):
        fit(run_config("baseline", data_dir=str(tiny_data), runs_dir=str(tmp_path), resume=True, **(TINY | {"epochs": 2})))
