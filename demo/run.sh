#!/usr/bin/env bash
# The demo: build and install the extension, start the project-local
# cluster, and follow one job from enqueue to claim to completion in psql.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev/install-extension.sh
dev/cluster.sh start
eval "$(dev/cluster.sh env)"
dev/cluster.sh createdb commitq_demo
dev/cluster.sh psql -d commitq_demo -X -q -f demo/one_job.sql
