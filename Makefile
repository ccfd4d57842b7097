# The two commands of the README, plus helpers. Each target sets up what it needs first
# (scripts/setup.sh is idempotent: a second run reuses the venv and the built wheel).
VENV ?= .venv
PY := $(VENV)/bin/python

# The suite runs in random order (pytest-randomly) with a printed seed; `make test TEST_SEED=N`
# replays an order. CI passes a seed derived from the commit, so one commit always runs one order.
ifndef TEST_SEED
TEST_SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
RANDOM_ORDER := -p randomly --randomly-seed=$(TEST_SEED)
# what `make check` reads: the package, its tests, the benchmarks and the tools (notebooks: ruff only)
CHECKED := qwenkit tests benchmarks tools

.PHONY: demo test test-fast check setup lab faults clean-venv

demo: setup          ## the main job on the small default model: build check, serve, summarize, stop
	$(PY) -m qwenkit demo

test: setup          ## the whole test suite in random order (CI runs this after `make check`)
	@echo "[test] random order, seed $(TEST_SEED) (replay: make test TEST_SEED=$(TEST_SEED))"
	$(PY) -m pytest -q $(RANDOM_ORDER)

test-fast: setup     ## the suite without the tests marked slow, in random order
	@echo "[test] random order, seed $(TEST_SEED) (replay: make test-fast TEST_SEED=$(TEST_SEED))"
	$(PY) -m pytest -q -m "not slow" $(RANDOM_ORDER)

check: setup         ## lint (ruff), types (mypy), duplicate code (pylint R0801); reports all three
	@rc=0; \
	echo "[check] ruff";   $(VENV)/bin/ruff check || rc=1; \
	echo "[check] mypy";   $(VENV)/bin/mypy || rc=1; \
	echo "[check] duplicate code (pylint R0801, 6 lines)"; $(VENV)/bin/pylint --score=n $(CHECKED) || rc=1; \
	exit $$rc

setup:
	bash scripts/setup.sh

lab: setup           ## open the notebooks in JupyterLab on 127.0.0.1
	$(PY) -m jupyter lab --ip 127.0.0.1 notebooks/

faults: setup        ## only the robustness / security fault suite
	$(PY) -m pytest -q -m faults

clean-venv:
	rm -rf $(VENV)
