#!/usr/bin/env bash
# Builds the Debian package of the extension for the PostgreSQL of PG_CONFIG
# (default 15, see dev/pg-env.sh), for a DBA to install without Rust:
#   apt-get install ./target/package/pg-commitq_<version>_<arch>.deb
# It holds what `cargo pgrx package` writes (the library, the control file,
# the install script generated for this version, the upgrade scripts of
# extension/sql/) and the frozen install scripts of released versions
# (extension/releases/), so CREATE EXTENSION pg_commitq VERSION '0.1.0' and
# ALTER EXTENSION pg_commitq UPDATE work as with dev/install-extension.sh.
# The release build is the one dev/install-extension.sh makes (same target
# folder and profile), so a checkout already installed builds again only
# what changed. Prints the package's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/dev/pg-env.sh"
cd "$root"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
name=pg-commitq
stage=$root/target/package/stage
deb=$root/target/package/${name}_${version}_${arch}.deb
log=$root/target/package/build.log
mkdir -p "$root/target/package"

# Released scripts are never edited (their hashes are recorded).
if ! (cd extension/releases && sha256sum --quiet -c SHA256SUMS) >&2; then
    echo "package: a released install script differs from its hash in extension/releases/SHA256SUMS" >&2
    exit 1
fi

rm -rf "$stage"
if ! (cd extension && cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$stage") >"$log" 2>&1; then
    cat "$log" >&2
    echo "package: cargo pgrx package failed (log: $log)" >&2
    exit 1
fi
extdir=$stage$("$PG_CONFIG" --sharedir)/extension
libdir=$stage$("$PG_CONFIG" --pkglibdir)
for f in "$libdir/pg_commitq.so" "$extdir/pg_commitq.control" "$extdir/pg_commitq--$version.sql"; do
    [ -f "$f" ] || { echo "package: cargo pgrx package wrote no ${f#"$stage"}" >&2; exit 1; }
done
install -m 644 extension/releases/pg_commitq--*.sql "$extdir/"
for f in extension/sql/pg_commitq--*--*.sql; do
    cmp -s "$f" "$extdir/$(basename "$f")" || { echo "package: upgrade script $f missing from the package" >&2; exit 1; }
done

mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: commitq developers
Section: database
Priority: optional
Depends: postgresql-$PG_MAJOR
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Description: commitq: transactional background jobs inside PostgreSQL $PG_MAJOR
 The pg_commitq extension: a job queue whose jobs are enqueued in the
 application's own transaction, claimed under leases with fencing tokens,
 and completed exactly once. After installing, run
 CREATE EXTENSION pg_commitq in each database that is to use it.
EOF
# Root-owned files whatever user builds it.
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
