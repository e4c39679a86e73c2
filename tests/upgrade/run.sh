#!/usr/bin/env bash
# The upgrade layer: a database created at a released pg_commitq version
# (extension/releases/) and taken to this checkout's version with ALTER
# EXTENSION pg_commitq UPDATE must keep every job and end with exactly the
# objects of a fresh install; the contract tests must pass on it; and the
# client of the previous release must work against the new extension.
#
#   1. the released install scripts are unchanged (SHA256SUMS)
#   2. for each release: database A created at it and filled with jobs in
#      every state, keys, limits, a named lease and effects (fill.sql); its
#      rows are identical before and after the update (snapshot.sql); its
#      catalog (catalog.sql, and pg_dump --schema-only of the commitq schema)
#      is identical to database B's, a fresh CREATE EXTENSION, or the
#      difference is printed; then every job can be claimed and finished and
#      the lease taken before the update completes (check.sql)
#   3. integration test files with COMMITQ_TEST_EXTENSION_VERSION=<oldest
#      release>: every test database is created at it, then upgraded
#   4. the client and its integration tests at the newest release's frozen
#      commit, built in target/upgrade/, against the installed extension
#
# Runs on the project cluster (eval "$(dev/cluster.sh env)"), with this
# checkout's extension installed (dev/install-extension.sh, which also
# installs the released scripts). Exits non-zero if any step failed.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# The tools beyond PostgreSQL's and cargo (Debian 12 has them, a slim image
# may not).
missing=()
for tool in git:git tar:tar diff:diffutils sha256sum:coreutils; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get install -qq -y "${missing[@]}" >/dev/null
fi
. dev/pg-env.sh
bindir=$("$PG_CONFIG" --bindir)
eval "$(dev/cluster.sh env)"
here=tests/upgrade
work=$root/target/upgrade
mkdir -p "$work"

say() { printf '\033[1m[upgrade]\033[0m %s\n' "$*" >&2; }
failures=0
failed() { printf '\033[1;31m[upgrade] FAILED:\033[0m %s\n' "$*" >&2; failures=$((failures + 1)); }

psql_db() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" "$bindir/psql" -qAtX -v ON_ERROR_STOP=1 -d "$db" "$@"; }
fresh_db() {
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" -c "CREATE DATABASE \"$1\""
}

# 1. Released scripts are never edited: a fix is a new version.
if ! (cd extension/releases && sha256sum --quiet -c SHA256SUMS); then
    failed "a released install script in extension/releases differs from its hash in SHA256SUMS"
    exit 1
fi
releases=()
for f in extension/releases/pg_commitq--*.sql; do
    name=$(basename "$f")
    grep -q "  $name\$" extension/releases/SHA256SUMS || { failed "$name has no hash in extension/releases/SHA256SUMS"; exit 1; }
    v=${name#pg_commitq--}
    releases+=("${v%.sql}")
done
mapfile -t releases < <(printf '%s\n' "${releases[@]}" | sort -V)

# The server must have this checkout's extension and the released scripts.
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
default=$(psql_db postgres -c "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_commitq'")
extdir=$("$PG_CONFIG" --sharedir)/extension
if [ "$default" != "$version" ]; then
    failed "the server's pg_commitq is ${default:-missing}, this checkout is $version: run dev/install-extension.sh"
    exit 1
fi
for r in "${releases[@]}"; do
    if ! cmp -s "extension/releases/pg_commitq--$r.sql" "$extdir/pg_commitq--$r.sql"; then
        failed "pg_commitq--$r.sql is not installed in $extdir as released: run dev/install-extension.sh"
        exit 1
    fi
done

# The catalog of a database, and its schema as pg_dump writes it. pg_dump
# leaves an extension's member objects out (it writes CREATE EXTENSION), so
# it dumps a copy of the database in which the objects were detached from
# the extension: they are then dumped like any others, with every grant.
catalog() { psql_db "$1" -f "$here/catalog.sql"; }
schema_dump() {
    local db=$1 copy=${1}_dump
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$copy\" WITH (FORCE)" \
        -c "CREATE DATABASE \"$copy\" TEMPLATE \"$db\"" || return 1
    psql_db "$copy" <<'SQL' || return 1
DELETE FROM pg_init_privs ip
 WHERE ip.privtype = 'e'
   AND (ip.classoid, ip.objoid) IN (
        SELECT 'pg_namespace'::regclass, 'commitq'::regnamespace::oid
        UNION ALL SELECT 'pg_class'::regclass, oid FROM pg_class WHERE relnamespace = 'commitq'::regnamespace
        UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc WHERE pronamespace = 'commitq'::regnamespace
        UNION ALL SELECT 'pg_type'::regclass, oid FROM pg_type WHERE typnamespace = 'commitq'::regnamespace);
DELETE FROM pg_depend d USING pg_extension e
 WHERE e.extname = 'pg_commitq' AND d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = e.oid AND d.deptype = 'e';
SQL
    # Normalised: no comments, blank lines, session settings or the
    # per-run \restrict key.
    "$bindir/pg_dump" --schema-only --schema=commitq -d "$copy" \
        | grep -v -e '^--' -e '^$' -e '^SET ' -e '^SELECT pg_catalog.set_config' -e '^\\restrict' -e '^\\unrestrict'
    local rc=${PIPESTATUS[0]}
    psql_db postgres -c "DROP DATABASE \"$copy\"" >/dev/null
    return "$rc"
}

# Compare one view of the databases: same WHAT ACTUAL EXPECTED [labels].
same() {
    local elabel=${4:-fresh install of $version} alabel=${5:-upgraded from $from}
    if ! diff -U0 --label "$elabel" --label "$alabel" "$3" "$2" >"$work/diff"; then
        failed "$1: $alabel differs from $elabel (- $elabel, + $alabel):"
        grep -v '^@@' "$work/diff" | sed 's/^/    /' >&2
        return 1
    fi
}

# cargo test's output without the lines of passing tests.
quiet() { grep -v -e '^$' -e '^running ' -e '^test result: ok' -e '^[.]*$' >&2 || true; }

t0=$SECONDS
fresh=upgrade_fresh
fresh_db "$fresh" && psql_db "$fresh" -c "CREATE EXTENSION pg_commitq" || { failed "fresh install of $version"; exit 1; }
catalog "$fresh" >"$work/catalog.fresh" || { failed "catalog query"; exit 1; }
schema_dump "$fresh" >"$work/dump.fresh" || { failed "pg_dump of the fresh install"; exit 1; }

# 2. Each release, upgraded.
for from in "${releases[@]}"; do
    [ "$from" = "$version" ] && continue
    a=upgrade_from_${from//[.-]/_}
    say "$from -> $version: fill, ALTER EXTENSION pg_commitq UPDATE, compare with a fresh install"
    if ! { fresh_db "$a" && psql_db "$a" -c "CREATE EXTENSION pg_commitq VERSION '$from'" \
        && psql_db "$a" -f "$here/fill.sql" >/dev/null; }; then
        failed "creating and filling a database at $from"
        continue
    fi
    psql_db "$a" -f "$here/snapshot.sql" >"$work/rows.before" || failed "reading the rows before the update"
    if ! psql_db "$a" -c "ALTER EXTENSION pg_commitq UPDATE"; then
        failed "ALTER EXTENSION pg_commitq UPDATE from $from (is extension/sql/pg_commitq--$from--$version.sql missing?)"
        continue
    fi
    psql_db "$a" -f "$here/snapshot.sql" >"$work/rows.after" || failed "reading the rows after the update"
    same "the rows (jobs, keys, leases, effects, config)" "$work/rows.after" "$work/rows.before" \
        "before the update" "after the update"
    catalog "$a" >"$work/catalog.upgraded" && same "the catalog" "$work/catalog.upgraded" "$work/catalog.fresh"
    schema_dump "$a" >"$work/dump.upgraded" && same "pg_dump --schema-only" "$work/dump.upgraded" "$work/dump.fresh"
    psql_db "$a" -f "$here/check.sql" || failed "claiming and finishing the jobs after the update from $from"
    say "$from -> $version: done ($((SECONDS - t0)) s)"
done

# 3. The contract tests, on databases created at the oldest release and
# upgraded: the files that exercise every SQL function and the grants (the
# pool-level concurrency_keys file is left out for time; its SQL is covered
# slot by slot by concurrency_key_slots).
oldest=${releases[0]}
if [ "$oldest" != "$version" ]; then
    say "integration tests on databases upgraded from $oldest"
    t1=$SECONDS
    COMMITQ_TEST_EXTENSION_VERSION=$oldest cargo test --quiet --no-fail-fast -p commitq-tests \
        --test foundation --test enqueue --test claim --test finish --test retry --test job_lease \
        --test concurrency_key_slots --test effect_ledger --test named_lease \
        --test maintain --test operator --test wakeup --test bad_input --test security --test search_path --test database_grants \
        --test worker_pool 2>&1 | quiet
    [ "${PIPESTATUS[0]}" = 0 ] || failed "integration tests on databases upgraded from $oldest"
    say "integration tests done ($((SECONDS - t1)) s)"
fi

# 4. The client of the newest release, with its own tests, against this
# extension: a worker fleet not yet redeployed keeps working after the
# database was upgraded. Built from the commit the release was frozen at
# (extension/releases/README.md), in target/upgrade/, with its own target
# folder so this checkout's build is left alone.
prev=
for r in "${releases[@]}"; do [ "$r" != "$version" ] && prev=$r; done
if [ -n "$prev" ]; then
    commit=$(grep -E "^\| *${prev//./\\.} *\|" extension/releases/README.md | grep -oE '[0-9a-f]{40}' | head -1)
    src=$work/client-$prev
    if [ -z "$commit" ]; then
        failed "no frozen commit for $prev in extension/releases/README.md"
    else
        say "client $prev (commit ${commit:0:12}) and its tests against pg_commitq $version"
        t1=$SECONDS
        if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
            # A shallow clone: fetch the release's commit.
            git fetch --quiet origin "$commit" || true
        fi
        if [ "$(cat "$src/.commit" 2>/dev/null)" != "$commit" ]; then
            rm -rf "$src" && mkdir -p "$src" && git archive "$commit" | tar -x -C "$src" \
                && echo "$commit" >"$src/.commit" || failed "extracting commit $commit"
        fi
        if [ -f "$src/.commit" ]; then
            # The release's tests predate the engine and call maintain()
            # themselves, expecting nobody else to: the engine is off for
            # the databases they create, and back on afterwards.
            psql_db postgres -qc "ALTER SYSTEM SET commitq.engine_enabled = off" -c "SELECT pg_reload_conf()" >/dev/null
            (cd "$src" && export CARGO_TARGET_DIR=$work/client-target \
                && cargo test --quiet -p commitq --lib \
                && cargo test --quiet --no-fail-fast -p commitq-tests --test foundation --test claim \
                    --test finish --test concurrency_key_slots --test named_lease --test effect_ledger \
                    --test worker_pool) \
                2>&1 | quiet
            [ "${PIPESTATUS[0]}" = 0 ] || failed "the $prev client's tests against pg_commitq $version"
            psql_db postgres -qc "ALTER SYSTEM RESET commitq.engine_enabled" -c "SELECT pg_reload_conf()" >/dev/null
            say "client $prev done ($((SECONDS - t1)) s)"
        fi
    fi
fi

say "$((SECONDS - t0)) s, $failures failure(s)"
[ "$failures" = 0 ]
