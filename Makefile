# Two commands do all the set-up on a fresh machine:
#   make demo   -- builds .venv and the tiny model, then trains asynchronously on CPU
#   make test   -- builds .venv, then runs the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch: from the machine's wheel directory when pip is configured with one,
# else from PyTorch's CPU package index.
ifdef PIP_FIND_LINKS
TORCH_SOURCE := --find-links "$(PIP_FIND_LINKS)"
else
TORCH_SOURCE := --extra-index-url https://download.pytorch.org/whl/cpu
endif
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export AREAL_SYS_CACHE ?= $(CURDIR)/.cache/areal_sys

.PHONY: venv demo test test-fast lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/overrides.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --python $(BIN)/python -e ".[cpu,dev]" $(TORCH_SOURCE) \
		--index-strategy unsafe-best-match --override requirements/overrides.txt --compile-bytecode
	touch $@

demo: venv
	$(BIN)/areal-sys run configs/local_tiny.yaml

# Two passes: the tests that start no engine, trainer or Ray cluster run on two pytest workers
# (most of their time is spent waiting on subprocesses: servers, sandboxes, the CLI); the `slow`
# ones (engines, trainers, the end-to-end launches, which use every core) run one at a time after
# them. Both passes always run; the target fails if either failed.
test: venv
	$(BIN)/ruff check .
	status=0; \
	$(BIN)/python -m pytest -q -ra -n 2 -m "not slow" tests || status=$$?; \
	$(BIN)/python -m pytest -q -ra -m slow tests || status=$$?; \
	exit $$status

# The fast tier, the inner loop (about a minute): no Ray, vLLM or DeepSpeed (`slow`: engines,
# trainers, the end-to-end launches) and no real servers, sandboxes or model builds
# (`integration`). The markers are listed in pyproject.toml.
test-fast: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra -n 2 -m "not slow and not integration" tests

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .cache runs
