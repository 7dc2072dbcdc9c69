#!/usr/bin/env bash
# Every performance and footprint figure of the README, side by side with
# LiteSpeed's own lswsgi, in one run: the load scenarios and footprint
# (bench/load.rs, with --explain: where the memory is) and the hello
# throughput through a real OpenLiteSpeed (bench/ols_load.rs).
#
#   bash scripts/bench.sh PEERS [ROUNDS]
#
# PEERS is a directory holding wsgi-lsapi-2.1.tar.gz (LiteSpeed's lswsgi,
# built once under target/peer-lswsgi) and build-ols.sh with the
# OpenLiteSpeed archive (built once under target/ols). ROUNDS defaults to 3.
# Flask and Django scenarios use .venv-test (made by scripts/test.sh). Run it
# on an otherwise idle machine: every figure is a ratio of alternating runs,
# but a busy neighbour still adds noise.
#
# LSWSGI_BENCH_PYTHON=PATH measures both workers built against that Python
# instead of the default one: this worker in target/py3.X (as
# scripts/test-matrix.sh builds it), LiteSpeed's under target/py3.X/peer-lswsgi
# (its configure.py run by that Python), the Flask and Django scenarios in
# LSWSGI_TEST_VENV (default .venv-test-3.X, as test-matrix.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${1:?usage: bash scripts/bench.sh PEERS [ROUNDS]}
rounds=${2:-3}
peers=$(cd "$peers" && pwd)
export LSWSGI_PEER_LSWSGI_SRC="$peers" LSWSGI_OLS_SRC="$peers"
if [[ -n ${LSWSGI_BENCH_PYTHON:-} ]]; then
    v=$("$LSWSGI_BENCH_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    export PYO3_PYTHON=$LSWSGI_BENCH_PYTHON CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/py$v}
    export LSWSGI_TEST_VENV=${LSWSGI_TEST_VENV:-$PWD/.venv-test-$v}
fi
cargo build --release
cargo bench --bench load -- --litespeed --rounds "$rounds" --explain
cargo bench --bench ols_load -- --litespeed --rounds "$rounds" \
    --worker "${CARGO_TARGET_DIR:-target}/release/lswsgi"
