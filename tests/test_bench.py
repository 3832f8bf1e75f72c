"""`make bench` runs and writes the records it promises; its figures are printed, never asserted."""

import json

from lib.bench import throughput as bench

RECORD_KEYS = {"model", "device", "precision", "seed_style", "workbook", "model_only", "workbook_vs_seed",
               "workbook_vs_limit", "peak_host_mb", "peak_gpu_mb"}  # fmt: skip


def test_bench_writes_one_record_per_model_and_device(tiny_data, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--data", str(tiny_data), "--devices", "cpu", "--models", "baseline", "--steps", "1", "--rounds", "2",
                       "--batch-size", "8", "--out", str(out)]) == 0  # fmt: skip
    records = json.loads(out.read_text())
    assert len(records) == 1 and RECORD_KEYS <= set(records[0])
    record = records[0]
    assert record["model"] == "baseline" and record["device"] == "cpu" and record["peak_gpu_mb"] is None
    assert record["workbook_vs_seed"] == record["workbook"] / record["seed_style"] > 0
    assert "b/a = " in capsys.readouterr().out
