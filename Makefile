# Every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo needs only the library (no test, export, TensorBoard or Slurm extras): a shorter first install.
RUNTIME_STAMP := $(VENV)/.installed-runtime
PIP_FLAGS := --quiet --progress-bar off --disable-pip-version-check

# make reproduce DATA=/path/to/Seq-DeepFake [DEVICE=cuda] [OUT=reproduce]; REPRODUCE_SMOKE=1 for the
# synthetic 1-epoch variant. MLCDF overrides the command (e.g. "python -m mlcdf" in another environment).
DATA ?=
DEVICE ?= auto
REPRODUCE_SMOKE ?=
OUT ?= $(if $(filter 1,$(REPRODUCE_SMOKE)),reproduce-smoke,reproduce)
MLCDF ?= $(BIN)/mlcdf

.PHONY: install lint test test-fast demo reproduce gpu-check mutation clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[dev]'
	touch $(STAMP)

$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) -e .
	touch $(RUNTIME_STAMP)

# ruff (the rules and the format) and mypy, configured in pyproject.toml; .ci/run calls it before make test.
LINTED := mlcdf tests benchmarks scripts

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# make mutation [MUTANTS='mlcdf.metrics.*'] [MUTATION_MINUTES=60]: mutation testing of the core modules
# ([tool.mutmut] in pyproject.toml), not part of make test. mutmut keeps each mutant's result in mutants/,
# so a run stopped by the time limit goes on where it stopped when started again.
MUTANTS ?=
MUTATION_MINUTES ?= 60

mutation: $(STAMP)
	test -x $(BIN)/mutmut || $(BIN)/python -m pip install $(PIP_FLAGS) -e '.[dev,mutation]'
	timeout $(MUTATION_MINUTES)m $(BIN)/mutmut run $(MUTANTS) || test $$? -eq 124
	$(BIN)/mutmut results | grep -v ': not checked$$' || true
	$(BIN)/mutmut export-cicd-stats > /dev/null && cat mutants/mutmut-cicd-stats.json

demo: $(RUNTIME_STAMP)
	bash scripts/demo.sh

reproduce: $(STAMP)
	$(MLCDF) reproduce $(if $(filter 1,$(REPRODUCE_SMOKE)),--smoke,$(if $(DATA),--data "$(DATA)")) --device $(DEVICE) --out "$(OUT)"

# The CUDA and distributed paths, run and measured in a few minutes (benchmarks/gpu_check.py); with two
# GPUs also DDP and the runner's --jobs/--devices/--gpus-per-run; without a GPU what the CPU can show.
# GPU_CHECKS=fp16,ddp_sync_bn runs a subset. JSON in benchmarks/results/ (docs/development.md reads it).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(if $(GPU_CHECKS),--checks $(GPU_CHECKS))

clean:
	rm -rf $(VENV) demo reproduce-smoke mutants *.egg-info
