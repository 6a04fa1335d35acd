# The two commands: `make demo` runs the main job on the built-in data, `make test` runs the tests.
# Each sets up what it needs on a fresh machine: a .venv with torch and latentda[sim] (the tests add [dev]).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two stamps: the demo needs torch and latentda[sim]; the tests add the dev extra (pytest, DAPPER, pyarrow).
STAMP := $(VENV)/.installed
STAMP_DEV := $(VENV)/.installed-dev
# On a machine without a GPU install the CPU build of torch (a bare `pip install torch` may pull
# a multi-GB CUDA build). Override for GPUs, e.g. `make demo TORCH=torch`.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
# Installer: uv (parallel downloads and byte-compilation: about 3x faster than pip here) when it can be
# installed, else pip. uv does not read pip's configuration, so a local wheel folder pip is configured
# with ($$PIP_FIND_LINKS or `pip config get global.find-links`, e.g. where a CPU torch lies) is passed on to it.
FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
comma := ,
define install
($(PY) -m pip install --quiet uv && $(UV_INSTALL) $(1)) || $(PY) -m pip install --quiet $(1)
endef
DATA := data
DEMO := demo

.PHONY: test demo demo-full setup clean

setup: $(STAMP_DEV)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call install,"$(TORCH)" -e ".[sim]")
	touch $(STAMP)

$(STAMP_DEV): $(STAMP)
	$(call install,"$(TORCH)" -e ".[sim$(comma)dev]")
	touch $(STAMP_DEV)

test: $(STAMP_DEV)
	$(PY) -m pytest -q

LATENTDA := $(VENV)/bin/latentda
PIPELINE ?= pretrained/kolmogorov
MEMBERS ?= 6
WINDOW ?= 16
LEAD ?= 16

# The main job with the shipped reference pipeline: a new (held-out) Kolmogorov trajectory, sparse
# noisy observations of it, a posterior ensemble, a forecast continuing each member, scores, figures.
# Sampling uses the pipeline's defaults (pipeline_config.json); e.g. SAMPLING="--steps 16" to change them.
demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(LATENTDA) simulate kolmogorov --out $(DEMO)/truth.zarr --trajectories 2 --steps $$(( $(WINDOW) + $(LEAD) )) --seed 2026
	$(LATENTDA) observe --truth $(DEMO)/truth.zarr --trajectory 0 --length $(WINDOW) --operator configs/observe/sparse.yaml \
		--out $(DEMO)/observations.nc --seed 1
	$(LATENTDA) reanalyze --pipeline $(PIPELINE) --observations $(DEMO)/observations.nc --members $(MEMBERS) \
		--out $(DEMO)/reanalysis.zarr $(SAMPLING)
	$(LATENTDA) forecast --pipeline $(PIPELINE) --initial $(DEMO)/reanalysis.zarr --lead $(LEAD) --members $(MEMBERS) \
		--out $(DEMO)/forecast.zarr $(SAMPLING)
	$(LATENTDA) evaluate --prediction $(DEMO)/reanalysis.zarr --truth $(DEMO)/truth.zarr --trajectory 0 \
		--observations $(DEMO)/observations.nc --out $(DEMO)/reanalysis-scores
	$(LATENTDA) evaluate --prediction $(DEMO)/forecast.zarr --truth $(DEMO)/truth.zarr --trajectory 0 --out $(DEMO)/forecast-scores
	$(PY) tools/demo_figures.py --truth $(DEMO)/truth.zarr --observations $(DEMO)/observations.nc \
		--reanalysis $(DEMO)/reanalysis.zarr --forecast $(DEMO)/forecast.zarr --out $(DEMO)/figures

# Retrain everything from scratch with the user-facing commands (65-75 minutes on 2 CPU cores),
# then run the demo with the new pipeline. Pass ARGS=--resume to continue an interrupted run.
demo-full: $(STAMP)
	LATENTDA=$(LATENTDA) bash tools/train_reference.sh $(ARGS)
	$(MAKE) demo

# DAPPER's Fortran QG model (f2py, into the venv's dapper package; installs gfortran, meson and ninja if
# missing; skipped when built) for `latentda simulate dapper-qg` and tools/bench_dapper_qg.py (docs/qg-benchmark.md).
.PHONY: dapper
dapper: $(STAMP_DEV)
	PY=$(PY) bash tools/build_dapper_qg.sh

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
