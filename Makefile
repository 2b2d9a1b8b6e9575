# The two README commands:
#   make run    set everything up (first time only) and run the main job on the embedded data
#   make test   set everything up (first time only) and run the whole test suite
# plus `make lab` (JupyterLab on nbs/) and `make bench` (benchmark table).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.skelnb-installed
ARGS    ?=

.PHONY: setup run test lab bench export clean-nbs check docs

setup: $(STAMP)

$(STAMP): settings.ini setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# the CPU build of torch first, so the requirement below never pulls a CUDA build
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/skelnb-main $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -ra tests $(ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab nbs

bench: $(STAMP)
	$(BIN)/skelnb-bench $(ARGS)

# the library is generated from the notebooks; run after editing nbs/
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/python .ci/clean_widgets.py

check: $(STAMP)
	bash .ci/check_sync

# the lessons as an offline web site: every notebook executed headless, rendered to _site/ (open _site/index.html);
# ARGS="--only 00_intro 04_viz" builds a few lessons, ARGS="--fast" runs their small test workloads
docs: $(STAMP)
	$(BIN)/python tools/build_site.py $(ARGS)
