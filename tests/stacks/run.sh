#!/usr/bin/env bash
# The stacks layer: the Python (psycopg 3) and Node (pg) examples in
# examples/, each tested with its own runner (pytest, node --test) against a
# database of its own on the project cluster, which must be running with the
# extension installed. Installs what the examples need the first time, on
# Debian 12: python3-venv, nodejs and npm from Debian; psycopg and pytest into
# target/stacks/venv; pg into examples/node/node_modules (npm ci, from the
# committed package-lock.json). Extra arguments: `python` or `node`, to run one.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
eval "$(dev/cluster.sh env)"

say() { printf '\033[1m[stacks]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

stacks=("$@")
[ ${#stacks[@]} -gt 0 ] || stacks=(python node)

missing=()
for stack in "${stacks[@]}"; do
    case $stack in
        python) python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3 python3-venv) ;;
        node) command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm) ;;
        *) echo "usage: $0 [python] [node]" >&2; exit 2 ;;
    esac
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python_stack() {
    # pip runs only when requirements.txt changed since the venv was filled:
    # a second run needs no network.
    local venv=$root/target/stacks/venv requirements=examples/python/requirements.txt
    local stamp=$venv/.requirements.sha256 want
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    if ! "$venv/bin/python" -c '' 2>/dev/null; then
        say "creating $venv"
        rm -rf "$venv" && mkdir -p "$(dirname "$venv")" && python3 -m venv "$venv" || return
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing $requirements"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" || return
        echo "$want" >"$stamp"
    fi
    dev/cluster.sh createdb commitq_stacks_python || return
    (cd examples/python && PGDATABASE=commitq_stacks_python \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider)
}

node_stack() {
    # npm ci only when the lock file changed since node_modules was filled.
    local dir=examples/node
    if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"; then
        say "installing $dir/node_modules (npm ci)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || return
        cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"
    fi
    dev/cluster.sh createdb commitq_stacks_node || return
    (cd "$dir" && PGDATABASE=commitq_stacks_node node --test)
}

# Each stack runs even when the other failed. (Inside `||`, set -e is off:
# the functions return on their own failures.)
status=0
for stack in "${stacks[@]}"; do
    say "$stack"
    "${stack}_stack" || { say "$stack FAILED"; status=1; }
done
exit $status
