"""`make bench-scale` in small: it writes the records and growth it promises, and removes what it
generated. Its figures are printed, never asserted."""

import json

from lib.bench import scale as bench_scale


def test_bench_scale_measures_each_size_and_form_and_cleans_up(tmp_path, capsys):
    out, work = tmp_path / "bench_scale.json", tmp_path / "work"
    assert bench_scale.main(["--sizes", "300,600", "--forms", "h5,folder", "--epoch-forms", "h5", "--batch-size", "32",
                             "--work", str(work), "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads(out.read_text())
    records = summary["records"]
    assert [(r["size"], r["form"]) for r in records] == [(300, "h5"), (300, "folder"), (600, "h5"), (600, "folder")]
    assert all(r["tile_size"] == 96 and r["tiles_decoded_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in records)
    assert [("epoch_s" in r) for r in records] == [True, False, True, False]  # only the forms asked to train an epoch
    assert {r["layout"] for r in records} == {"pcam-h5", "pcam"}
    assert len(summary["growth"]["h5"]["epoch_s"]) == 1 and len(summary["growth"]["folder"]["cache_build_s"]) == 1
    assert not work.exists()  # the generated sets and caches are gone
    assert "growth per tile" in capsys.readouterr().out
