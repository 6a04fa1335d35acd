# The two commands: `make demo` runs the main job on the built-in data, `make test` runs the tests.
# Each sets up what it needs on a fresh machine: a .venv with torch and latentda[sim,dev].

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# On a machine without a GPU install the CPU build of torch first (a bare `pip install torch` may pull
# a multi-GB CUDA build). Override for GPUs, e.g. `make demo TORCH=torch`.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
DATA := data
DEMO := demo

.PHONY: test demo setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[sim,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	mkdir -p $(DATA) $(DEMO)
	$(VENV)/bin/latentda simulate kolmogorov --out $(DATA)/kolmogorov-demo.zarr --trajectories 8 --steps 32 --seed 1 --overwrite
	$(VENV)/bin/latentda inspect $(DATA)/kolmogorov-demo.zarr --statistics-out $(DEMO)/statistics.json

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
