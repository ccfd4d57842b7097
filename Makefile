# The two commands of the README, plus helpers. Each target sets up what it needs first
# (scripts/setup.sh is idempotent: a second run reuses the venv and the built wheel).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup lab faults clean-venv

demo: setup          ## the main job on the small default model: build check, serve, summarize, stop
	$(PY) -m qwenkit demo

test: setup          ## the whole test suite (CI runs exactly this)
	$(PY) -m pytest -q

setup:
	bash scripts/setup.sh

lab: setup           ## open the notebooks in JupyterLab on 127.0.0.1
	$(PY) -m jupyter lab --ip 127.0.0.1 notebooks/

faults: setup        ## only the robustness / security fault suite
	$(PY) -m pytest -q -m faults

clean-venv:
	rm -rf $(VENV)
