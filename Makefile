# One entry point for the study. From a fresh clone:
#   make study   # create .venv if missing, install, run every notebook under the cpu profile
#   make test    # create .venv if missing, install, unit tests + nbval regression of the smoke notebooks
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NBVAL_REFS := $(sort $(wildcard tests/notebooks/[0-9][0-9]_*.ipynb))

.PHONY: help install study smoke test unit nbval references organism bench lab clean-smoke

help:
	@echo "make study       run the whole study under the cpu profile (outputs/cpu/)"
	@echo "make test        unit tests, then nbval regression of the notebooks under smoke"
	@echo "make organism    train the embedded tiny model organism from scratch (outputs/cpu/models/base/)"
	@echo "make references  re-execute the smoke notebooks and store them as nbval references"
	@echo "make bench NAME=scenes   run one performance benchmark (writes outputs/bench/NAME.json)"
	@echo "make lab         open the study in JupyterLab"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# OMP_WAIT_POLICY=PASSIVE keeps torch's threads from spinning when another process shares the 2 cores.
export OMP_WAIT_POLICY ?= PASSIVE
export MPLBACKEND ?= Agg

study: $(STAMP)
	$(PY) -m mimic_utils.organism --profile cpu --if-needed
	$(PY) -m mimic_utils.runner --profile cpu
	@echo "Results: outputs/cpu/ (executed notebooks in outputs/cpu/executed/, report in outputs/cpu/REPORT.md)"

smoke: $(STAMP)
	$(PY) -m mimic_utils.runner --profile smoke

unit: $(STAMP)
	$(PY) -m pytest tests -q

nbval: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=1800 \
		--nbval-sanitize-with tests/notebooks/sanitize.cfg $(NBVAL_REFS)

test: unit nbval

references: $(STAMP)
	$(PY) -m mimic_utils.runner --profile smoke
	mkdir -p tests/notebooks && cp outputs/smoke/executed/[0-9][0-9]_*.ipynb tests/notebooks/

organism: $(STAMP)
	$(PY) -m mimic_utils.organism --profile cpu

bench: $(STAMP)
	$(PY) -m mimic_utils.bench $(NAME)

lab: $(STAMP)
	$(PY) -m pip install --quiet jupyterlab
	$(VENV)/bin/jupyter lab notebooks/

clean-smoke:
	rm -rf outputs/smoke
