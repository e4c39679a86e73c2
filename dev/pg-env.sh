# Which PostgreSQL the project builds for, tests on and runs its clusters
# with: PG_CONFIG names its pg_config (default: Debian's PostgreSQL 15, the
# only one packaged for Debian 12). Sourced by the scripts of dev/, tests/
# and demo/, so that one variable points the whole project at another
# server version. Sets PG_CONFIG, PG_MAJOR and PGRX_PG (pgrx's name: pg15).
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
if [ -x "$PG_CONFIG" ]; then
    PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
else
    # Not installed yet (dev/setup.sh installs it): the version from the path.
    PG_MAJOR=$(printf '%s' "$PG_CONFIG" | sed -nE 's#.*/postgresql/([0-9]+)/.*#\1#p')
    PG_MAJOR=${PG_MAJOR:-15}
fi
PGRX_PG=pg$PG_MAJOR
export PG_CONFIG PG_MAJOR PGRX_PG
