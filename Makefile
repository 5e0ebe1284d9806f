# Two commands matter: `make demo` and `make test`. Both create .venv and install on first use and
# skip the install while pyproject.toml is unchanged (the stamp file depends on it).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CLI    := $(VENV)/bin/ckd-search
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-fast lint format soak bench gpu-wheels device-torch-check clean
install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(CLI) demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check ckd_search trainables tests bench
	$(VENV)/bin/ruff format --check ckd_search trainables tests bench
	$(VENV)/bin/mypy ckd_search trainables

format: $(STAMP)
	$(VENV)/bin/ruff check --fix ckd_search trainables tests bench
	$(VENV)/bin/ruff format ckd_search trainables tests bench

soak: $(STAMP)
	$(PY) bench/soak.py

bench: $(STAMP)
	$(PY) bench/step_throughput.py --smoke
	$(PY) bench/precision.py --smoke
	$(PY) bench/data_throughput.py

# The pure-Python wheels a lent GPU machine lacks (Python 3.12 there); bench/gpu_session.sh installs them.
gpu-wheels: $(STAMP)  # afresh each time: two versions of one wheel stop the device's whole install
	rm -rf .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  -d .whl spikingjelly==2.0.0 loguru==0.7.3

# The compile tests under the GPU machines' torch (2.11.0), on this CPU: run before a device session.
device-torch-check: $(STAMP)
	bash bench/device_torch_check.sh

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
