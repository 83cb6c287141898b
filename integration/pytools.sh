#!/usr/bin/env bash
# Installs the Python tools the tests run (schemathesis, which tests the
# REST API against rest/openapi.json, and openapi-spec-validator, which
# checks that document) into a virtualenv, pinned, from PyPI. Prints the
# virtualenv's bin directory. Idempotent and cheap once installed; safe to
# run concurrently (a lock serializes installs).
#
# Where: $KOUKAN_PYTOOLS, else target/pytools of the workspace (under
# CARGO_TARGET_DIR when that is set), so `cargo clean` removes it too.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${KOUKAN_PYTOOLS:-${CARGO_TARGET_DIR:-$root/target}/pytools}"
pins=(schemathesis==4.32.5 openapi-spec-validator==0.9.0)
stamp="$venv/.installed"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins[*]}" ]; then
  echo "installing into $venv: ${pins[*]}" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
  echo "${pins[*]}" >"$stamp"
fi
echo "$venv/bin"
