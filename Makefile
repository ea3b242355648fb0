# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# where torch comes from: pip's index by default (on Linux PyPI's torch is the CUDA build); for a CPU-only
# machine, `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`
TORCH_INDEX ?=

.PHONY: demo test install bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -r requirements.txt pytest hypothesis
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# the tests also cover train.fp8 (the extra 'dgpo[fp8]'), so `make test` adds torchao to the venv. `make demo`
# alone does not: transformers imports torchao whenever it is installed, which costs every command 0.4 s and,
# without CUDA, logs that its GPU kernels failed to load
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q torchao==0.18.0
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(VENV)/bin/dgpo train

test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest

bench: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m benchmarks.perf.epoch_phases

clean-venv:
	rm -rf $(VENV)
