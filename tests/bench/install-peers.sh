#!/usr/bin/env bash
# Installs the peer queues the benchmark measures commitq against, from
# package registries at pinned versions: PgQ and a font for the chart from
# Debian, pgmq's SQL from its crates.io crate, graphile-worker and pg-boss
# from npm, PgQueuer and Procrastinate from PyPI. Safe to run again; a peer
# that fails to install is reported and left out of the run, not fatal.
# Only `make bench` calls this: the test command never installs peers.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$root/target/bench-peers
mkdir -p "$out"

say() { printf '\033[1m[peers]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=(postgresql-15-pgq3 fonts-dejavu-core nodejs npm python3-venv)
missing=()
for p in "${apt_packages[@]}"; do
    # A Node.js or Python of the machine's own (not Debian's) counts as installed.
    case $p in
        nodejs|npm) command -v "${p/nodejs/node}" >/dev/null && continue ;;
        python3-venv) python3 -c 'import ensurepip, venv' 2>/dev/null && continue ;;
    esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || say "apt-get install ${missing[*]} failed: those peers will be skipped"
fi

# pgmq: its SQL ships inside the crates.io crate; `cargo metadata` fetches
# the version pinned in peers/pgmq/Cargo.lock and says where its source is.
pgmq_manifest=$(cargo metadata --format-version 1 --locked --manifest-path "$here/peers/pgmq/Cargo.toml" 2>/dev/null \
    | python3 -c 'import json,sys; m=json.load(sys.stdin); p=[p for p in m["packages"] if p["name"]=="pgmq"][0]; print(p["manifest_path"], p["version"])')
if [ -n "$pgmq_manifest" ]; then
    read -r manifest crate_version <<<"$pgmq_manifest"
    src=$(dirname "$manifest")/src/install/embedded
    mkdir -p "$out/pgmq"
    cp "$src/sql/pgmq.sql" "$out/pgmq/pgmq.sql"
    sql_version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$src/pgmq.control")
    echo "$sql_version (crates.io pgmq $crate_version)" >"$out/pgmq/VERSION"
    say "pgmq $sql_version SQL from crate $crate_version"
else
    say "pgmq: could not fetch the crate; pgmq will be skipped"
fi

# graphile-worker and pg-boss, exactly as package-lock.json pins them.
if (cd "$here/peers/node" && npm ci --no-audit --no-fund --loglevel=error >&2); then
    say "npm: graphile-worker, pg-boss"
else
    say "npm ci failed: graphile-worker and pg-boss will be skipped"
fi

# PgQueuer and Procrastinate in a venv of their own.
if "$here/peers/python/install.sh" >&2; then
    say "PyPI: PgQueuer, Procrastinate"
else
    say "the Python peers failed to install: they will be skipped"
fi
exit 0
