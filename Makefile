# meshledger: `make demo` runs the main job, `make test` runs the tests.
# Both set up everything they need (venv, Python and npm packages) first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.meshledger-setup
PACKAGES := domain ledger router_core settlement infra indexer dashboard

.PHONY: setup demo test lint typecheck unit bench clean subgraph fault vendor browser

setup: $(STAMP)

$(STAMP): pyproject.toml package.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	npm install --no-audit --no-fund --loglevel=error
	chmod +x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
	touch $(STAMP)

# the dashboard's charting libraries, committed under dashboard/static/vendor (so an installed
# package serves them without npm): refreshed from node_modules after a version change in
# package.json; tests/dashboard checks the committed copies equal node_modules'
VENDOR_JS := vega/build/vega.min.js vega-lite/build/vega-lite.min.js vega-embed/build/vega-embed.min.js
vendor: setup
	for f in $(VENDOR_JS); do cp node_modules/$$f dashboard/static/vendor/; done
	for p in vega vega-lite vega-embed; do cp node_modules/$$p/LICENSE dashboard/static/vendor/LICENSE.$$p; done

# Debian's chromium, for the dashboard's browser test (root: apt-get; else say what to install)
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for tests/dashboard"; exit 1; fi; }

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
test: setup browser lint typecheck subgraph
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
	  tests/faults tests/ledger/test_ledger_simulation.py tests/ledger/test_audit_snapshot_sim.py

bench: setup
	$(BIN)/meshledger bench ingest --json

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
