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
# Flask scenarios use .venv-test (made by scripts/test.sh). Run it on an
# otherwise idle machine: every figure is a ratio of alternating runs, but a
# busy neighbour still adds noise.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${1:?usage: bash scripts/bench.sh PEERS [ROUNDS]}
rounds=${2:-3}
peers=$(cd "$peers" && pwd)
export LSWSGI_PEER_LSWSGI_SRC="$peers" LSWSGI_OLS_SRC="$peers"
cargo build --release
cargo bench --bench load -- --litespeed --rounds "$rounds" --explain
cargo bench --bench ols_load -- --litespeed --rounds "$rounds"
