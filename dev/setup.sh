#!/usr/bin/env bash
# Installs what building and testing commitq needs on Debian 12: PostgreSQL
# (15 unless PG_CONFIG names another, see dev/pg-env.sh) with its server
# headers, clang for pgrx's bindings, and cargo-pgrx. Safe to run again:
# each step is skipped when its result is already there.
set -euo pipefail

PGRX_VERSION=0.18.0
. "$(dirname "$0")/pg-env.sh"
# pgbouncer: the waiting claim is tested through it; chromium and its
# driver: the web dashboard is tested in a real browser.
PACKAGES=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo make
          pgbouncer chromium chromium-driver)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's postgresql package starts a cluster of its own on port 5432; the
# project never uses it, and leaves it alone.

if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
    say "installing cargo-pgrx $PGRX_VERSION (takes a few minutes once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

if ! grep -qs "$PGRX_PG = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    say "registering PostgreSQL $PG_MAJOR with pgrx"
    cargo pgrx init "--$PGRX_PG" "$PG_CONFIG" >/dev/null
fi
