"""`make bench` runs and writes the records it promises; its figures are printed, never asserted."""

import json

from lib.bench import throughput as bench

RECORD_KEYS = {"model", "device", "precision", "seed_style", "workbook", "model_only", "workbook_vs_seed",
               "workbook_vs_limit", "peak_host_mb", "peak_gpu_mb"}  # fmt: skip


def test_bench_writes_one_record_per_model_and_device(tiny_data, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--data", str(tiny_data), "--devices", "cpu", "--models", "baseline", "--steps", "1", "--rounds", "2",
                       "--batch-size", "8", "--distributed", "none", "--out", str(out)]) == 0  # fmt: skip
    records = json.loads(out.read_text())
    assert len(records) == 1 and RECORD_KEYS <= set(records[0])
    record = records[0]
    assert record["model"] == "baseline" and record["device"] == "cpu" and record["peak_gpu_mb"] is None
    assert record["workbook_vs_seed"] == record["workbook"] / record["seed_style"] > 0
    assert "b/a = " in capsys.readouterr().out


def test_bench_adds_the_distributed_rows_with_their_ratios(tiny_data, tmp_path, capsys):
    """Plain, torchrun with one process and with two (gloo on this CPU): the record holds the three
    rates and the ratios computed from them; nothing about their size is asserted."""
    out = tmp_path / "bench.json"
    assert bench.main(["--data", str(tiny_data), "--devices", "cpu", "--models", "baseline", "--steps", "1", "--rounds", "1",
                       "--batch-size", "8", "--ddp-epochs", "2", "--ddp-subset", "48", "--ddp-batch-size", "8", "--out", str(out)]) == 0  # fmt: skip
    row = json.loads(out.read_text())[-1]
    assert row["kind"] == "distributed" and row["processes"] == 2 and row["device"] == "cpu"
    assert row["scaling_efficiency"] == row["torchrun_2"] / (2 * row["torchrun_1"]) > 0
    assert row["torchrun_1_overhead"] == 1 - row["torchrun_1"] / row["plain"]
    assert row["torchrun_startup_s"] > 0, "starting torchrun and its process group takes time"
    assert "scaling efficiency" in capsys.readouterr().out
