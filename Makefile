# meshledger: `make demo` runs the main job, `make test` runs the tests.
# Both set up everything they need (venv, Python and npm packages) first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.meshledger-setup
PACKAGES := domain ledger router_core settlement infra indexer

.PHONY: setup demo test lint typecheck unit bench clean subgraph fault

setup: $(STAMP)

$(STAMP): pyproject.toml package.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	npm install --no-audit --no-fund --loglevel=error
	chmod +x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
	touch $(STAMP)

demo: setup
	$(BIN)/meshledger demo

lint: setup
	$(BIN)/ruff check $(PACKAGES) tests
	$(BIN)/ruff format --check $(PACKAGES) tests

typecheck: setup
	$(BIN)/mypy $(PACKAGES)

# the subgraph (infra/subgraph) builds offline: codegen, then AssemblyScript to wasm
subgraph: setup
	cd infra/subgraph && ../../node_modules/.bin/graph codegen --output-dir generated \
	  && ../../node_modules/.bin/graph build --output-dir build

# three workers: most tests wait on anvil, the broker or routers rather than on the CPU
test: setup lint typecheck subgraph
	$(BIN)/pytest -q -n 3

# Long fault campaigns; `make test` runs a short, seeded one of each.
# Contract invariants under fuzzing (EpochSettlement on anvil): random seeds unless SEED is given.
# Data faults (tests/faults: spool and database storage faults, broker faults; and the projector's
# deterministic simulation, tests/ledger/test_ledger_simulation.py): SEEDS=1,2,3
# (default 1..200), DURATION=60 (seconds of broker faults per seed).
CONTRACT_FUZZ_EXAMPLES ?= 500
CONTRACT_FUZZ_STEPS ?= 30
SEEDS    ?= $(shell seq -s, 1 200)
DURATION ?= 60
fault: setup
	MESHLEDGER_CONTRACT_FUZZ_EXAMPLES=$(CONTRACT_FUZZ_EXAMPLES) \
	MESHLEDGER_CONTRACT_FUZZ_STEPS=$(CONTRACT_FUZZ_STEPS) \
	  $(BIN)/pytest -q --timeout=0 $(if $(SEED),--hypothesis-seed=$(SEED)) \
	  tests/settlement/test_contract_fuzz.py
	FAULT_SEEDS="$(SEEDS)" FAULT_DURATION_S="$(DURATION)" $(BIN)/pytest -q --timeout=0 -n 3 \
	  tests/faults tests/ledger/test_ledger_simulation.py

bench: setup
	$(BIN)/meshledger bench ingest --json

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
