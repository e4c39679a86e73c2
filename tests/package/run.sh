#!/usr/bin/env bash
# The package layer: the Debian package a DBA installs (make package) works.
#   1. build it (dev/package.sh, from this checkout: the same release build
#      dev/install-extension.sh installs, so the files it puts on the system
#      server are those later layers expect) and install it with
#      apt-get install ./target/package/pg-commitq_<version>_<arch>.deb;
#      the server's files are then the package's
#   2. in a fresh database of the project cluster: CREATE EXTENSION
#      pg_commitq and the README's five minutes of SQL (roles granted, a job
#      enqueued in the request's transaction, claimed, completed with the
#      request's write)
#   3. in another: CREATE EXTENSION pg_commitq VERSION '<oldest release>',
#      then ALTER EXTENSION pg_commitq UPDATE to the package's version
#   4. the Rust crate commitq is ready to publish: cargo publish --dry-run
#      packages it and builds it from the packaged files (its doc examples
#      run as doctests in the integration layer)
# Exits non-zero if any step failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
. dev/pg-env.sh
eval "$(dev/cluster.sh env)"
bindir=$("$PG_CONFIG" --bindir)
say() { printf '\033[1m[package]\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[1;31m[package] FAILED:\033[0m %s\n' "$*" >&2; exit 1; }
psql_db() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" "$bindir/psql" -qAtX -v ON_ERROR_STOP=1 -d "$db" "$@"; }
fresh_db() { psql_db postgres -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" -c "CREATE DATABASE \"$1\""; }
as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo)
t0=$SECONDS

# 1. Build and install.
deb=$(dev/package.sh) || fail "building the package"
say "built ${deb#"$root/"} ($((SECONDS - t0)) s)"
# --reinstall: a package of the same version may be installed already, from
# an older build of this checkout.
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --reinstall --no-install-recommends "$deb" >"$root/target/package/apt.log" 2>&1; then
    cat "$root/target/package/apt.log" >&2
    fail "apt-get install $deb"
fi
version=$(dpkg-deb -f "$deb" Version)
stage=$root/target/package/stage
so=$("$PG_CONFIG" --pkglibdir)/pg_commitq.so
script=$("$PG_CONFIG" --sharedir)/extension/pg_commitq--$version.sql
[ "$(dpkg-query -W -f '${Version} ${db:Status-Status}' pg-commitq)" = "$version installed" ] ||
    fail "dpkg does not list pg-commitq $version as installed"
for f in "$so" "$script"; do
    [ "$(dpkg -S "$f" 2>/dev/null | cut -d: -f1)" = pg-commitq ] || fail "$f does not belong to pg-commitq"
    cmp -s "$f" "$stage$f" || fail "$f is not the package's"
done
say "installed pg-commitq $version on the system server ($((SECONDS - t0)) s)"

# The roles of the README, cluster-wide (named for this layer).
psql_db postgres <<'SQL'
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['cq_pkg_web_app', 'cq_pkg_job_runner'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;
SQL

# 2. CREATE EXTENSION and the README's SQL, as the README's roles.
db=commitq_package_demo
fresh_db "$db"
psql_db "$db" -v version="$version" <<'SQL' >/dev/null || fail "CREATE EXTENSION and the README's SQL"
CREATE FUNCTION pg_temp.expect(ok boolean, what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'package: expected %', what;
    END IF;
END
$$;
CREATE EXTENSION pg_commitq;
SELECT pg_temp.expect(extversion = :'version', 'pg_commitq at the package''s version')
  FROM pg_extension WHERE extname = 'pg_commitq';

CREATE TABLE purchases (id int PRIMARY KEY, account_id int, course text, delivered boolean NOT NULL DEFAULT false);
GRANT INSERT ON purchases TO cq_pkg_web_app;
GRANT SELECT, UPDATE ON purchases TO cq_pkg_job_runner;
GRANT commitq_producer TO cq_pkg_web_app;
GRANT commitq_worker   TO cq_pkg_job_runner;

SET ROLE cq_pkg_web_app;
BEGIN;
INSERT INTO purchases (id, account_id, course) VALUES (42, 7, 'Postgres');
SELECT job_id AS enqueued, inserted
  FROM commitq.enqueue('billing', 'charge_and_deliver', '{"purchase_id": 42}',
                       idempotency_key => 'purchase-42') \gset
COMMIT;
-- A rolled-back request leaves no job.
BEGIN;
INSERT INTO purchases (id, account_id, course) VALUES (43, 7, 'Rust');
SELECT * FROM commitq.enqueue('billing', 'charge_and_deliver', '{"purchase_id": 43}');
ROLLBACK;
RESET ROLE;

SET ROLE cq_pkg_job_runner;
SELECT job_id AS claimed, lease_token, args->>'purchase_id' AS purchase
  FROM commitq.claim('billing', 'worker-1', 10, '30 seconds') \gset
BEGIN;
UPDATE purchases SET delivered = true WHERE id = :purchase;
SELECT commitq.complete(:claimed, :lease_token);
COMMIT;
SELECT * FROM commitq.maintain();
RESET ROLE;

SELECT pg_temp.expect(:'inserted'::boolean, 'the enqueue to insert a job');
SELECT pg_temp.expect(:claimed = :enqueued, 'the worker to claim the enqueued job');
SELECT pg_temp.expect((SELECT count(*) FROM commitq.jobs) = 0, 'no job left after the completion');
SELECT pg_temp.expect((SELECT delivered FROM purchases WHERE id = 42), 'purchase 42 delivered');
SELECT pg_temp.expect(NOT EXISTS (SELECT FROM purchases WHERE id = 43), 'the rolled-back purchase absent');
SQL
say "CREATE EXTENSION and the README's SQL: enqueued, claimed, completed ($((SECONDS - t0)) s)"

# 3. The oldest release, then the update.
oldest=$(ls extension/releases/pg_commitq--*.sql | sed 's/.*pg_commitq--\(.*\)\.sql/\1/' | sort -V | head -1)
db=commitq_package_upgrade
fresh_db "$db"
psql_db "$db" -v version="$version" -v oldest="$oldest" <<'SQL' >/dev/null || fail "CREATE EXTENSION VERSION '$oldest' and ALTER EXTENSION UPDATE"
CREATE FUNCTION pg_temp.expect(ok boolean, what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'package: expected %', what;
    END IF;
END
$$;
CREATE EXTENSION pg_commitq VERSION :'oldest';
SELECT job_id AS enqueued FROM commitq.enqueue('q', 'k', '{}') \gset
ALTER EXTENSION pg_commitq UPDATE;
SELECT pg_temp.expect(extversion = :'version', 'pg_commitq updated to the package''s version')
  FROM pg_extension WHERE extname = 'pg_commitq';
SELECT job_id AS claimed, lease_token FROM commitq.claim('q', 'w', 1, '1 minute') \gset
SELECT commitq.complete(:claimed, :lease_token);
SELECT pg_temp.expect(:claimed = :enqueued, 'the job enqueued before the update to be claimed after it');
SQL
say "CREATE EXTENSION pg_commitq VERSION '$oldest', ALTER EXTENSION UPDATE to $version ($((SECONDS - t0)) s)"

# 4. The client crate, as crates.io would get it.
if ! cargo publish --dry-run --allow-dirty -p commitq >"$root/target/package/publish.log" 2>&1; then
    cat "$root/target/package/publish.log" >&2
    fail "cargo publish --dry-run -p commitq"
fi
say "cargo publish --dry-run -p commitq ($((SECONDS - t0)) s)"

for db in commitq_package_demo commitq_package_upgrade; do
    psql_db postgres -c "DROP DATABASE \"$db\" WITH (FORCE)"
done
say "passed ($((SECONDS - t0)) s)"
