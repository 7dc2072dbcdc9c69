#!/usr/bin/env bash
# test-matrix.sh: the per-Python part of CI (scripts/test.sh runs it after
# the full suite on the default Python).
#
# Finds CPython 3.9-3.13 and, for each minor version other than the default
# one, builds lswsgi against it in its own target directory (target/py3.X)
# and runs the tests whose behaviour depends on the Python version (worker,
# ProcessGroup, mod_wsgi application groups, frameworks, ASGI, the
# immortalized preloaded heap of 3.12+, unit tests) with its own virtualenv
# (.venv-test-3.X: Flask, FastAPI, Starlette, Pydantic, a2wsgi and a Django
# release supporting that Python). Prints one row per version (the default's
# from --default) and one
# closing line; fails when a version is missing or any test fails.
#
# Usage: test-matrix.sh [--default X.Y:PYTHON:PASSED:FAILED:SECONDS[:SKIPPED]]
#        test-matrix.sh --tally CARGO_TEST_LOG   # prints PASSED FAILED SKIPPED
# A test that could not run (the real-server suite without a server prints
# "tests/NAME.rs: NOT RUN: ..." and returns) is counted as skipped, not as
# passed; with LSWSGI_OLS_REQUIRED=1 a skipped test fails the run.
# Pythons are found as python3.X on PATH, then under pyenv, /opt/alt and
# /opt/cpanel, /usr/local/bin, /usr/bin; LSWSGI_MATRIX_PYTHONS="PATH ..."
# replaces the search.
set -uo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1

# tally LOG: "PASSED FAILED SKIPPED" of a cargo test log; a test that said
# NOT RUN passed in libtest's count but is moved to SKIPPED.
tally() {
    awk '/^test result:/ { p += $4; f += $6 }
         /tests\/[A-Za-z0-9_]+\.rs: NOT RUN: / { s++ }
         END { print p - s, f + 0, s + 0 }' "$1"
}
if [[ ${1:-} == --tally ]]; then
    tally "${2:?--tally needs a cargo test log}"
    exit
fi

minors=(9 10 11 12 13)
default=
if [[ ${1:-} == --default ]]; then
    default=${2:?--default needs X.Y:PYTHON:PASSED:FAILED:SECONDS[:SKIPPED]}
fi
default_version=${default%%:*}

# works PYTHON: prints X.Y when PYTHON runs and has a shared libpython.
works() {
    "$1" -c 'import sys, sysconfig
assert sysconfig.get_config_var("Py_ENABLE_SHARED")
print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

declare -A found
add() { # PYTHON: record it under its X.Y unless that version is known
    local v
    v=$(works "$1") || return 0
    [[ -n ${found[$v]:-} ]] || found[$v]=$(command -v "$1" || echo "$1")
}
if [[ -n ${LSWSGI_MATRIX_PYTHONS:-} ]]; then
    for p in $LSWSGI_MATRIX_PYTHONS; do add "$p"; done
else
    pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for m in "${minors[@]}"; do
        add "python3.$m"
        # The newest pyenv patch release of 3.m.
        while IFS= read -r p; do
            add "$p"
        done < <(printf '%s\n' "$pyenv_root"/versions/3."$m".*/bin/python3."$m" | sort -rV)
        for p in /opt/alt/python3"$m"/bin/python3."$m" /opt/cpanel/ea-python3"$m"/root/usr/bin/python3."$m" \
            /usr/local/bin/python3."$m" /usr/bin/python3."$m"; do
            add "$p"
        done
    done
fi

missing=()
for m in "${minors[@]}"; do
    [[ -n ${found[3.$m]:-} || $default_version == "3.$m" ]] || missing+=("3.$m")
done

# run_version X.Y PYTHON: builds and runs the version tests; sets
# passed, failed, skipped and status.
run_version() {
    local v=$1 python=$2 venv=.venv-test-$1 django log other
    django='django>=5.2,<6'
    [[ $v == 3.9 ]] && django='django>=4.2,<5' # Django 5 needs Python 3.10
    if ! "$venv/bin/python" -c 'import flask, django, fastapi, starlette, pydantic, a2wsgi' 2>/dev/null ||
        [[ $("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) != "$v" ]]; then
        rm -rf "$venv"
        if ! "$python" -m venv "$venv" ||
            ! "$venv/bin/pip" install --quiet --disable-pip-version-check 'flask>=3,<4' "$django" \
                'fastapi>=0.115' 'starlette>=0.40' 'pydantic>=2,<3' 'a2wsgi>=1.10,<2'; then
            echo "test-matrix: cannot make $venv for Python $v" >&2
            passed=0 failed=0 skipped=0 status=1
            return
        fi
    fi
    # Another version's Python, for the refused-virtualenv test.
    other=${found[3.$((${v#3.} == 13 ? 12 : 13))]:-${default#*:}}
    other=${other%%:*}
    log=$(mktemp)
    # -D warnings: code under a version cfg must be as clean as the default's.
    PYO3_PYTHON=$python CARGO_TARGET_DIR=target/py$v LSWSGI_TEST_VENV=$PWD/$venv \
        RUSTFLAGS="${RUSTFLAGS:-} -D warnings" \
        LSWSGI_TEST_OTHER_PYTHON=$other \
        cargo test --no-fail-fast --bin lswsgi --test worker --test pgroup --test modwsgi --test frameworks --test immortal --test asgi \
        >"$log" 2>&1
    status=$?
    read -r passed failed skipped < <(tally "$log")
    if ((status)); then
        echo "--- Python $v: cargo test failed (last 60 lines) ---"
        tail -n 60 "$log"
    fi
    rm -f "$log"
}

rows=()
total_passed=0 total_failed=0 total_skipped=0 bad=0
if [[ -n $default ]]; then
    IFS=: read -r v p pa fa secs sk <<<"$default"
    sk=${sk:-0}
    rows+=("$(printf '%-6s %-8s %6s %6s %7s %6ss  %s' "$v" full "$pa" "$fa" "$sk" "$secs" "$p")")
    total_passed=$((total_passed + pa)) total_failed=$((total_failed + fa))
    total_skipped=$((total_skipped + sk))
    ((fa == 0)) || bad=1
fi
tested=()
[[ -z $default_version ]] || tested+=("$default_version")
for m in "${minors[@]}"; do
    v=3.$m
    [[ $v != "$default_version" && -n ${found[$v]:-} ]] || continue
    echo "test-matrix: Python $v (${found[$v]})"
    start=$SECONDS
    run_version "$v" "${found[$v]}"
    secs=$((SECONDS - start))
    rows+=("$(printf '%-6s %-8s %6s %6s %7s %6ss  %s' "$v" version "$passed" "$failed" "$skipped" "$secs" "${found[$v]}")")
    total_passed=$((total_passed + passed)) total_failed=$((total_failed + failed))
    total_skipped=$((total_skipped + skipped))
    ((status == 0 && failed == 0 && passed > 0)) || bad=1
    tested+=("$v")
done

echo
printf '%-6s %-8s %6s %6s %7s %7s  %s\n' PYTHON TESTS PASSED FAILED SKIPPED TIME INTERPRETER
printf '%s\n' "${rows[@]}"
if ((${#missing[@]})); then
    echo "test-matrix: no CPython ${missing[*]} with a shared libpython found" \
        "(install it, or list interpreters in LSWSGI_MATRIX_PYTHONS)" >&2
    bad=1
fi
if ((total_skipped)); then
    echo "test-matrix: $total_skipped tests did not run (their NOT RUN lines are above)" >&2
    [[ ${LSWSGI_OLS_REQUIRED:-} != 1 ]] || bad=1
fi
echo "test-matrix: Python ${tested[*]} (${#tested[@]} versions)$( ((bad)) && echo ' - FAILED')"
# The closing line alone, in the form CI reads; tests that did not run are
# counted there, never among the passed.
echo "tests: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit "$bad"
