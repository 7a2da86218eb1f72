# mtssl_tf: `make demo` and `make test` are all a fresh clone needs (see README.md).
# Both create the line's venv on first use and refresh it when setup.py or its constraints file change.
#
# Two dependency lines (BUILD.md, "Two dependency lines"); the Python found picks one:
#   reference: TF 2.15.1 (+ tensorflow-addons, tensorflow-io), Python 3.9-3.11: constraints.txt, .venv
#   current:   TF 2.20 + tf-keras, numpy 2, Python 3.12: constraints-current.txt, .venv-current
# A python3.11/3.10/3.9 on PATH is preferred (the reference line), else python3.12, else python3.
# Overrides: PYTHON=/path/to/python (its version decides the line), or LINE=current / LINE=reference
# (STACK= works too) to look for that line's Python: on PATH first, then among pyenv's installed
# versions even when none of them is selected (pyenv's shim of an unselected version does not run).

ifdef STACK
LINE ?= $(STACK)
endif
REFERENCE_PYTHONS := python3.11 python3.10 python3.9
CURRENT_PYTHONS := python3.12
PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
ifeq ($(LINE),current)
CANDIDATES := $(CURRENT_PYTHONS) $(sort $(wildcard $(PYENV_VERSIONS)/3.12*/bin/python3.12)) python3
else ifeq ($(LINE),reference)
CANDIDATES := $(REFERENCE_PYTHONS) $(foreach v,3.11 3.10 3.9,$(sort $(wildcard $(PYENV_VERSIONS)/$(v)*/bin/python$(v)))) python3
else
CANDIDATES := $(REFERENCE_PYTHONS) $(CURRENT_PYTHONS) python3
endif
# The first candidate that runs (a pyenv shim exists for every installed version but fails
# unless that version is selected).
PYTHON ?= $(firstword $(foreach p,$(CANDIDATES),$(shell command -v $(p) >/dev/null 2>&1 && $(p) -c '' >/dev/null 2>&1 && command -v $(p))) python3)
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PYTHON_LINE := $(if $(filter 3.9 3.10 3.11,$(PYTHON_VERSION)),reference,$(if $(filter 3.12,$(PYTHON_VERSION)),current,none))
LINE ?= $(PYTHON_LINE)
ifeq ($(LINE),current)
VENV ?= .venv-current
CONSTRAINTS := constraints-current.txt
LINE_PYTHONS := 3.12
else
VENV ?= .venv
CONSTRAINTS := constraints.txt
LINE_PYTHONS := 3.9-3.11
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two test processes: one per core of the reference machine (TF ops also use both).
TEST_WORKERS ?= 2

ifneq ($(filter-out clean python-line,$(or $(MAKECMDGOALS),install)),)
$(info mtssl_tf: $(if $(filter none,$(LINE)),no dependency line for $(PYTHON) (Python $(or $(PYTHON_VERSION),?)),$(LINE) line ($(CONSTRAINTS), $(VENV)): $(PYTHON) is Python $(or $(PYTHON_VERSION),?), which $(if $(filter $(LINE),$(PYTHON_LINE)),selects it,was overridden by LINE=$(LINE))).)
endif
# The venv records its line and Python; another one (LINE or PYTHON switched with the same VENV)
# reinstalls it, and another Python rebuilds it.
.DEFAULT_GOAL := install
ifneq ($(shell cat $(STAMP) 2>/dev/null),$(LINE) $(PYTHON_VERSION))
$(STAMP): FORCE
endif

.PHONY: install demo summary test test-numerics lint format benchmark benchmark-lines reproduce-mini reproduce-mini-noroozi python-line clean FORCE

install: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	@test "$(PYTHON_LINE)" != none || \
	  { echo "mtssl_tf needs Python 3.9-3.11 (reference line, TensorFlow 2.15) or 3.12 (current line," \
	    "TensorFlow 2.20); $(PYTHON) is $$($(PYTHON) --version 2>&1). Set PYTHON=/path/to/python3.12 or 3.11." >&2; exit 1; }
	@test "$(LINE)" = "$(PYTHON_LINE)" || \
	  { echo "LINE=$(LINE): the reference line needs Python 3.9-3.11 and the current line 3.12;" \
	    "$(PYTHON) is $$($(PYTHON) --version 2>&1) ($(PYTHON_LINE) line). Set PYTHON=/path/to/python of that line." >&2; exit 1; }
	@if test -x $(BIN)/python && test "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$(PYTHON_VERSION)"; then \
	  echo "$(VENV) holds another Python; rebuilding it with $(PYTHON) ($(LINE) line)."; rm -rf $(VENV); fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) pip setuptools setuptools-scm wheel
	$(BIN)/python -m pip install -q --no-build-isolation -c $(CONSTRAINTS) -e ".[dev]"
	$(BIN)/python -m pip check
	@echo "$(LINE) $(PYTHON_VERSION)" > $(STAMP)

FORCE:

# The line the Python found would install, and that Python: `make -s LINE=current python-line` prints
# `current /path/python3.12` where a Python 3.12 is found, else another line's (.ci/run asks this).
python-line:
	@echo "$(PYTHON_LINE) $(PYTHON)"

# The main job on its built-in default: local cluster, synthetic world, export.
demo: $(STAMP)
	$(BIN)/mtssl-train --model_dir=runs/demo

# Every table row of both papers at miniature scale on the synthetic world (under an hour on 2 cores);
# see configs/grid/mini.yaml and docs/mini/README.md. Reruns skip finished stages.
reproduce-mini: $(STAMP)
	$(BIN)/python tools/run_grid.py --grid=configs/grid/mini.yaml --output_dir=runs/mini --parallel=2

# Noroozi et al. 2018's Tables 3, 5 and 6 in miniature (the headline comparison: Jigsaw++ teachers on VGG16 and
# AlexNet, their CaffeNet students, random and supervised controls, each fine-tuned for classification, detection
# and segmentation and probed); about 2.6 h on 2 cores, see configs/grid/noroozi_mini.yaml.
reproduce-mini-noroozi: $(STAMP)
	$(BIN)/python tools/run_grid.py --grid=configs/grid/noroozi_mini.yaml --output_dir=runs/noroozi_mini --parallel=2

summary: $(STAMP)
	$(BIN)/mtssl-summary

# TEST_MARKS selects tests by marker (setup.cfg): TEST_MARKS='not scenario' leaves out the minutes-long
# multi-process fault, scheduling and grid scenarios (CI does so on the current line; BUILD.md).
TEST_MARKS ?=
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=10 $(if $(TEST_MARKS),-m "$(TEST_MARKS)") tests

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

# The same trunk step on both lines in one run (ratio current / reference); builds both venvs first.
benchmark-lines:
	$(MAKE) --no-print-directory LINE=reference install
	$(MAKE) --no-print-directory LINE=current install
	.venv/bin/python benchmarks/trunk_step_lines.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
