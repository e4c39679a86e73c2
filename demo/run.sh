#!/usr/bin/env bash
# The demo: build and install the extension, start the project-local
# cluster, then play the stories of commitq naively and with commitq, side
# by side, and print what a user would see.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev/install-extension.sh
dev/cluster.sh start
eval "$(dev/cluster.sh env)"
dev/cluster.sh createdb commitq_demo
cargo build --release --quiet -p commitq-demo
export COMMITQ_DATABASE_URL="$COMMITQ_DATABASE_URL dbname=commitq_demo"
exec target/release/commitq-demo
