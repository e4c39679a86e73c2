#!/usr/bin/env bash
# Creates or updates the virtualenv the Python peer drivers run in. It lives
# outside the tree, in target/bench-peers/venv, and the last line printed on
# stdout is its python, for the caller to run the drivers with.
#
# pip runs only when requirements.txt changed since the last install: a stamp
# file in the venv holds the hash of the requirements it was installed from,
# so a second call costs nothing and needs no network.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
venv=$root/target/bench-peers/venv
requirements=$here/requirements.txt
stamp=$venv/.requirements.sha256

want=$(sha256sum "$requirements" | cut -d' ' -f1)

# A venv whose python no longer starts (its base interpreter was removed or
# upgraded) is made anew rather than patched.
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    echo "[bench-peers] creating $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv" >&2
fi

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[bench-peers] installing $requirements" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    # Written only after pip succeeded, so a failed install is retried next time.
    echo "$want" >"$stamp"
fi

echo "$venv/bin/python"
