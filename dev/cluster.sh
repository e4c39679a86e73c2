#!/usr/bin/env bash
# The project-local PostgreSQL cluster that tests, the demo and the benchmark
# use: its data lives under target/pg, it listens on its own port on loopback
# and on a unix socket next to the data, and it runs as user postgres when
# this script runs as root (Postgres refuses to run as root).
#
#   dev/cluster.sh start | stop | status | env | psql [args] | createdb NAME
#
#   dev/cluster.sh crash     # stop at once (pg_ctl -m immediate), as a crash would
#
# COMMITQ_PGPORT picks the port (default 54329); COMMITQ_PGDIR names the
# folder under target/ (default pg), so a second cluster can run beside the
# first (the fault-injection suite crashes its own).
#
# The server preloads the extension's library (shared_preload_libraries =
# 'pg_commitq'), which runs its engine (docs/operations.md, Engine).
# COMMITQ_PRELOAD=0 at start runs it without, as a server where only
# CREATE EXTENSION was done: tests of that mode start a cluster so. The line
# lives in commitq-preload.conf beside postgresql.conf, rewritten at each start.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/dev/pg-env.sh"
bindir=$("$PG_CONFIG" --bindir)
port=${COMMITQ_PGPORT:-54329}

run_as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Where the cluster lives: target/pg, unless the server's user cannot reach
# the checkout or the socket path would exceed the kernel's 107-byte limit;
# then a folder in /tmp named after the checkout, linked from target/pg.
base_dir() {
    local want=$root/target/${COMMITQ_PGDIR:-pg}
    if [ -L "$want" ]; then readlink "$want"; return; fi
    mkdir -p "$root/target"
    local sock_path="$want/sock/.s.PGSQL.$port"
    if [ ${#sock_path} -le 100 ] && run_as_owner test -x "$root/target"; then
        echo "$want"
    else
        local alt
        alt=/tmp/commitq-${COMMITQ_PGDIR:-pg}-$(printf '%s' "$root" | md5sum | cut -c1-10)
        ln -sfn "$alt" "$want"
        echo "$alt"
    fi
}

base=$(base_dir)
data=$base/data
sock=$base/sock
log=$base/postgres.log

say() { printf '\033[1m[cluster]\033[0m %s\n' "$*" >&2; }

is_running() {
    [ -f "$data/PG_VERSION" ] && run_as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1
}

# The port a running cluster actually listens on (line 4 of postmaster.pid).
running_port() {
    sed -n 4p "$data/postmaster.pid" 2>/dev/null
}

port_taken() {
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

init() {
    mkdir -p "$base" "$sock"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$base" "$sock"
    run_as_owner "$bindir/initdb" -D "$data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
    # Fixed settings, so tests and benchmarks see the same server everywhere.
    run_as_owner tee -a "$data/postgresql.conf" >/dev/null <<EOF

# commitq project-local cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 300
shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 15min
log_min_messages = warning
log_min_error_statement = panic
EOF
}

# The preload line, included by postgresql.conf (added to a cluster made
# before it existed).
write_preload() {
    if ! grep -q "commitq-preload.conf" "$data/postgresql.conf"; then
        printf "\ninclude_if_exists = 'commitq-preload.conf'\n" | run_as_owner tee -a "$data/postgresql.conf" >/dev/null
    fi
    if [ "${COMMITQ_PRELOAD:-1}" = 0 ]; then
        echo "# COMMITQ_PRELOAD=0: no engine" | run_as_owner tee "$data/commitq-preload.conf" >/dev/null
    else
        echo "shared_preload_libraries = 'pg_commitq'" | run_as_owner tee "$data/commitq-preload.conf" >/dev/null
    fi
}

start() {
    if is_running; then
        if [ "$(running_port)" != "$port" ]; then
            say "already running on port $(running_port), not $port: run dev/cluster.sh stop first to change port"
            exit 1
        fi
        say "already running on port $port ($data)"
        return
    fi
    if port_taken; then
        say "port $port is in use by another program: stop it or pick another port with COMMITQ_PGPORT=NNNNN"
        exit 1
    fi
    [ -f "$data/PG_VERSION" ] || init
    write_preload
    # A server killed without a clean stop leaves its pid file; pg_ctl copes.
    # Without the developer's RUST_BACKTRACE: the server would add a Rust
    # backtrace to the DETAIL of errors that pass through the extension's
    # Rust code, which no production server does.
    run_as_owner env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$bindir/pg_ctl" -D "$data" -l "$log" -o "-p $port" -w -t 60 start >/dev/null
    say "started on port $port, socket $sock"
}

stop() {
    if is_running; then
        run_as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null
        say "stopped"
    else
        say "not running"
    fi
}

crash() {
    if is_running; then
        run_as_owner "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null
        say "stopped at once (immediate)"
    fi
}

case "${1:-status}" in
    start) start ;;
    stop) stop ;;
    crash) crash ;;
    status)
        if is_running; then echo "running on port $(running_port), data $data"; else echo "stopped"; exit 3; fi ;;
    env)
        # For eval: the libpq variables and a URL the Rust tests read.
        if is_running; then port=$(running_port); fi
        echo "export PGHOST='$sock' PGPORT='$port' PGUSER=postgres"
        echo "export COMMITQ_DATABASE_URL='host=$sock port=$port user=postgres dbname=postgres'" ;;
    psql) shift; exec "$bindir/psql" -h "$sock" -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@" ;;
    createdb)
        # A fresh database with the extension, replacing any of that name.
        name=${2:?database name}
        PGOPTIONS="-c client_min_messages=warning" "$bindir/psql" -h "$sock" -p "$port" -U postgres -qX -v ON_ERROR_STOP=1 -d postgres \
            -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" -c "CREATE DATABASE \"$name\""
        "$bindir/psql" -h "$sock" -p "$port" -U postgres -qX -v ON_ERROR_STOP=1 -d "$name" \
            -c "CREATE EXTENSION pg_commitq" ;;
    *) echo "usage: $0 start|stop|crash|status|env|psql|createdb NAME" >&2; exit 2 ;;
esac
