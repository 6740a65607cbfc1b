# fineflow's two entry points. Each bootstraps the locked environment by itself on a fresh clone.
#   make run    the main job on the embedded defaults
#   make test   the test suite
# uv must never download a Python build: the interpreter is the machine's python3.13 (see .python-version).

PYTHON ?= python3.13
UV := UV_PYTHON_DOWNLOADS=never $(PYTHON) -m uv
VENV_STAMP := .venv/.fineflow-synced

.PHONY: run test lint env clean-state

run: $(VENV_STAMP)
	.venv/bin/fineflow run

test: $(VENV_STAMP)
	.venv/bin/lint-imports --no-cache
	.venv/bin/python -m pytest

lint: $(VENV_STAMP)
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

env: $(VENV_STAMP)

# Bytecode is compiled at install time: imports of torch/transformers then take seconds, not tens of seconds.
$(VENV_STAMP): pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

# Forget every dataset commit, MLflow run and Prefect record of the embedded stack.
clean-state:
	rm -rf .fineflow
