# switchyard — developer and demo tasks. `make` (or `make help`) lists them.
#
# Quick start on a fresh machine:
#   make run     # starts a local RabbitMQ and PostgreSQL if needed, then the service with config/switchyard.yaml
#   make test    # the whole test suite, against the local RabbitMQ and PostgreSQL

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
# Where `make test` builds what tests/quickstart.rs runs (`make run`, `make sink`, `make publish`).
QUICKSTART_TARGET ?= target/quickstart
# `make fuzz`: seconds per fuzz target.
FUZZ_SECONDS ?= 600
# `make lint` checks that no two modules import each other with cargo-modules (installed if missing).
# 0.27 is its last release for rustc 1.95; its own --acyclic checks the item graph (a type and its
# methods count as a cycle), so scripts/acyclic.py checks the module graph it prints.
CARGO_MODULES_VERSION ?= 0.27.0

# The local broker that the example configuration and the tests use.
RABBITMQ_HOST ?= 127.0.0.1
RABBITMQ_PORT ?= 5672

# The local PostgreSQL that run history (SPEC §9) and its tests use; role and database are both
# `switchyard`, password $(POSTGRES_PASSWORD) (config/switchyard.yaml points there).
POSTGRES_HOST     ?= 127.0.0.1
POSTGRES_PORT     ?= 5432
POSTGRES_PASSWORD ?= switchyard

# The operator console of `make run` (SPEC §11): on 127.0.0.1 only, with one demo operator token.
CONSOLE_LISTEN ?= 127.0.0.1:9465
CONSOLE_TOKEN  ?= demo-console-token

.PHONY: help rabbitmq postgres browser run sink publish test test-cluster bench bench-history bench-isolation bench-console lint fmt validate topology fuzz

help: ## List the targets
	@echo "switchyard — make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-10s %s\n", $$1, $$2 }'
	@echo
	@echo "Variables: CONFIG=$(CONFIG) EVENT=$(EVENT) TEST_ARGS= BENCH_ARGS= PUBLISH_ARGS="

# Starts a local RabbitMQ unless something already answers on $(RABBITMQ_HOST):$(RABBITMQ_PORT), installing
# Debian's rabbitmq-server first when it is missing (deploy/rabbitmq/start.sh says how elsewhere).
rabbitmq: ## Start a local RabbitMQ if none answers on 127.0.0.1:5672 (installs it on Debian/Ubuntu)
	@RABBITMQ_HOST=$(RABBITMQ_HOST) RABBITMQ_PORT=$(RABBITMQ_PORT) bash deploy/rabbitmq/start.sh

# Installs Debian's postgresql when missing, starts a cluster when nothing answers on
# $(POSTGRES_HOST):$(POSTGRES_PORT), then creates the role and database (idempotent). psql runs as the
# postgres OS user (peer/trust on the local socket), with sudo when we are not root.
postgres: ## Install/start a local PostgreSQL if needed; create role and database `switchyard`
	@export PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin"; \
	sudo=""; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo"; fi; \
	answers() { (exec 3<>/dev/tcp/$(POSTGRES_HOST)/$(POSTGRES_PORT)) 2>/dev/null; }; \
	if ! answers; then \
		if ! command -v pg_lsclusters >/dev/null; then \
			echo "postgres: installing Debian's postgresql ($${sudo:+$$sudo }apt-get install -y postgresql)"; \
			$$sudo apt-get update -qq </dev/null; \
			DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends postgresql </dev/null; \
		fi; \
		version=$$(pg_lsclusters -h | awk 'NR==1 { print $$1 }'); \
		cluster=$$(pg_lsclusters -h | awk 'NR==1 { print $$2 }'); \
		if [ -z "$$version" ]; then \
			version=$$(ls /usr/lib/postgresql | sort -n | tail -1); cluster=main; \
			echo "postgres: creating cluster $$version/$$cluster"; \
			$$sudo pg_createcluster "$$version" "$$cluster" -p $(POSTGRES_PORT); \
		fi; \
		echo "postgres: starting cluster $$version/$$cluster"; \
		$$sudo pg_ctlcluster "$$version" "$$cluster" start || true; \
		for i in $$(seq 1 30); do answers && break; sleep 1; done; \
		answers || { echo "postgres: started, but nothing answers on $(POSTGRES_HOST):$(POSTGRES_PORT); see /var/log/postgresql/" >&2; exit 1; }; \
	else \
		echo "postgres: already answering on $(POSTGRES_HOST):$(POSTGRES_PORT)"; \
	fi; \
	psql() { $$sudo -u postgres psql -p $(POSTGRES_PORT) -v ON_ERROR_STOP=1 -qtA "$$@"; }; \
	if [ -z "$$sudo" ]; then psql() { runuser -u postgres -- psql -p $(POSTGRES_PORT) -v ON_ERROR_STOP=1 -qtA "$$@"; }; fi; \
	if [ "$$(psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'switchyard'")" != 1 ]; then \
		psql -c "CREATE ROLE switchyard LOGIN PASSWORD '$(POSTGRES_PASSWORD)'"; \
	fi; \
	if [ "$$(psql -c "SELECT 1 FROM pg_database WHERE datname = 'switchyard'")" != 1 ]; then \
		psql -c "CREATE DATABASE switchyard OWNER switchyard"; \
	fi; \
	echo "postgres: role and database switchyard ready (postgres://switchyard:…@$(POSTGRES_HOST):$(POSTGRES_PORT)/switchyard)"

# Chromium and its WebDriver for the console's browser tests (tests/console_browser.rs), from Debian's
# packages `chromium` and `chromium-driver`; apt-get runs with sudo when we are not root.
browser: ## Install chromium and chromedriver (Debian packages) for the console's browser tests, if missing
	@if command -v chromedriver >/dev/null || [ -x /usr/lib/chromium/chromedriver ]; then \
		echo "browser: chromedriver already installed"; \
	else \
		sudo=""; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo"; fi; \
		echo "browser: installing Debian's chromium and chromium-driver ($${sudo:+$$sudo }apt-get install -y)"; \
		$$sudo apt-get update -qq </dev/null; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends chromium chromium-driver </dev/null; \
	fi

# The console listens on $(CONSOLE_LISTEN) (SWITCHYARD__CONSOLE__LISTEN wins) with the demo operator of
# config/switchyard.yaml, whose token is the secret CONSOLE_DEMO (SWITCHYARD_SECRET_CONSOLE_DEMO wins).
run: rabbitmq postgres ## Run the service against the local broker with config/switchyard.yaml (console on 127.0.0.1:9465)
	@echo "console: http://$${SWITCHYARD__CONSOLE__LISTEN:-$(CONSOLE_LISTEN)}  token: $${SWITCHYARD_SECRET_CONSOLE_DEMO:-$(CONSOLE_TOKEN)}"
	SWITCHYARD__CONSOLE__LISTEN="$${SWITCHYARD__CONSOLE__LISTEN:-$(CONSOLE_LISTEN)}" \
	SWITCHYARD_SECRET_CONSOLE_DEMO="$${SWITCHYARD_SECRET_CONSOLE_DEMO:-$(CONSOLE_TOKEN)}" \
	$(CARGO) run --bin switchyard -- run --config $(CONFIG)

sink: ## Run the demo sink on 127.0.0.1:8080 (prints every request it receives; SINK_LISTEN= to move it)
	$(CARGO) run --example sink

publish: ## Publish the example event (examples/events/data-captured.json)
	$(CARGO) run --bin switchyard -- publish --config $(CONFIG) --event $(EVENT) $(PUBLISH_ARGS)

# Two steps: the suite, then the ignored tests alone and one at a time. The ignored ones restart the
# shared broker (tests/broker_restart.rs) or start a three-node cluster of their own beside it
# (tests/cluster.rs, about a minute), so they must never overlap another test.
test: rabbitmq postgres browser ## Check the alert rules, the Helm chart and the Dockerfile, run all tests (nextest when installed), then the broker-restart, alarm and cluster tests one at a time
	bash deploy/prometheus/install.sh
	bash deploy/prometheus/check.sh
	@# tests/quickstart.rs runs `make run`, `make sink` and `make publish` with their builds in
	@# $(QUICKSTART_TARGET): `cargo run --bin switchyard` builds without the dev-dependencies' features,
	@# so in target/ it would swap target/debug/switchyard, which the other tests run, mid-suite. The
	@# Helm check runs that same build, so it is made once, here.
	CARGO_TARGET_DIR=$(QUICKSTART_TARGET) bash helm/check.sh
	bash deploy/docker-check.sh
	CARGO_TARGET_DIR=$(QUICKSTART_TARGET) $(CARGO) build --example sink
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

# tests/cluster.rs alone: a private three-node cluster, a follower restarted, the service's node killed
# (`make test` runs it too, in its serial step).
test-cluster: rabbitmq ## The broker-cluster failover test alone (make test runs it too)
	$(CARGO) nextest run --all-targets --run-ignored only --test-threads 1 -E 'binary(cluster)' $(TEST_ARGS)

# The bench (bench/, its own workspace member) runs the `switchyard` binary next to its own as a child
# process, so both must be built; with the `dist` profile (Cargo.toml), what the image ships.
# BENCH_PROFILE=release measures `cargo build --release`'s build instead.
BENCH_PROFILE ?= dist
BENCH_BUILD = $(CARGO) build --profile $(BENCH_PROFILE) --bin switchyard && $(CARGO) build --profile $(BENCH_PROFILE) -p switchyard-bench
BENCH = ./target/$(BENCH_PROFILE)/switchyard-bench
bench: rabbitmq ## Measure throughput, latency and memory against the broker's ceiling (bench/, switchyard-bench)
	$(BENCH_BUILD)
	$(BENCH) $(BENCH_ARGS)

# Run history's two benchmarks (issue 13), against the database of `make postgres`: the pipeline bench
# with history off and on in paired runs, and 10 million generated attempt rows with the `runs list`
# lookups and a day's partition drop timed. Each works in a PostgreSQL schema of its own, dropped after.
HISTORY_BENCH_URL ?= postgres://switchyard:$(POSTGRES_PASSWORD)@$(POSTGRES_HOST):$(POSTGRES_PORT)/switchyard
bench-history: rabbitmq postgres ## Run history's cost on the pipeline (paired runs, off vs on) and its lookups at 10 million rows
	$(BENCH_BUILD)
	$(BENCH) --history-url '$(HISTORY_BENCH_URL)' --history-pairs 3 --events 20000 --latency-events 15000 --latency-rate 2000 $(BENCH_ARGS)
	$(BENCH) history --url '$(HISTORY_BENCH_URL)'

# Destinations' isolation (issue 14): 50 destinations, one of which hangs, then answers 429 with
# Retry-After: 30, against a run with all 50 healthy; the other 49's throughput and p99 are compared.
bench-isolation: rabbitmq ## One dead or throttling destination among 50: what the other 49 keep
	$(BENCH_BUILD)
	$(BENCH) isolation $(BENCH_ARGS)
# The console's pages timed against a generated run history (bench/src/console.rs): 10 million attempt
# rows by default (CONSOLE_BENCH_ARGS="--rows 1000000" for a quicker run), p50/p95 per page.
CONSOLE_BENCH_ARGS ?=
bench-console: rabbitmq postgres ## Time each console page (p50/p95) over a 10-million-row run history
	$(CARGO) build --profile $(BENCH_PROFILE) -p switchyard-bench
	$(BENCH) console --url '$(HISTORY_BENCH_URL)' $(CONSOLE_BENCH_ARGS)

lint: ## Check formatting, clippy warnings and that no module imports in a cycle (cargo-modules)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@command -v cargo-modules >/dev/null || $(CARGO) install cargo-modules --locked --version $(CARGO_MODULES_VERSION)
	$(CARGO) modules dependencies --lib -p switchyard --no-fns --no-types --no-traits --no-externs --no-sysroot \
		| python3 scripts/acyclic.py

fmt: ## Format the code
	$(CARGO) fmt --all

validate: ## Check config/switchyard.yaml and every workflow
	$(CARGO) run --bin switchyard -- validate --config $(CONFIG)

topology: rabbitmq ## Declare the exchanges and queues on the local broker and print them
	$(CARGO) run --bin switchyard -- topology --config $(CONFIG)

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
