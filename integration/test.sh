#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the
# tests talk to (Postfix's smtp-sink/smtp-source, python3, redis-server;
# the tests start their own redis-server on free ports) and the Python
# tools (schemathesis, into a virtualenv), checks formatting and lints
# (rustfmt, clippy with warnings as errors), builds the binaries
# the end-to-end tests start, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# Debian's python3 makes virtualenvs only with python3-venv (ensurepip).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # postfix's maintainer scripts must not start a daemon on port 25.
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# rustfmt and clippy are rustup components a minimal toolchain may lack;
# add only what is missing (adding is a download, even when present).
if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup component list --installed)
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$installed" || rustup component add "$c"
  done
fi

# The Python tools of the OpenAPI test (schemathesis, pinned, from PyPI)
# into a virtualenv under target/.
./integration/pytools.sh >/dev/null

# Cheapest first: a formatting or lint failure stops the run before the
# long test suite.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads="${KOUKAN_TEST_THREADS:-4}"
