# commitq: the two commands that matter are `make demo` and `make test`.
.PHONY: setup demo test install cluster-start cluster-stop cluster-status psql bench bench-quick faults faults-long

## Install PostgreSQL 15, clang and cargo-pgrx when missing (Debian 12).
setup:
	dev/setup.sh

## Start the project-local cluster and play the races of background jobs, naive vs commitq.
demo: setup
	demo/run.sh

## Run every test layer: lint, #[pg_test], integration, isolation, short fault injection.
test: setup
	dev/test.sh

## Build the extension and install it into the system's PostgreSQL 15
## (for a DBA; then CREATE EXTENSION pg_commitq in a database).
install: setup
	dev/install-extension.sh

cluster-start: setup
	dev/install-extension.sh
	dev/cluster.sh start

cluster-stop:
	dev/cluster.sh stop

cluster-status:
	dev/cluster.sh status

psql:
	dev/cluster.sh psql -d commitq_demo

## Measure commitq next to raw SQL and other PostgreSQL job queues (installed
## from package registries) on the project-local cluster; writes results/ and
## the README's performance tables. `make bench-quick` for a short run.
bench: setup
	tests/bench/run.sh

bench-quick: setup
	tests/bench/run.sh --quick

## The fault-injection suite: short mode (also part of `make test`), and the
## long one for a release (100,000 jobs, 50 kills, 3 crashes of PostgreSQL).
faults: setup
	dev/install-extension.sh
	cargo run -p commitq-tests --bin faults -- --short

faults-long: setup
	dev/install-extension.sh
	cargo run --release -p commitq-tests --bin faults
