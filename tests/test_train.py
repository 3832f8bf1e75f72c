"""The training loop: it learns, it logs like the original, and its checkpoints load safely."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from lib.config import run_config
from lib.data import decode_tiles, read_layout
from lib.models import BaselineCNN
from lib.models import predicted_labels
from lib.training.run_folder import RunFolder
from lib.training.loop import fit, log_line, train_one_epoch


def test_a_few_steps_lower_the_loss(tiny_data):
    torch.manual_seed(0)
    index = read_layout(tiny_data)
    tiles = decode_tiles(index.train_paths[:16], cache_dir=None)[0].float() / 255
    labels = torch.from_numpy(index.train_labels[:16])
    model = BaselineCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(tiles), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


def test_log_line_is_the_originals():
    row = {"train_loss": 34.92791, "train_accuracy": 0.7712, "valid_loss": 2.56011, "valid_accuracy": 0.7099}
    line = log_line(0, 10, row)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \|\| \[0/10\], train_loss = 34\.9279, train_accuracy = 0\.77, "
        r"valid_loss = 2\.5601, valid_accuracy = 0\.71",
        line,
    ), line


def test_predictions_come_from_the_label_outputs_only():
    logits = torch.tensor([[0.1, 0.9, 5.0], [2.0, -1.0, 9.0]])
    assert predicted_labels(logits).tolist() == [1, 0]


def test_fit_writes_a_run_that_loads_with_weights_only(tiny_data, tmp_path, capsys):
    config = run_config("baseline", profile="quick", data_dir=str(tiny_data), runs_dir=str(tmp_path),
                        epochs=2, batch_size=8, subset=0, device="cpu")  # fmt: skip
    result = fit(config)
    out = capsys.readouterr().out
    assert "End of training, elapsed time : 0 min" in out
    run_dir = tmp_path / "baseline"
    assert {"config.json", "history.json", "result.json", "initial.pt", "best.pt", "last.pt", "tensorboard"} <= {p.name for p in run_dir.iterdir()}
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    assert result.summary["n_train"] == 86 and result.summary["n_valid"] == 10
    assert result.summary["best_valid_accuracy"] == max(r["valid_accuracy"] for r in history)

    best = torch.load(run_dir / "best.pt", weights_only=True)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert set(best) >= {"model", "optimizer", "epoch"} and last["epoch"] == 1
    model = BaselineCNN()
    model.load_state_dict(last["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), last["model"].values()))
    assert RunFolder(tmp_path / "baseline").result().summary == result.summary
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "tensorboard").iterdir())


@pytest.mark.parametrize("pipeline, precision", [("tensor", "fp32"), ("original", "fp32"), ("tensor", "bf16")])
def test_both_input_paths_and_both_precisions_train_and_say_which(tiny_data, tmp_path, pipeline, precision):
    """The original's input path stays selectable; bf16 autocast runs (on the CPU here, slowly)."""
    config = run_config("resnet50-10ep", profile="quick", data_dir=str(tiny_data), runs_dir=str(tmp_path), model="small",
                        tile_size=64, crop_size=48, epochs=2, batch_size=8, subset=0, device="cpu",
                        input_pipeline=pipeline, precision=precision)  # fmt: skip
    summary = fit(config).summary
    assert summary["input_path"].startswith(pipeline) and summary["speed_settings"].startswith(precision)
    assert all(math.isfinite(row["train_loss"]) for row in fit_history(tmp_path))


def fit_history(runs_dir):
    return json.loads((runs_dir / "resnet50-10ep" / "history.json").read_text())


def _linear_model_and_batches(count: int):
    """A seeded linear classifier and `count` batches of four 3x2x2 tiles: a loop test in milliseconds."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    return model, [(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 0, 1])) for _ in range(count)]


@pytest.mark.parametrize("check_lag", [0, 2])
@pytest.mark.parametrize("bad_batch", [3, 5])
def test_a_non_finite_loss_is_named_by_its_own_batch_whatever_the_check_lag(check_lag, bad_batch):
    """With a lag (CUDA), the check reads an older loss; it must still name the first bad batch,
    also when that is the epoch's last (found after the loop)."""
    model, batches = _linear_model_and_batches(6)
    batches[bad_batch][0][0, 0, 0, 0] = float("nan")
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(FloatingPointError, match=f"at epoch 7, batch {bad_batch};"):
        train_one_epoch(model, batches, optimizer, torch.device("cpu"), epoch=7, check_lag=check_lag)
    steps_taken = int(optimizer.state[model[1].weight]["step"]) if optimizer.state else 0
    assert steps_taken == (bad_batch if check_lag == 0 else min(bad_batch + check_lag, 6))
    if check_lag == 0:
        assert torch.isfinite(model[1].weight).all(), "on the CPU the bad batch's step is never taken"


def test_epoch_metrics_are_the_originals_sums_and_means():
    model, batches = _linear_model_and_batches(5)
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    reference.load_state_dict(model.state_dict())
    metrics = train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), check_lag=2)
    optimizer, losses, accuracies = torch.optim.SGD(reference.parameters(), lr=0.1), [], []
    for tiles, labels in batches:  # the original's loop, .item() per batch
        logits = reference(tiles)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracies.append((logits.argmax(1) == labels).float().mean().item())
    assert metrics["loss"] == pytest.approx(sum(losses), rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(sum(accuracies) / 5, rel=1e-12)
    assert metrics["images"] == 20
