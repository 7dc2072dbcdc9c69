#!/usr/bin/env bash
# python-supported.sh PYTHON: prints PYTHON's X.Y when lswsgi supports it
# (CPython 3.9-3.13, the range build.rs accepts), else explains on stderr
# which Python was found and how to choose another, and exits 1.
#
# install.sh and test.sh ask this before cargo runs: with an unsupported
# Python a plain `cargo build` stops in pyo3-ffi's build script, which runs
# before lswsgi's own (pyo3-ffi `links` python, so Cargo orders it first).
set -euo pipefail
export LC_ALL=C

python=${1:?usage: python-supported.sh PYTHON}
min=9 max=13
# Written to run on Python 2 as well, to name it.
if ! desc=$("$python" -c 'import sys, platform
sys.stdout.write("%d.%d %s %s\n" % (sys.version_info[0], sys.version_info[1],
                 platform.python_implementation(), sys.executable))' 2>/dev/null); then
    echo "lswsgi: $python is not a working Python interpreter." >&2
    exit 1
fi
read -r version impl exe <<<"$desc"
minor=${version#3.}
if [[ $impl != CPython || $version != 3.* || ! $minor =~ ^[0-9]+$ ]] || ((minor < min || minor > max)); then
    cat >&2 <<MSG
lswsgi: $python is $impl $version ($exe); lswsgi supports CPython 3.$min-3.$max.
Choose another Python to build against, e.g.
    PYO3_PYTHON=python3.12 cargo build --release
    scripts/install.sh --python /usr/bin/python3.12
MSG
    exit 1
fi
echo "$version"
