# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtualenv on first use; nothing else needs to be installed first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck bench chaos chaos-short witness clean
WITNESS := .venv-witness
# Third-party clients that must be able to drive our simulators; never product dependencies.
WITNESS_CLIENTS := pyasic==0.79.0 luxos==0.2.4

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/curtaild demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

$(WITNESS)/.installed:
	test -x $(WITNESS)/bin/python || $(PYTHON) -m venv $(WITNESS)
	$(WITNESS)/bin/python -m pip install --quiet $(WITNESS_CLIENTS)
	touch $(WITNESS)/.installed

witness: $(STAMP) $(WITNESS)/.installed
	$(WITNESS)/bin/python tests/witness/run.py --curtaild $(BIN)/curtaild

bench: $(STAMP)
	$(BIN)/python -m bench.fanout

# Chaos and soak against real processes (bench/README.md): needs mosquitto, and root for the
# full-disk scenario and libfaketime (apt-get install faketime) for the clock step.
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

chaos-short: $(STAMP)
	$(BIN)/python -m bench.chaos --short $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) $(WITNESS) .mypy_cache .ruff_cache .pytest_cache .hypothesis
