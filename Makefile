# Two entry points: `make demo` (install + main job) and `make test` (install + test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: on machines with a local CPU wheel this avoids a multi-GB CUDA download.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint clean render-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" || $(BIN)/python -m pip install --quiet "torch>=2.4,<2.15"
	$(BIN)/python -m pip install --quiet -e ".[dev,minari,tune]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/ombrl demo

# Headless rendering libraries (EGL); installs only what is missing, and only as root.
render-deps:
	-bash scripts/install_render_deps.sh

# Workers of one torch thread each: the suite's networks are too small to keep two threads
# busy, so one test per core does more, and workers never compete for a core.
TEST_WORKERS ?= 2
test: install render-deps
	OMP_NUM_THREADS=1 MUJOCO_GL=egl $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src/offline_mbrl

clean:
	rm -rf $(VENV) .pytest_cache
