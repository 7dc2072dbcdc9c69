#!/usr/bin/env bash
# Runs every check and test the project has, as CI does.
#
# Prepares .venv-test (a virtualenv with Flask, Django, FastAPI, Starlette,
# Pydantic and a2wsgi from PyPI, reused
# between runs) for the framework and virtualenv tests, then: formatting,
# clippy, a warning-free release build, and the whole cargo test suite on the
# default Python (PYO3_PYTHON, else python3), then the version-dependent tests
# on every other CPython 3.9-3.13 (scripts/test-matrix.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYO3_PYTHON:-python3}
default_version=$(bash scripts/python-supported.sh "$python") || exit 1
venv=.venv-test
if ! "$venv/bin/python" -c 'import flask, django, fastapi, starlette, pydantic, a2wsgi
assert django.VERSION >= (5, 2)' 2>/dev/null; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'flask>=3,<4' 'django>=5.2,<6' \
        'fastapi>=0.115' 'starlette>=0.40' 'pydantic>=2,<3' 'a2wsgi>=1.10,<2'
fi
export LSWSGI_TEST_VENV="$PWD/$venv"

# Started as root, the worker serves as LSAPI_DEFAULT_UID or nobody (never
# root), as under LiteSpeed; that user must reach the Python it embeds. On
# machines whose Python lives under /root (pyenv), let others traverse /root
# (search permission only: nothing in it becomes listable).
if [ "$(id -u)" = 0 ] && [ -d /root ] && [ "$(stat -c %A /root | cut -c10)" != x ]; then
    chmod o+x /root
fi

# The scripts test (tests/scripts.rs) needs the shellcheck tool and fails
# without it: install Debian's package when it is missing and we are root.
if ! command -v shellcheck >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq shellcheck) ||
        echo "test.sh: could not install shellcheck; the shellcheck test will fail" >&2
fi
# The real-OpenLiteSpeed suite (tests/ols.rs) drives the server with curl.
if ! command -v curl >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq curl) ||
        echo "test.sh: could not install curl; the OpenLiteSpeed tests will fail" >&2
fi

# The OpenLiteSpeed 1.9.1 kit's build.sh installs its build dependencies
# itself, except libcap-dev (the server includes <sys/capability.h>).
if [ -n "${LSWSGI_OLS19_SRC:-}" ] && ! dpkg -s libcap-dev >/dev/null 2>&1 &&
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq libcap-dev) ||
        echo "test.sh: could not install libcap-dev; OpenLiteSpeed 1.9.1 will not build" >&2
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo build --release
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
start=$SECONDS
cargo test 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
read -r passed failed skipped < <(bash scripts/test-matrix.sh --tally "$log")
((status == 0)) || failed=$((failed > 0 ? failed : 1))
# The other CPython versions (scripts/test-matrix.sh), then one closing line
# with the test counts of every version (tests that did not run as skipped).
bash scripts/test-matrix.sh --default \
    "$default_version:$(command -v "$python"):$passed:$failed:$((SECONDS - start)):$skipped"
