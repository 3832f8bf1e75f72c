"""Proof on real tissue: the workbook's own data path and training loop learn LC25000 colon tiles
(benign versus adenocarcinoma) with a leak-free split by source tile."""

import time
from pathlib import Path

import pytest

from lib.config import run_config
from lib.training.loop import fit

LC25000 = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lc25000-colon-2k"


@pytest.mark.skipif(not (LC25000 / "groups.csv").is_file(),
                    reason=f"real-tissue data set not found at {LC25000} (it ships beside the project in shared/, not in the repository)")  # fmt: skip
def test_real_colon_tissue_is_learned_with_a_grouped_split(tmp_path):
    # The small CNN at 128x128: ResNet50 trains at ~3.5 tiles/s on 2 cores, far too slow for a test.
    config = run_config("baseline", profile="quick", data_dir=str(LC25000), runs_dir=str(tmp_path), model="small",
                        tile_size=128, epochs=4, batch_size=32, lr=3e-4, subset=0, device="cpu", seed=0)  # fmt: skip
    start = time.perf_counter()
    result = fit(config)
    seconds = time.perf_counter() - start
    summary = result.summary
    print(f"LC25000 colon, grouped split: best valid acc {summary['best_valid_accuracy']:.3f} (epoch {summary['best_epoch']}), "
          f"final {summary['final_valid_accuracy']:.3f}, {seconds:.0f} s with decoding")  # fmt: skip
    assert summary["data_layout"] == "csv" and summary["split"].startswith("grouped (leak-free)")
    assert summary["n_train"] + summary["n_valid"] == 2000
    assert summary["best_valid_accuracy"] >= 0.85, summary
    # Scored on its own validation split (the CSV layout has no test set), whose tiles carry their source tiles as groups:
    # the intervals resample groups, not tiles, and say so.
    from lib.report.evaluate import evaluate_runs

    evaluation = evaluate_runs(tmp_path, ["baseline"], tta="none", second_test="")["baseline"]
    assert evaluation.scored.groups is not None and len(evaluation.scored.groups) == summary["n_valid"]
    intervals = evaluation.metrics["intervals"]
    assert intervals["unit"] == "groups" and "groups" in intervals["method"], intervals["method"]
    assert intervals["n_units"] == len(set(evaluation.scored.groups)) < summary["n_valid"]
    assert intervals["accuracy"]["low"] <= evaluation.metrics["accuracy"] <= intervals["accuracy"]["high"]
