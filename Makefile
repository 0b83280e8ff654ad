# The README's two commands: `make demo` and `make test`. Each creates .venv if missing and installs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first where there is no NVIDIA driver, so pip does not pull a multi-GB CUDA build;
	# with a GPU, the package's own range (torch>=2.4) picks the usual CUDA build.
	if ! $(BIN)/python -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null; then \
		$(BIN)/python -m pip install -q torch==2.13.0; fi
	# ray: the Ray executor's tests run in CI too (Ray core has no torch dependency: the CPU torch above stays)
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mue-bench sweep sweeps/demo.toml

test: $(BIN)/.installed
	$(BIN)/python -m pytest tests

lint: $(BIN)/.installed
	$(BIN)/ruff check mue_bench tests benchmarks studies

clean:
	rm -rf $(VENV) data results/*.parquet results/*.parts
