# switchyard — developer and demo tasks. `make` (or `make help`) lists them.
#
# Quick start on a fresh machine:
#   make run     # starts a local RabbitMQ if needed, then the service with config/switchyard.yaml
#   make test    # the whole test suite, against the local RabbitMQ

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO        ?= cargo
CONFIG       ?= config/switchyard.yaml
EVENT        ?= examples/events/data-captured.json
# Extra arguments: `make test TEST_ARGS=router`, `make bench BENCH_ARGS="--n 10000"`,
# `make publish PUBLISH_ARGS="--count 100 --rate 50"`.
TEST_ARGS    ?=
BENCH_ARGS   ?=
PUBLISH_ARGS ?=
# `make fuzz`: seconds per fuzz target.
FUZZ_SECONDS ?= 600

# The local broker that the example configuration and the tests use.
RABBITMQ_HOST ?= 127.0.0.1
RABBITMQ_PORT ?= 5672

.PHONY: help rabbitmq run sink publish test bench lint fmt validate topology fuzz

help: ## List the targets
	@echo "switchyard — make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-10s %s\n", $$1, $$2 }'
	@echo
	@echo "Variables: CONFIG=$(CONFIG) EVENT=$(EVENT) TEST_ARGS= BENCH_ARGS= PUBLISH_ARGS="

# Starts a local RabbitMQ unless something already answers on $(RABBITMQ_HOST):$(RABBITMQ_PORT).
# Debian's rabbitmq-server must run as root (it switches to the rabbitmq user itself), hence sudo for
# other users when that system user exists.
rabbitmq: ## Start a local RabbitMQ if none answers on 127.0.0.1:5672
	@export PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin"; \
	if (exec 3<>/dev/tcp/$(RABBITMQ_HOST)/$(RABBITMQ_PORT)) 2>/dev/null; then \
		echo "rabbitmq: already answering on $(RABBITMQ_HOST):$(RABBITMQ_PORT)"; exit 0; \
	fi; \
	if ! command -v rabbitmq-server >/dev/null; then \
		echo "rabbitmq: nothing answers on $(RABBITMQ_HOST):$(RABBITMQ_PORT) and rabbitmq-server is not installed." >&2; \
		echo "  Install it (Debian/Ubuntu): sudo apt-get install -y rabbitmq-server   (macOS: brew install rabbitmq)" >&2; \
		exit 1; \
	fi; \
	sudo=""; \
	if [ "$$(id -u)" -ne 0 ] && id -u rabbitmq >/dev/null 2>&1; then sudo="sudo"; fi; \
	echo "rabbitmq: starting ($${sudo:+$$sudo }rabbitmq-server -detached)"; \
	$$sudo rabbitmq-server -detached || echo "rabbitmq: -detached failed; waiting in case a node is already booting" >&2; \
	for i in $$(seq 1 60); do \
		if $$sudo rabbitmqctl -q await_startup >/dev/null 2>&1; then break; fi; \
		sleep 2; \
	done; \
	for i in $$(seq 1 30); do \
		if (exec 3<>/dev/tcp/$(RABBITMQ_HOST)/$(RABBITMQ_PORT)) 2>/dev/null; then \
			echo "rabbitmq: up on $(RABBITMQ_HOST):$(RABBITMQ_PORT)"; exit 0; \
		fi; \
		sleep 1; \
	done; \
	echo "rabbitmq: started, but nothing answers on $(RABBITMQ_HOST):$(RABBITMQ_PORT); see /var/log/rabbitmq/" >&2; \
	exit 1

run: rabbitmq ## Run the service against the local broker with config/switchyard.yaml
	$(CARGO) run --release -- run --config $(CONFIG)

sink: ## Run the demo sink on 127.0.0.1:8080 (prints every request it receives; SINK_LISTEN= to move it)
	$(CARGO) run --release --example sink

publish: ## Publish the example event (examples/events/data-captured.json)
	$(CARGO) run --release -- publish --config $(CONFIG) --event $(EVENT) $(PUBLISH_ARGS)

# Two steps: the suite, then the ignored tests alone and one at a time. The ignored ones restart the
# shared broker (tests/broker_restart.rs), so they must never overlap another test.
test: rabbitmq ## Check the alert rules, the Helm chart and the Dockerfile, run all tests (nextest when installed), then the broker-restart test alone
	bash deploy/prometheus/install.sh
	bash deploy/prometheus/check.sh
	bash helm/check.sh
	bash deploy/docker-check.sh
	@set -e; if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "+ $(CARGO) nextest run --all-targets $(TEST_ARGS)"; \
		$(CARGO) nextest run --all-targets $(TEST_ARGS); \
		echo "+ $(CARGO) nextest run --all-targets --run-ignored only --test-threads 1 --no-tests pass $(TEST_ARGS)"; \
		$(CARGO) nextest run --all-targets --run-ignored only --test-threads 1 --no-tests pass $(TEST_ARGS); \
	else \
		echo "+ $(CARGO) test --all-targets $(TEST_ARGS)   (install cargo-nextest for faster runs)"; \
		$(CARGO) test --all-targets $(TEST_ARGS); \
		echo "+ $(CARGO) test --all-targets $(TEST_ARGS) -- --ignored --test-threads 1"; \
		$(CARGO) test --all-targets $(TEST_ARGS) -- --ignored --test-threads 1; \
	fi

# The bench runs the release `switchyard` binary as a child process, so both must be built.
bench: rabbitmq ## Measure throughput, latency and memory against the broker's ceiling (switchyard-bench)
	$(CARGO) build --release --bins
	./target/release/switchyard-bench $(BENCH_ARGS)

lint: ## Check formatting and clippy warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

validate: ## Check config/switchyard.yaml and every workflow
	$(CARGO) run --release -- validate --config $(CONFIG)

topology: rabbitmq ## Declare the exchanges and queues on the local broker and print them
	$(CARGO) run --release -- topology --config $(CONFIG)

# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. Each target
# starts from its committed seeds (fuzz/corpus/<target>, read only) and grows a working corpus under
# fuzz/target/corpus; a crash is saved under fuzz/artifacts/<target>/ and stops the run.
FUZZ_TARGETS := envelope json_template
fuzz: ## Fuzz the envelope parser and the JSON-body template renderer, FUZZ_SECONDS (600) each
	@command -v cargo-fuzz >/dev/null || { echo "fuzz: install cargo-fuzz first: cargo install cargo-fuzz" >&2; exit 1; }
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/target/corpus/$$target; \
		echo "+ cargo fuzz run $$target (for $(FUZZ_SECONDS)s)"; \
		(cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target target/corpus/$$target corpus/$$target \
			-- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) || exit 1; \
	done
