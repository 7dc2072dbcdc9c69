#!/usr/bin/env bash
# Runs every check and test the project has, as CI does.
#
# Prepares .venv-test (a virtualenv with Flask and Django from PyPI, reused
# between runs) for the framework and virtualenv tests, then: formatting,
# clippy, a warning-free release build, and the whole cargo test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYO3_PYTHON:-python3}
venv=.venv-test
if ! "$venv/bin/python" -c 'import flask, django; assert django.VERSION >= (5, 2)' 2>/dev/null; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'flask>=3,<4' 'django>=5.2,<6'
fi
export LSWSGI_TEST_VENV="$PWD/$venv"

# The scripts test (tests/scripts.rs) needs the shellcheck tool and fails
# without it: install Debian's package when it is missing and we are root.
if ! command -v shellcheck >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq shellcheck) ||
        echo "test.sh: could not install shellcheck; the shellcheck test will fail" >&2
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo build --release
cargo test
