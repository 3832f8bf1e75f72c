# The workbook's doors. Every target sets up .venv from requirements.txt first when it is missing
# or older, registers the notebooks' kernel, and needs nothing installed by hand.
#   make report            everything: data, the four runs, evaluation, reports/report.html
#   make test              the tests
#   make bench             images/s of the original's input loop, the workbook's, and the model alone
#   make bench-scale       cache build, decode rate, memory and an epoch on PatchCamelyon-sized sets (SIZES=20000,60000,220025)
# Variables: PROFILE=auto|full|quick, DATA=<data dir or path,label CSV>, DEVICE=auto|cpu|cuda,
#   SPLIT=auto|random|grouped, POSITIVE_CLASS=<class folder labelled 1>, SKIP_BAD_IMAGES=1,
#   PRECISION=auto|fp32|bf16, COMPILE=1, INPUT_PIPELINE=tensor|original

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KERNEL := histo-workbook
PROFILE ?= auto
DATA ?= data/synthetic
DEVICE ?= auto
PORT ?= 8888
SPLIT ?=
POSITIVE_CLASS ?=
SKIP_BAD_IMAGES ?=
PRECISION ?=
COMPILE ?=
INPUT_PIPELINE ?=
PIPELINE := $(PY) -m lib.pipeline

.PHONY: all run-all report lab tensorboard bench bench-scale test clean distclean venv

all: report

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (histo workbook)"
	@# Lets every notebook, wherever its kernel starts, import lib/ from this checkout.
	@echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/histo_workbook.pth"
	@touch $@

run-all: venv
	$(PIPELINE) run-all --profile $(PROFILE) --data "$(abspath $(DATA))" --device $(DEVICE) \
		$(if $(SPLIT),--split $(SPLIT)) $(if $(POSITIVE_CLASS),--positive-class "$(POSITIVE_CLASS)") \
		$(if $(SKIP_BAD_IMAGES),--skip-bad-images) $(if $(PRECISION),--precision $(PRECISION)) \
		$(if $(COMPILE),--compile) $(if $(INPUT_PIPELINE),--input-pipeline $(INPUT_PIPELINE))

report: run-all
	$(PIPELINE) report

lab: venv
	$(PY) -m lib.lab --port $(PORT)

tensorboard: venv
	$(PY) -m tensorboard.main --logdir runs --host 127.0.0.1

bench: venv
	$(PY) -m lib.bench

# Minutes to an hour on 2 cores at the full sizes; the generated sets are removed as each size ends.
bench-scale: venv
	$(PY) -m lib.bench_scale $(if $(SIZES),--sizes $(SIZES))

test: venv
	$(PY) -m pytest -q tests

clean:
	rm -rf runs reports

distclean: clean
	rm -rf data $(VENV)
