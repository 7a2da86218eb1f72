# mtssl_tf: `make demo` and `make test` are all a fresh clone needs (see README.md).
# Both create .venv on first use and refresh it when setup.py or constraints.txt change.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two test processes: one per core of the reference machine (TF ops also use both).
TEST_WORKERS ?= 2

.PHONY: install demo summary test test-numerics lint format benchmark reproduce-mini clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 11))' || \
	  { echo "mtssl_tf needs Python 3.9-3.11 (TensorFlow 2.15); $(PYTHON) is $$($(PYTHON) --version 2>&1). Set PYTHON=/path/to/python3.11." >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt pip setuptools setuptools-scm wheel
	$(BIN)/python -m pip install -q --no-build-isolation -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip check
	@touch $(STAMP)

# The main job on its built-in default: local cluster, synthetic world, export.
demo: $(STAMP)
	$(BIN)/mtssl-train --model_dir=runs/demo

# Every table row of both papers at miniature scale on the synthetic world (under an hour on 2 cores);
# see configs/grid/mini.yaml and docs/mini/README.md. Reruns skip finished stages.
reproduce-mini: $(STAMP)
	$(BIN)/python tools/run_grid.py --grid=configs/grid/mini.yaml --output_dir=runs/mini --parallel=2

summary: $(STAMP)
	$(BIN)/mtssl-summary

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=10 tests

# The tests whose outcome depends on floating-point results, again with TensorFlow's oneDNN
# kernels off: that changes float results the way another CPU does, so an assertion that
# holds only to the last bit fails here before it fails on someone else's machine.
test-numerics: $(STAMP)
	TF_ENABLE_ONEDNN_OPTS=0 $(BIN)/python -m pytest -n $(TEST_WORKERS) -m numerics tests

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

benchmark: $(STAMP)
	$(BIN)/python benchmarks/trunk_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
