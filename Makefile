# Two commands take a fresh clone to results:
#   make demo   set up .venv (if missing) and run the pipeline on the built-in demo, with its HTML report
#   make test   set up .venv (if missing) and run the test suite
#   make figures CONFIGFILE=config/paper_figures.yaml   paper-figure analogues (SIPEC Fig. 2-4) on the demo
# Set PYTHON to choose the interpreter the venv is made from (Python >= 3.11).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The rules call the `sipec` command: put the venv first on PATH for every recipe.
export PATH := $(abspath $(BIN)):$(PATH)
CORES ?= all
PYTEST_ARGS ?=
# An experiment config laid over config/config.yaml, e.g. make evaluate CONFIGFILE=config/dlc_openfield.yaml
CONFIGFILE ?=
REPORT ?= $(if $(CONFIGFILE),results/$(basename $(notdir $(CONFIGFILE)))/report.html,results/report.html)
SMK_CONFIG := $(if $(CONFIGFILE),--configfile $(CONFIGFILE))

.PHONY: setup demo evaluate figures report test bench clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements.lock
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps -e .
	@touch $@

demo: setup
	snakemake --profile profiles/local --cores $(CORES)
	snakemake --profile profiles/local --cores $(CORES) --report results/report.html
	@echo "Per-animal tables: results/<video>/animals.csv; cohort summary: results/cohort_summary.csv; report: results/report.html"

evaluate: setup
	snakemake --profile profiles/local --cores $(CORES) evaluate $(SMK_CONFIG)
	snakemake --profile profiles/local --cores $(CORES) --report $(REPORT) all evaluate $(SMK_CONFIG)

figures: setup
	snakemake --profile profiles/local --cores $(CORES) figures $(SMK_CONFIG)
	snakemake --profile profiles/local --cores $(CORES) --report $(REPORT) all figures $(SMK_CONFIG)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/throughput.py

clean-results:
	rm -rf results logs .snakemake
