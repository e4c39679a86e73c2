#!/usr/bin/env bash
# `make web`: the dashboard (`commitq web`) on the demo's database of the
# project-local cluster, at http://127.0.0.1:8080/ (arguments go to
# `commitq web`, e.g. --listen 127.0.0.1:9000). Run `make demo` in another
# terminal, before or after, and watch its queues fill and drain.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev/install-extension.sh
dev/cluster.sh start
eval "$(dev/cluster.sh env)"
# The demo re-creates its database when it starts; create it here only
# when the dashboard comes first.
if [ -z "$(dev/cluster.sh psql -d postgres -tAXc "SELECT 1 FROM pg_database WHERE datname = 'commitq_demo'")" ]; then
    dev/cluster.sh createdb commitq_demo
fi
cargo build --release --quiet -p commitq-cli
exec "${CARGO_TARGET_DIR:-target}/release/commitq" web --url "$COMMITQ_DATABASE_URL dbname=commitq_demo" "$@"
