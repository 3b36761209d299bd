# sbx: `make run` starts a server on this host; `make test` runs every test.
TRIPLE := x86_64-unknown-linux-gnu
AGENT := $(CURDIR)/target/$(TRIPLE)/release/sbx-agent
SBX := $(CURDIR)/target/release/sbx
DATA_DIR ?= /var/lib/sbx
PY ?= python3

.PHONY: deps deps-test agent build run test test-rust test-python test-ts bench clean-host

deps:
	./scripts/install-deps.sh

# Also the tools tests use beside sbx (an OCI registry, skopeo, umoci, busybox-static,
# PostgreSQL, SeaweedFS's weed in /opt/sbx/test-tools).
deps-test:
	./scripts/install-deps.sh --test

# The agent runs as PID 1 inside every sandbox: a static binary.
agent:
	RUSTFLAGS="-C target-feature=+crt-static" cargo build -p sbx-agent --release --target $(TRIPLE)

build: agent
	cargo build --release -p sbx-cli

run: deps build
	$(SBX) server --data-dir $(DATA_DIR) --agent-bin $(AGENT)

# Every test: unit tests, end-to-end tests against real gVisor sandboxes,
# and the tensorlake-client suite. Tests use the debug build of `sbx`.
test: deps-test agent
	cargo build -p sbx-cli
	$(MAKE) test-rust test-python test-ts

test-rust:
	SBX_BIN=$(CURDIR)/target/debug/sbx SBX_AGENT_BIN=$(AGENT) cargo test --workspace -- --test-threads=2

test-python:
	SBX_BIN=$(CURDIR)/target/debug/sbx SBX_AGENT_BIN=$(AGENT) ./tests/python/run.sh

# The TypeScript SDK's suite (node's test runner) against a real server.
test-ts:
	cd sdk/typescript && npm ci --no-audit --no-fund && SBX_BIN=$(CURDIR)/target/debug/sbx SBX_AGENT_BIN=$(AGENT) npm test

bench: build
	$(PY) bench/bench.py --sbx $(SBX) --agent $(AGENT)
