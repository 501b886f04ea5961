# Set-up and the everyday commands. The virtual environment lives outside the clone, keyed on the
# dependency list (pyproject.toml), so a fresh clone reuses it and a dependency change makes a new one.
PYTHON ?= python3
KEY := $(shell sha256sum pyproject.toml | cut -c1-16)
VENV ?= $(HOME)/.cache/mcmi-kd/venv-$(KEY)
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo test lint benchmark clean-demo

$(VENV)/.complete:   # the folder name already encodes pyproject.toml, so a fresh clone reuses it
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,slurm]'
	touch $@

setup: $(VENV)/.complete
	@$(BIN)/pip install -q --no-deps -e . >/dev/null

demo: setup   ## every table and figure on this CPU from offline data (results/demo)
	PATH=$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml

test: setup   ## the test suite
	PATH=$(BIN):$$PATH $(BIN)/python -m pytest -q

lint: setup
	PATH=$(BIN):$$PATH $(BIN)/snakemake --lint --configfile config/test.yaml

benchmark: setup
	PATH=$(BIN):$$PATH $(BIN)/python benchmarks/bench_synthetic.py

clean-demo:
	rm -rf results/demo
