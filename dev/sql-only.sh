#!/usr/bin/env bash
# Writes target/sql-only/commitq.sql (or the path given as $1): commitq as one
# SQL file for a PostgreSQL where no library can be installed (managed
# services; docs/managed-postgres.md). It is made from the extension's own
# sources, so the two cannot drift:
#   - the files of sql/, in the order extension/src/lib.rs loads them (read
#     from its extension_sql_file! lines, not repeated here);
#   - each LANGUAGE c declaration replaced by the PL/pgSQL function of the
#     same name in sql/sql-only/<same file>.sql, whose argument list and
#     result must read the same (a declaration without one fails the build,
#     and so does an equivalent that replaces nothing), or, for the few
#     functions listed in UNAVAILABLE below with the reason, by a function
#     of the same head that raises feature_not_supported (0A000) with that
#     reason, so the catalog stays the extension's; the other
#     statements of that file (helpers named commitq._sql_only_*, the
#     config column) go after that file;
#   - what CREATE EXTENSION gives a script for free, done by hand: the
#     schema, one transaction, search_path set to the schema; and what only
#     an extension may call (pg_extension_config_dump) left out;
#   - the version of [workspace.package] in Cargo.toml, in a header and in
#     the schema's comment, where the Rust client reads it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/sql-only/commitq.sql}
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
python3 - "$root" "$tmp" <<'PY'
import pathlib, re, sys

root = pathlib.Path(sys.argv[1])
out = pathlib.Path(sys.argv[2])

def fail(msg):
    sys.exit(f"sql-only: {msg}")

def version():
    text = (root / "Cargo.toml").read_text()
    section = re.search(r"^\[workspace\.package\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    m = section and re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M)
    if not m:
        fail("no version in [workspace.package] of Cargo.toml")
    return m.group(1)

def load_order():
    lib = (root / "extension/src/lib.rs").read_text()
    files = re.findall(r'extension_sql_file!\(\s*"\.\./\.\./sql/([^"/]+\.sql)"', lib)
    if not files:
        fail("no extension_sql_file! lines in extension/src/lib.rs")
    return files

def statements(text):
    """Split SQL into statements, each with the comment lines just above it.
    Knows comments, quoted strings and identifiers, and dollar quotes: enough
    for the files of sql/."""
    out, start, i, n = [], 0, 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "'\"":
            j = i + 1
            while j < n:
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
        elif c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$", text[i:])
            if m:
                j = text.find(m.group(0), i + len(m.group(0)))
                if j < 0:
                    fail("unterminated dollar quote")
                i = j + len(m.group(0))
            else:
                i += 1
        elif c == ";":
            out.append(text[start:i + 1])
            start = i = i + 1
        else:
            i += 1
    rest = text[start:]
    if code(rest):
        fail(f"a statement without its semicolon: {code(rest)[:60]}")
    return out, rest

def code(stmt):
    """The statement without its comment lines."""
    return re.sub(r"^\s*--[^\n]*\n", "", stmt, flags=re.M).strip()

def function_head(stmt):
    """(name, normalized argument list, normalized RETURNS) of a CREATE
    FUNCTION or PROCEDURE (RETURNS empty), or None."""
    body = code(stmt)
    m = re.match(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+([\w.]+)\s*\(", body, re.I)
    if not m:
        return None
    depth, i = 1, m.end()
    while depth:
        if i >= len(body):
            fail(f"unbalanced parentheses in {m.group(1)}")
        depth += {"(": 1, ")": -1}.get(body[i], 0)
        i += 1
    args = " ".join(body[m.end():i - 1].split())
    ret = re.match(r"\s*RETURNS\s+(.*?)\s*(?=\bLANGUAGE\b|\bAS\b|\bSET\b|$)", body[i:], re.I | re.S)
    return m.group(1), args, " ".join(ret.group(1).split()) if ret else ""

def is_c(stmt):
    return re.search(r"\bLANGUAGE\s+c\b", code(stmt), re.I) is not None

# Functions written in C that this mode does without, each with the reason
# its callers get. Cron schedules (sql/schedule.sql): a cron parser and a
# time zone calendar in PL/pgSQL would be a second implementation of
# croner's rules, daylight-saving days included, to keep in step; on a
# managed service pg_cron can enqueue instead (docs/managed-postgres.md).
CRON_REASON = ("cron schedules need the pg_commitq extension (its cron parser); "
               "in the sql-only install, enqueue from pg_cron instead (docs/managed-postgres.md)")
UNAVAILABLE = {
    "commitq._cron_problem": CRON_REASON,
    "commitq._cron_due": CRON_REASON,
    "commitq._cron_next": CRON_REASON,
}

def unavailable(stmt, reason):
    """The LANGUAGE c declaration turned into PL/pgSQL that raises."""
    out, n = re.subn(r"\bLANGUAGE\s+c\b", "LANGUAGE plpgsql", stmt, count=1, flags=re.I)
    body = ("SET search_path = pg_catalog, pg_temp\nAS $$\nBEGIN\n"
            "    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',\n"
            f"        MESSAGE = 'commitq: {reason}';\nEND\n$$;")
    out, m = re.subn(r"AS\s+'MODULE_PATHNAME'\s*,\s*'[^']*'\s*;", lambda _: body, out, count=1)
    if n != 1 or m != 1:
        fail(f"cannot turn {function_head(stmt)[0]} into its unavailable stand-in")
    return out

# The equivalents: sql/sql-only/<file>.sql, by function name.
equivalents, preludes, used = {}, {}, set()
for path in sorted((root / "sql/sql-only").glob("*.sql")):
    stmts, _ = statements(path.read_text())
    pre = []
    for s in stmts:
        head = function_head(s)
        # Statements other than equivalents (the config column, helpers
        # named commitq._sql_only_*) go after the file of the same name.
        if head is None or head[0].startswith("commitq._sql_only_"):
            pre.append(s)
            continue
        if head[0] in equivalents:
            fail(f"{head[0]} defined twice in sql/sql-only/")
        if is_c(s):
            fail(f"{path.name}: {head[0]} is itself LANGUAGE c")
        equivalents[head[0]] = (path.name, head, s)
    preludes[path.name] = pre

v = version()
order = load_order()
parts = [f"""-- commitq {v}, installed without the pg_commitq extension (sql-only).
--
-- Generated by `make sql-only` (dev/sql-only.sh) from sql/*.sql in the order
-- extension/src/lib.rs loads them, with the functions written in C replaced
-- by their PL/pgSQL equivalents of sql/sql-only/. Do not edit: regenerate.
-- Load it once per database, as the role that is to own commitq (CREATE on
-- the database, and CREATEROLE for the three commitq_* roles unless they
-- exist): psql -v ON_ERROR_STOP=1 -f commitq.sql. See docs/managed-postgres.md.
--
-- All or nothing, as CREATE EXTENSION would run it: one transaction, objects
-- created in the schema commitq, temporary objects never looked up first.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE SCHEMA commitq;
SET LOCAL search_path = commitq, pg_temp;
"""]

def split_lead(stmt):
    """(the whitespace and comment lines before the code, the code)."""
    m = re.match(r"(?:\s*--[^\n]*\n)*\s*", stmt)
    return stmt[:m.end()], stmt[m.end():]

for name in order:
    src = root / "sql" / name
    stmts, tail = statements(src.read_text())
    body = []
    for s in stmts:
        lead, stmt_code = split_lead(s)
        if "MODULE_PATHNAME" in s and not is_c(s):
            fail(f"sql/{name}: MODULE_PATHNAME outside a LANGUAGE c declaration")
        if is_c(s):
            head = function_head(s)
            if head is None:
                fail(f"sql/{name}: a LANGUAGE c statement that is not CREATE FUNCTION or PROCEDURE")
            if head[0] in UNAVAILABLE:
                if head[0] in equivalents:
                    fail(f"{head[0]} is both unavailable and defined in sql/sql-only/")
                used.add(head[0])
                body.append(lead + "-- sql-only: unavailable in this mode, raises 0A000:\n"
                            + unavailable(stmt_code, UNAVAILABLE[head[0]]))
                continue
            if head[0] not in equivalents:
                fail(f"sql/{name}: {head[0]} is LANGUAGE c and has no equivalent in sql/sql-only/")
            efile, ehead, estmt = equivalents[head[0]]
            if ehead != head:
                fail(f"{head[0]}: sql/sql-only/{efile} declares ({ehead[1]}) {ehead[2]}, "
                     f"sql/{name} ({head[1]}) {head[2]}")
            used.add(head[0])
            elead, ecode = split_lead(estmt)
            # The equivalent's own comment, unless it only repeats the original's.
            note = "" if lead.strip().endswith(elead.strip()) else elead.strip("\n") + "\n"
            body.append(lead + f"-- sql-only: in PL/pgSQL, from sql/sql-only/{efile}:\n" + note + ecode)
        elif "pg_extension_config_dump" in stmt_code:
            # Only an extension script may call it; without the extension
            # pg_dump dumps these tables anyway.
            body.append(lead + "\n".join("-- (extension only) " + l for l in stmt_code.splitlines()))
        else:
            body.append(s)
    # The rest of the file's equivalents (helpers, the config column) after
    # the file: the functions above resolve them only when they run.
    if preludes.get(name):
        body.append(f"\n\n-- sql-only: the rest of sql/sql-only/{name}\n")
        body += preludes.pop(name)
    parts.append(f"\n-- ===== sql/{name} =====\n" + "".join(body) + tail)

unused = sorted((set(equivalents) | set(UNAVAILABLE)) - used)
if unused:
    fail(f"sql/sql-only/ or UNAVAILABLE names {', '.join(unused)}, which no LANGUAGE c declaration asks for")
left = [f for f, pre in preludes.items() if pre]
if left:
    fail(f"sql/sql-only/{left[0]} has statements but no sql/{left[0]} declaration to go with")

parts.append(f"""
-- The version, where the Rust client looks for it when pg_commitq is not
-- installed as an extension (and `\\dn+ commitq` shows it).
COMMENT ON SCHEMA commitq IS 'commitq {v} (sql-only)';
COMMIT;
""")
out.write_text("".join(parts))
PY
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out"
