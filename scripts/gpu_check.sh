#!/usr/bin/env bash
# The GPU check in one device call: a count of the training loop's host-GPU synchronisations, then
# `make bench` on CUDA, then the full-profile `make run-all` (papermill and the evaluation of every
# run included). The two short checks go first, each with its own time limit, so that a long run-all
# cannot leave the call without them; run-all gets the rest of GPU_CHECK_BUDGET_S and is stopped in
# time for its figures to be collected. Each part writes its log and figures to $OUT as it ends (so a
# call cut short still returns what finished). See ../shared/device/README.md.
#
#   here, once:          ../shared/device/wheels.sh            # papermill, nbconvert, ipykernel -> .whl/
#   on the device:       bash scripts/gpu_check.sh             # the device tool's run, carry [".whl"], timeout_s 600
#   rehearse on a CPU:   OUT=/tmp/gpu-check PYTHON=.venv/bin/python GPU_CHECK_REHEARSAL=1 bash scripts/gpu_check.sh
#
# The device machine has no venv: its python3 has torch; the wheels add what the notebooks need,
# and the notebooks' kernel is registered in a temporary prefix. Data is generated there (16 cores
# make it quick; the JPEGs exceed what a call carries).
set -euo pipefail
OUT=${OUT:?"set OUT to a folder for the results (the device tool sets it)"}
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-570}  # the whole script, in seconds: below the device call's 600
mkdir -p "$OUT"
if [[ -n ${GPU_CHECK_REHEARSAL:-} ]]; then
  run_args=(profile=quick device=cpu epochs=1)  # the flow, not the figures: one epoch a run
  bench_args=(--devices cpu --models baseline --steps 1 --rounds 1 --ddp-epochs 2 --ddp-subset 128)
else
  run_args=(profile=full device=cuda)
  bench_args=(--devices cuda --ddp-epochs 10)  # the distributed rows: resnet50-10ep's 10 epochs plain and under torchrun
fi

site=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
fi
export PYTHONPATH="$site:$PWD" JUPYTER_PATH="$site/share/jupyter"
"$PY" -m ipykernel install --prefix "$site" --name histo-workbook >/dev/null

# Progress bars are redrawn with carriage returns; the logs keep one line per finished bar.
plain() { tr '\r' '\n' | sed -E 's/\x1b\[[0-9;]*[A-Za-z]//g' | grep -v -E '(it/s|s/it|batch/s|tile/s|epoch/s)\]?$|^[[:space:]]*$' || true; }

{
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'
  nproc
  nvidia-smi -L 2>/dev/null || true
} > "$OUT/device.txt" 2>&1

start=$SECONDS
"$PY" -c 'from lib.paths import DEFAULT_DATA_DIR; from lib.data.synthetic import ensure_default; ensure_default(DEFAULT_DATA_DIR)' 2>&1 | plain > "$OUT/data.log"
echo "data generated in $((SECONDS - start)) s" >> "$OUT/data.log"

start=$SECONDS
timeout 240 "$PY" -m lib.bench.throughput "${bench_args[@]}" --out "$OUT/bench.json" 2>&1 | plain > "$OUT/bench.log" || true
echo "bench finished in $((SECONDS - start)) s" >> "$OUT/bench.log"

# How often the training loop makes the host wait for the GPU (torch's sync debug mode): about once
# per batch, for the finiteness check two batches behind, is expected; more means a copy or a read
# that drains the GPU's queue.
timeout 60 "$PY" - > "$OUT/syncs.log" 2>&1 <<'PYTHON' || true
import sys, warnings
import torch
from lib.data import TileBatches
from lib.models import build_resnet50
from lib.training.speed import prepare_model, speed_settings
from lib.training.loop import train_one_epoch

if not torch.cuda.is_available():
    sys.exit("sync check: no CUDA device here; skipped")
device = torch.device("cuda")
tiles, labels = torch.randint(0, 256, (800, 3, 256, 256), dtype=torch.uint8), torch.randint(0, 2, (800,))
settings = speed_settings(device)
model, step_model = prepare_model(build_resnet50("imagenet1000", "none")[0].to(device), settings)
optimizer = torch.optim.Adam(model.parameters())
for placement in ("GPU", "host"):
    batches = TileBatches(tiles, labels, 100, True, 0, device, 200, "sync check")
    if placement == "host":
        batches.tiles, batches.rows = tiles, batches.rows.cpu()  # the streamed path, as for a set too large for the GPU
    train_one_epoch(step_model, batches, optimizer, device, settings=settings)  # warm-up: cuDNN's choices
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rate = train_one_epoch(step_model, batches, optimizer, device, settings=settings)
    torch.cuda.set_sync_debug_mode(0)
    print(f"tiles in {placement} memory: {len(batches)} steps, {len(caught)} synchronising calls, "
          f"{rate['images'] / rate['seconds']:.0f} images/s")
    for message in sorted({str(w.message).splitlines()[0][:120] for w in caught}):
        print("   ", message)
PYTHON

# The check's runs and reports go to a folder of its own: a rehearsal must not replace the checkout's runs/.
work=$(mktemp -d)
run_args+=("runs_dir=$work/runs" "reports_dir=$work/reports")
start=$SECONDS
status=0
limit=$((BUDGET_S - SECONDS - 15))  # 15 s left for the summary
echo "run-all: $limit s left of the check's $BUDGET_S" > "$OUT/run_all.log"
timeout -k 10 "$limit" "$PY" -m lib.pipeline run-all "${run_args[@]}" 2>&1 | plain >> "$OUT/run_all.log" || status=$?
if [[ $status == 124 ]]; then
  echo "run-all STOPPED at the check's time limit after $((SECONDS - start)) s; summary.json holds the runs that finished" >> "$OUT/run_all.log"
else
  echo "run-all exited $status after $((SECONDS - start)) s (data already generated)" >> "$OUT/run_all.log"
fi

"$PY" - "$OUT/summary.json" "$work" <<'PYTHON'
"""The figures the closing note needs, from each run's result.json and the evaluation."""
import json, sys
from pathlib import Path

summary, work = {}, Path(sys.argv[2])
for result in sorted((work / "runs").glob("*/result.json")):
    r = json.loads(result.read_text())
    summary[r["run"]] = {k: r.get(k) for k in ("epochs", "n_train", "n_valid", "elapsed_s", "train_images_per_s", "final_valid_accuracy",
                                                "best_valid_accuracy", "best_epoch", "speed_settings", "input_path", "profile")}
evaluation = work / "reports" / "evaluation.json"
if evaluation.is_file():
    scores = json.loads(evaluation.read_text())
    summary["evaluation"] = {"final_run": scores.get("metrics"), "every_run": scores.get("runs")}
Path(sys.argv[1]).write_text(json.dumps(summary, indent=2))
PYTHON

tail -n 1 "$OUT/run_all.log"
exit $status
