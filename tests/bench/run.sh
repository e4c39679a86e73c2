#!/usr/bin/env bash
# `make bench`: install the peers, start the project-local cluster with the
# extension built from this checkout, and run the benchmark with the given
# arguments (`--quick`, `--only NAME`, ...).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tests/bench/install-peers.sh
dev/install-extension.sh
dev/cluster.sh start
eval "$(dev/cluster.sh env)"
export COMMITQ_PGPORT=$PGPORT
cargo run --quiet --release -p commitq-bench --bin bench -- "$@"
