# The README's two commands: `make demo` and `make test`. Each creates .venv if missing and installs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint install clean bench-gpu gpu-wheels

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

# The whole suite, with the 15 slowest tests listed at the end.
test: $(BIN)/.installed
	$(BIN)/python -m pytest tests --durations=15

# A quick subset while editing: everything but training, Ray, the fuzz suite, the GPU suite's dry run and the
# transformers adapters (the slowest files); `make test` before committing.
SLOW_TESTS := test_train test_finetune test_ofa_finetune test_ray test_fuzz test_gpu_suite test_hf_adapters \
	test_hf_checkpoints test_shipped_model
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest tests -q $(foreach t,$(SLOW_TESTS),--ignore=tests/$(t).py)

lint: $(BIN)/.installed
	$(BIN)/ruff check mue_bench tests benchmarks studies

# On a lent GPU (no venv there: its own python3, the carried wheels; benchmarks/gpu_suite.sh says how).
bench-gpu:
	PYTHON=$(PYTHON) bash benchmarks/gpu_suite.sh $(if $(OUT),--out $(OUT)/gpu_results.md)

gpu-wheels: $(BIN)/.installed
	PYTHON=$(BIN)/python bash benchmarks/gpu_suite.sh --fetch-wheels

clean:
	rm -rf $(VENV) data results/*.parquet results/*.parts
