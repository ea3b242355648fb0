# Two commands do all the set-up on a fresh machine: `make demo` and `make test` (the fast tier;
# `make test-all` is everything, what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# where torch comes from: pip's index by default (on Linux PyPI's torch is the CUDA build); for a CPU-only
# machine, `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`
TORCH_INDEX ?=

.PHONY: demo test test-all docs options-doc install bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -r requirements.txt pytest hypothesis
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# the tests also cover train.fp8 (the extra 'dgpo[fp8]'), so `make test` adds torchao to the venv. `make demo`
# alone does not: transformers imports torchao whenever it is installed, which costs every command 0.4 s and,
# without CUDA, logs that its GPU kernels failed to load. ruff: the linter tests/test_lint.py runs (its rules in
# pyproject.toml's [tool.ruff.lint])
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q torchao==0.18.0 pytest-timeout==2.4.0 mkdocs==1.6.1 mkdocs-material==9.8.2 ruff==0.17.6
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(VENV)/bin/dgpo train

# the fast tier: maths, losses, samplers, configs, rewards, rules, official pins, a short run per algorithm,
# a 2-process equality, the CLI (at most 5 minutes on 2 cores)
test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -m "not slow"

# everything: what CI runs
test-all: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest

# the docs site at http://127.0.0.1:8000
docs: $(TEST_STAMP)
	$(VENV)/bin/mkdocs serve

# regenerate the generated part of docs/reference/options.md (the hand-written tables after it are kept)
options-doc: $(STAMP)
	$(PY) -c "from pathlib import Path; from dgpo.config.docs import options_markdown; \
	p = Path('docs/reference/options.md'); t = p.read_text(); \
	p.write_text(t[:t.index('| key |')] + options_markdown().rstrip() + '\n\n' + t[t.index('## Slow-EMA'):])"

bench: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m benchmarks.perf.epoch_phases

clean-venv:
	rm -rf $(VENV)
