# commitq: the two commands that matter are `make demo` and `make test`.
# `make help` lists every target with the `##` comment above it.
# PG_CONFIG=/path/to/pg_config points every target at another PostgreSQL.
.PHONY: help setup demo web test test-citus install package sql-only cluster-start cluster-stop cluster-status psql bench bench-quick faults faults-long
.DEFAULT_GOAL := help

## List the targets and what each does.
help:
	@awk '/^## /{doc = doc (doc ? " " : "") substr($$0, 4); next} \
	     /^[a-z-]+:/{if (doc) printf "  \033[1m%-15s\033[0m %s\n", substr($$1, 1, length($$1) - 1), doc; doc = ""; next} \
	     {doc = ""}' $(MAKEFILE_LIST)

## Install PostgreSQL 15, clang and cargo-pgrx when missing (Debian 12).
setup:
	dev/setup.sh

## Start the project-local cluster and play the races of background jobs, naive vs commitq.
demo: setup
	demo/run.sh

## Serve the web dashboard (commitq web) on the demo's database at
## http://127.0.0.1:8080/; run `make demo` in another terminal and watch its queues drain.
web: setup
	demo/web.sh

## Run every test layer: lint, #[pg_test], integration, isolation, short fault injection.
test: setup
	dev/test.sh

## The contract checks on Citus (docs/citus.md): builds Citus into PG_CONFIG's
## server once (about 5 minutes), starts a coordinator and two workers
## (ports 54481-54483), about 2 minutes of checks. Not part of `make test`.
test-citus: setup
	dev/citus.sh stop
	dev/install-extension.sh
	dev/citus.sh build
	tests/citus/run.sh

## Build the extension and install it into the system's PostgreSQL (15, or
## PG_CONFIG's; for a DBA: then CREATE EXTENSION pg_commitq in a database).
install: setup
	dev/install-extension.sh

## Build the Debian package of the extension for PostgreSQL 15 (or
## PG_CONFIG's): target/package/pg-commitq_<version>_amd64.deb, for a DBA to
## install with apt-get install ./pg-commitq_<version>_amd64.deb.
package: setup
	dev/package.sh

## Start the project-local cluster (target/pg, port 54329) with the extension built from this checkout.
cluster-start: setup
	dev/install-extension.sh
	dev/cluster.sh start

## Stop the project-local cluster.
cluster-stop:
	dev/cluster.sh stop

## Say whether the project-local cluster runs, and where.
cluster-status:
	dev/cluster.sh status

## Open psql on the demo database of the project-local cluster.
psql:
	dev/cluster.sh psql -d commitq_demo

## Write target/sql-only/commitq.sql: commitq as one SQL file, for managed
## PostgreSQL where no extension library can be installed (psql -f; see
## docs/managed-postgres.md).
sql-only:
	dev/sql-only.sh

## Measure commitq next to raw SQL and other PostgreSQL job queues (installed
## from package registries) on the project-local cluster; writes results/ and
## the performance tables of docs/performance.md.
bench: setup
	tests/bench/run.sh

## A short benchmark run, for a first look (writes results/ only).
bench-quick: setup
	tests/bench/run.sh --quick

## The fault-injection suite, short mode (also part of `make test`).
faults: setup
	dev/install-extension.sh
	cargo run -p commitq-tests --bin faults -- --short

## The fault-injection suite, long mode, for a release (100,000 jobs, 50
## kills, 3 crashes of PostgreSQL).
faults-long: setup
	dev/install-extension.sh
	cargo run --release -p commitq-tests --bin faults
