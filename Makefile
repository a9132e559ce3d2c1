# evalbus: `make demo` runs a real batch on the embedded stack; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test chaos lint bench fuzz up down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/evalbus demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

chaos: $(STAMP)
	EVALBUS_CHAOS_PROMPTS=2000 EVALBUS_CHAOS_PG_PAUSE_S=20 EVALBUS_CHAOS_CLUSTER=1 $(BIN)/python -m pytest -q -s tests/chaos

bench: $(STAMP)
	$(BIN)/python -m bench.run

# Hostile input against a live stack (the running one, else one started and stopped for the run).
fuzz: $(STAMP)
	$(BIN)/python -m bench.hostile --up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

up: $(STAMP)
	$(BIN)/evalbus up

down: $(STAMP)
	$(BIN)/evalbus down

clean:
	-$(BIN)/evalbus down
	rm -rf .evalbus
