#!/usr/bin/env bash
# A Citus test cluster on this machine: one coordinator and two workers, each
# its own PostgreSQL instance (PG_CONFIG's, see dev/pg-env.sh) with its data
# and unix socket under target/citus/, `citus` first in
# shared_preload_libraries and pg_commitq after it (see write_preload).
#
#   dev/citus.sh build           # build Citus into PG_CONFIG's server (cached)
#   dev/citus.sh start | stop    # the three nodes; start joins the workers
#   dev/citus.sh crash NODE      # stop NODE (coord|w1|w2) at once (-m immediate)
#   dev/citus.sh restart NODE    # start NODE again after a crash
#   dev/citus.sh env             # libpq variables for the coordinator (eval)
#   dev/citus.sh psql NODE [args]
#   dev/citus.sh createdb NAME   # a database on every node with citus and
#                                # pg_commitq, distributed (sql/citus/*.sql;
#                                # COMMITQ_CITUS_DISTRIBUTE=0: not distributed)
#
# Citus is AGPL and no registry here packages it for PostgreSQL 15, so it is
# built from ../shared/vendor (beside the checkout; COMMITQ_VENDOR overrides)
# and never copied into the project. The build is skipped when PG_CONFIG's
# server already has a citus.so of the vendored version: the installed library
# is the cache, and the build folder (target/citus-build) is deleted after
# install so it costs no disk.
#
# Ports: COMMITQ_CITUS_PORT (default 54481) for the coordinator, the next two
# for the workers.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/dev/pg-env.sh"
bindir=$("$PG_CONFIG" --bindir)
citus_version=13.2.2
vendor=${COMMITQ_VENDOR:-$root/../shared/vendor}
base_port=${COMMITQ_CITUS_PORT:-54481}
nodes=(coord w1 w2)
base=$root/target/citus

say() { printf '\033[1m[citus]\033[0m %s\n' "$*" >&2; }

run_as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

node_port() {
    case $1 in
        coord) echo "$base_port" ;;
        w1) echo $((base_port + 1)) ;;
        w2) echo $((base_port + 2)) ;;
        *) echo "unknown node $1 (coord, w1, w2)" >&2; exit 2 ;;
    esac
}

# Unix sockets live in one short folder so their paths stay under the
# kernel's 107-byte limit wherever the checkout is.
sockdir() {
    local d
    d=/tmp/commitq-citus-$(printf '%s' "$root" | md5sum | cut -c1-10)
    mkdir -p "$d"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$d"
    echo "$d"
}

installed_version_ok() {
    local lib
    lib="$("$PG_CONFIG" --pkglibdir)/citus.so"
    [ -f "$lib" ] && grep -aq "Citus $citus_version" "$lib"
}

build() {
    if installed_version_ok; then
        say "Citus $citus_version already installed in $("$PG_CONFIG" --pkglibdir)"
        return
    fi
    local tarball=$vendor/citus-$citus_version.tar.gz
    local patchfile=$vendor/citus-$citus_version-pg15.20.patch
    [ -f "$tarball" ] || { say "missing $tarball (set COMMITQ_VENDOR)"; exit 1; }
    # The -dev packages Citus's configure checks for.
    local pkgs=(libzstd-dev liblz4-dev libcurl4-openssl-dev libkrb5-dev libselinux1-dev
        libxslt1-dev libssl-dev libreadline-dev libpam0g-dev)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
    local build_dir=$root/target/citus-build
    local log=$root/target/citus-build.log
    rm -rf "$build_dir"
    mkdir -p "$build_dir"
    tar xzf "$tarball" -C "$build_dir"
    local src=$build_dir/citus-$citus_version
    say "building Citus $citus_version into $("$PG_CONFIG" --pkglibdir) (a few minutes; log $log)"
    if ! (
        cd "$src"
        # PostgreSQL 15.20 exports have_createdb_privilege() itself.
        if [ -f "$patchfile" ] && "$("$PG_CONFIG" --bindir)/postgres" --version | grep -q ' 15\.'; then
            patch -p1 <"$patchfile"
        fi
        ./configure PG_CONFIG="$PG_CONFIG"
        make -j"$(nproc)"
        as_root make install PG_CONFIG="$PG_CONFIG"
    ) >"$log" 2>&1; then
        tail -40 "$log" >&2
        say "building Citus failed (log: $log)"
        exit 1
    fi
    # The installed library is the cache: the objects are not needed again.
    rm -rf "$build_dir"
    installed_version_ok || { say "citus.so installed but its version string was not found"; exit 1; }
    say "installed Citus $citus_version"
}

node_dir() { echo "$base/$1"; }

is_running() {
    local data
    data=$(node_dir "$1")/data
    [ -f "$data/PG_VERSION" ] && run_as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1
}

init_node() {
    local node=$1 dir data sock
    dir=$(node_dir "$node")
    data=$dir/data
    sock=$(sockdir)
    # The preload line is written at each start (write_preload).
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    run_as_owner "$bindir/initdb" -D "$data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
    # Small buffers: three servers share a 2-core machine with other work.
    # Citus commits multi-shard writes with two-phase commit, so every node
    # needs prepared transactions.
    run_as_owner tee -a "$data/postgresql.conf" >/dev/null <<EOF

# commitq Citus test node ($node)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 200
shared_buffers = 128MB
max_prepared_transactions = 100
# Citus runs a maintenance daemon per database, each in a worker slot, and
# commitq's engine needs slots beside them.
max_worker_processes = 32
# Little WAL kept: three data folders share the disk with other work.
min_wal_size = 32MB
max_wal_size = 256MB
include_if_exists = 'citus-preload.conf'
log_min_messages = warning
citus.log_remote_commands = off
EOF
    # The commitq engine runs maintain() on the coordinator only: on a
    # worker it would find the distributed tables and fail each tick (and
    # the distributed maintain() reads every shard from the coordinator).
    if [ "$node" != coord ]; then
        echo "commitq.engine_enabled = off" | run_as_owner tee -a "$data/postgresql.conf" >/dev/null
    fi
}

pg() {
    local node=$1; shift
    "$bindir/psql" -h "$(sockdir)" -p "$(node_port "$node")" -U postgres -qAtX -v ON_ERROR_STOP=1 "$@"
}

# citus first, then pg_commitq for its engine and the waiting claim's
# wake-up at commit; COMMITQ_CITUS_PRELOAD=0 leaves pg_commitq out (commitq
# then works as on a server where only CREATE EXTENSION was done: call
# commitq.maintain() on the coordinator yourself).
write_preload() {
    local preload=citus,pg_commitq
    [ "${COMMITQ_CITUS_PRELOAD:-1}" = 0 ] && preload=citus
    echo "shared_preload_libraries = '$preload'" | run_as_owner tee "$1/citus-preload.conf" >/dev/null
}

start_node() {
    local node=$1 data
    data=$(node_dir "$node")/data
    if is_running "$node"; then return; fi
    [ -f "$data/PG_VERSION" ] || init_node "$node"
    write_preload "$data"
    run_as_owner env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$bindir/pg_ctl" -D "$data" \
        -l "$(node_dir "$node")/postgres.log" -o "-p $(node_port "$node")" -w -t 60 start >/dev/null
}

start() {
    installed_version_ok || build
    for n in "${nodes[@]}"; do start_node "$n"; done
    say "coordinator on port $(node_port coord), workers on $(node_port w1) and $(node_port w2), sockets in $(sockdir)"
}

stop() {
    for n in "${nodes[@]}"; do
        if is_running "$n"; then
            run_as_owner "$bindir/pg_ctl" -D "$(node_dir "$n")/data" -m fast -w stop >/dev/null
        fi
    done
    say "stopped"
}

# A database of the same name on every node, with citus; the workers joined
# to the coordinator for it (Citus keeps node metadata per database); then
# pg_commitq created on the coordinator (Citus propagates CREATE EXTENSION to
# the workers) and distributed.
createdb() {
    local name=$1 sock
    sock=$(sockdir)
    for n in "${nodes[@]}"; do
        PGOPTIONS="-c client_min_messages=warning" pg "$n" -d postgres \
            -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" -c "CREATE DATABASE \"$name\""
        pg "$n" -d "$name" -c "CREATE EXTENSION citus"
    done
    pg coord -d "$name" -c "SELECT citus_set_coordinator_host('127.0.0.1', $(node_port coord))" >/dev/null
    for n in w1 w2; do
        pg coord -d "$name" -c "SELECT citus_add_node('127.0.0.1', $(node_port "$n"))" >/dev/null
    done
    PGOPTIONS="-c client_min_messages=warning" pg coord -d "$name" -c "CREATE EXTENSION pg_commitq" >/dev/null
    [ "${COMMITQ_CITUS_DISTRIBUTE:-1}" = 1 ] || return 0
    for n in "${nodes[@]}"; do
        PGOPTIONS="-c client_min_messages=warning" pg "$n" -d "$name" -f "$root/sql/citus/routed.sql" >/dev/null
    done
    PGOPTIONS="-c client_min_messages=warning" pg coord -d "$name" -f "$root/sql/citus/distribute.sql" >/dev/null
}

case "${1:-}" in
    build) build ;;
    start) start ;;
    stop) stop ;;
    crash)
        node=${2:?node}
        run_as_owner "$bindir/pg_ctl" -D "$(node_dir "$node")/data" -m immediate -w stop >/dev/null ;;
    restart) start_node "${2:?node}" ;;
    env)
        sock=$(sockdir)
        echo "export PGHOST='$sock' PGPORT='$(node_port coord)' PGUSER=postgres"
        echo "export COMMITQ_CITUS_SOCKDIR='$sock' COMMITQ_CITUS_PORTS='$(node_port coord),$(node_port w1),$(node_port w2)'" ;;
    psql) node=${2:?node}; shift 2; exec "$bindir/psql" -h "$(sockdir)" -p "$(node_port "$node")" -U postgres "$@" ;;
    createdb) createdb "${2:?database name}" ;;
    *) echo "usage: $0 build|start|stop|crash NODE|restart NODE|env|psql NODE|createdb NAME" >&2; exit 2 ;;
esac
