# Set-up and the everyday commands.
#
# Two environments. The heavy dependencies (torch, Snakemake, ...; pyproject.toml's list) live in one
# virtual environment outside the clone, keyed on pyproject.toml, so every clone on the machine reuses
# it and a dependency change makes a new one; it never holds this package. Each clone has its own
# small environment, .venv/ inside the clone: this clone's package installed (editable) there, the
# heavy environment's packages visible through a .pth file, and snakemake/pytest run by its python.
# So two clones on one machine each run their own code.
#   make setup CACHE=/tmp/other-cache    builds the heavy environment under another folder
PYTHON ?= python3
CACHE ?= $(HOME)/.cache/mcmi-kd
KEY := $(shell sha256sum pyproject.toml | cut -c1-16)
VENV ?= $(CACHE)/venv-$(KEY)
ENV ?= $(CURDIR)/.venv
BIN := $(ENV)/bin
CORES ?= 2
SITE := -c 'import sysconfig; print(sysconfig.get_path("purelib"))'   # a python's site-packages
TOOLS := snakemake pytest     # commands of the heavy environment that this clone's python runs too

.PHONY: setup demo test lint benchmark gpu-check clean-demo

$(VENV)/.complete:   # the folder name already encodes pyproject.toml, so a fresh clone reuses it
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = p["optional-dependencies"]; print("\n".join(p["dependencies"] + extras["test"] + extras["slurm"]))' > $(VENV)/requirements.txt
	$(VENV)/bin/pip install -q -r $(VENV)/requirements.txt 'setuptools>=68'   # setuptools: builds each clone's install
	touch $@

$(ENV)/.installed-$(KEY): $(VENV)/.complete pyproject.toml
	rm -rf $(ENV)
	$(VENV)/bin/python -m venv --without-pip $(ENV)
	echo "import site; site.addsitedir('$$($(VENV)/bin/python $(SITE))')" > "$$($(BIN)/python $(SITE))/zz_mcmi_shared_dependencies.pth"
	$(VENV)/bin/pip --python $(BIN)/python install -q --no-deps --no-build-isolation -e .
	for tool in $(TOOLS); do sed '1s|.*|#!$(BIN)/python|' $(VENV)/bin/$$tool > $(BIN)/$$tool; chmod +x $(BIN)/$$tool; done
	touch $@

setup: $(ENV)/.installed-$(KEY)   ## this clone's environment (and the shared heavy one, once)
	@echo "Environment ready: $(ENV) (this clone's mcmi; dependencies from $(VENV))."
	@echo "To use snakemake and mcmi from a shell, put its bin/ first on PATH:"
	@echo "    export PATH=$(BIN):\$$PATH"
	@echo "then e.g.: snakemake --cores 2 --configfile config/demo.yaml    mcmi --help"

demo: setup   ## every table and figure on this CPU from offline data (results/demo)
	PATH=$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml

test: setup   ## the test suite (torch.compile's kernels cached beside the environment: a warm run compiles nothing)
	PATH=$(BIN):$$PATH TORCHINDUCTOR_CACHE_DIR=$${TORCHINDUCTOR_CACHE_DIR:-$(CACHE)/inductor} $(BIN)/python -m pytest -q

lint: setup
	PATH=$(BIN):$$PATH $(BIN)/snakemake --lint --configfile config/test.yaml

benchmark: setup
	PATH=$(BIN):$$PATH $(BIN)/python benchmarks/bench_synthetic.py

gpu-check: setup   ## on a new GPU machine, first: CUDA tests + benchmarks (<= 8 min) -> docs/results/gpu.md
	PATH=$(BIN):$$PATH $(BIN)/python benchmarks/gpu_check.py

clean-demo:
	rm -rf results/demo
