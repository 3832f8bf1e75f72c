# The workbook's doors. Every target sets up .venv from requirements.txt first when it is missing
# or older, registers the notebooks' kernel, and needs nothing installed by hand.
#   make report            everything: data, the four runs, evaluation, reports/report.html
#   make test              the tests
#   make bench             images/s of the original's input loop, the workbook's, and the model alone
#   make bench-scale       cache build, decode rate, memory and an epoch on PatchCamelyon-sized sets (SIZES=20000,60000,220025)
#   make weights           download ResNet50's ImageNet weights into the torch cache (the only download)
# Run parameters: any RunConfig field (lib/config.py) in upper case, e.g. `make run-all EPOCHS=3
# TILE_SIZE=96`, or several at once with SET="epochs=3 tile_size=96"; DATA=<data dir or CSV> and
# WEIGHTS=<file.pth> are shortcuts for data_dir and weights_path; RUNS=baseline,resnet50-10ep runs a
# subset; JOBS=N executes N run notebooks at once (each on GPUs of its own where there are several, else
# sharing the GPU or the CPU's cores; each one's output in reports/executed/<notebook>.log), then the
# evaluation. lib/pipeline.py reads them from make's command line (MAKEFLAGS), so nothing here names a
# parameter, and a name that is no parameter fails there. (JOBS is not make's own -j: the recipes
# stay one after another.)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KERNEL := histo-workbook
PORT ?= 8888
PIPELINE := $(PY) -m lib.pipeline

.PHONY: all run-all report lab tensorboard bench bench-scale test weights clean distclean venv

all: report

KERNEL_JSON := $(VENV)/share/jupyter/kernels/$(KERNEL)/kernel.json

venv: $(VENV)/.installed
	@# The notebooks' kernel, registered again whenever it is missing or starts another Python (a venv
	@# moved or re-created), and the path that lets every notebook import lib/ from this checkout.
	@grep -qF '"$(CURDIR)/$(PY)"' $(KERNEL_JSON) 2>/dev/null || \
		$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (histo workbook)"
	@echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/histo_workbook.pth"

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

run-all: venv
	$(PIPELINE) run-all --from-make

report: run-all
	$(PIPELINE) report --from-make

weights: venv
	$(PY) -m lib.weights download

lab: venv
	$(PY) -m lib.lab --port $(PORT)

tensorboard: venv
	$(PY) -m tensorboard.main --logdir runs --host 127.0.0.1

bench: venv
	$(PY) -m lib.bench.throughput

# Minutes to an hour on 2 cores at the full sizes; the generated sets are removed as each size ends.
bench-scale: venv
	$(PY) -m lib.bench.scale $(if $(SIZES),--sizes $(SIZES))

test: venv
	$(PY) -m pytest -q tests

clean:
	rm -rf runs reports

distclean: clean
	rm -rf data $(VENV)
