#!/usr/bin/env bash
# install.sh: builds lswsgi against a chosen Python and installs it where
# LiteSpeed runs it, keeping a backup of the file it replaces.
set -euo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF'
Usage: install.sh [--prefix DIR] [--python PATH] [options]

Builds the release lswsgi against a Python (cargo build --release with
PYO3_PYTHON), checks that it runs (lswsgi -v), and installs it as DIR/lswsgi,
replacing the file atomically (running workers keep the old one until they
exit) and keeping the previous file as DIR/lswsgi.bak-YYYYmmdd-HHMMSS.
Prints the installed version and the Python it embeds.

Options:
  --prefix DIR       where to install (default /usr/local/lsws/fcgi-bin)
  --python PATH      the Python to embed: a CPython 3 with its shared
                     library, e.g. /usr/bin/python3.11 or
                     /opt/alt/python311/bin/python3.11 (default: $PYO3_PYTHON,
                     else python3 on PATH). With --no-build or --binary, the
                     binary must embed this Python or nothing is installed
  --name NAME        file name to install as (default lswsgi). One binary
                     embeds one Python: install one per version side by side,
                     e.g. --name lswsgi312 --python /usr/bin/python3.12
                     (builds go to target/py3.X unless CARGO_TARGET_DIR is set)
  --versioned        install as lswsgiX.Y, X.Y being the Python it embeds:
                     the name under which lswsgi (the configured binPath in
                     the same directory) finds the build for a virtualenv of
                     that Python and hands the site to it (lswsgiXY works too)
  --cloudlinux       install where CloudLinux keeps each Python's worker:
                     /opt/alt/pythonXY/bin/lswsgi for the Python it embeds
                     (overrides --prefix and --name; also found by lswsgi
                     for a virtualenv of that Python)
  --alt-root DIR     with --cloudlinux: DIR instead of /opt/alt
  --with-lsapi-call  also install lsapi-call next to it (a command-line LSAPI
                     client, used by scripts/smoke-direct.sh)
  --no-build         install the existing build instead of building:
                     $CARGO_TARGET_DIR/release/lswsgi, else with --python
                     target/py3.X/release/lswsgi when it exists, else
                     target/release/lswsgi
  --binary PATH      install this lswsgi binary (implies --no-build)
  -h, --help         show this help

After installing, check the binary without touching LiteSpeed:
  scripts/smoke-direct.sh --lswsgi DIR/lswsgi
then restart LiteSpeed (e.g. /usr/local/lsws/bin/lswsctrl restart) and check
it through the web server with scripts/smoke-lsws.sh.

Exit status: 0 installed, 1 build, check or install failed, 2 usage error.
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

die_usage() {
    echo "install.sh: $*" >&2
    echo "Try 'install.sh --help'." >&2
    exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
prefix=/usr/local/lsws/fcgi-bin
python=
name=lswsgi
build=1
binary=
with_call=0
versioned=0
cloudlinux=0
alt_root=/opt/alt

while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --prefix) (($# > 1)) || die_usage "$1 needs a value"; prefix=$2; shift ;;
        --python) (($# > 1)) || die_usage "$1 needs a value"; python=$2; shift ;;
        --name) (($# > 1)) || die_usage "$1 needs a value"; name=$2; shift ;;
        --with-lsapi-call) with_call=1 ;;
        --versioned) versioned=1 ;;
        --cloudlinux) cloudlinux=1 ;;
        --alt-root) (($# > 1)) || die_usage "$1 needs a value"; alt_root=$2; shift ;;
        --no-build) build=0 ;;
        --binary) (($# > 1)) || die_usage "$1 needs a value"; binary=$2; build=0; shift ;;
        *) die_usage "unknown argument '$1'" ;;
    esac
    shift
done

[[ -n $prefix ]] || die_usage "--prefix needs a directory"
[[ $name =~ ^[A-Za-z0-9._-]+$ && $name != . && $name != .. ]] || die_usage "bad --name '$name'"

target_dir=${CARGO_TARGET_DIR:-$repo/target}
[[ $target_dir == /* ]] || target_dir=$repo/$target_dir

# The Python to embed, as an absolute interpreter path.
if [[ -n $python ]]; then
    py_exe=$("$python" -c 'import sys; print(sys.executable)' 2>/dev/null) ||
        die "--python $python: not a working Python interpreter"
fi

if ((build)); then
    command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs), or use --binary PATH"
    if [[ -n $python ]]; then
        export PYO3_PYTHON=$python
    fi
    build_python=${PYO3_PYTHON:-python3}
    # Before cargo: an unsupported Python gets an answer, not a build error.
    build_version=$(bash "$here/python-supported.sh" "$build_python") || exit 1
    # One target directory per Python version, so builds for several
    # versions (installed side by side with --name) do not undo each other.
    if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
        target_dir=$repo/target/py$build_version
        export CARGO_TARGET_DIR=$target_dir
    fi
    describe=$("$build_python" -c 'import sys, sysconfig
print("%d.%d" % sys.version_info[:2], sys.executable)
print(1 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 0)' 2>/dev/null) ||
        die "$build_python is not a working Python interpreter (set --python PATH)"
    if [[ $(sed -n 2p <<<"$describe") != 1 ]]; then
        echo "install.sh: warning: $build_python was built without a shared libpython;" \
            "the build may fail or embed a static copy" >&2
    fi
    echo "Building lswsgi against Python $(sed -n 1p <<<"$describe")"
    bins=(--bin lswsgi)
    ((with_call)) && bins+=(--bin lsapi-call)
    (cd "$repo" && cargo build --release "${bins[@]}") || die "the build failed"
fi
if [[ -z $binary && $build == 0 && -z ${CARGO_TARGET_DIR:-} && -n $python ]]; then
    # The per-version build of an earlier install.sh --python run.
    v=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || v=
    [[ -n $v && -x $repo/target/py$v/release/lswsgi ]] && target_dir=$repo/target/py$v
fi
[[ -n $binary ]] || binary=$target_dir/release/lswsgi
[[ -f $binary && -x $binary ]] || die "$binary is not an executable file (build it, or give --binary PATH)"
if ((with_call)); then
    call_binary=$(dirname "$binary")/lsapi-call
    [[ -f $call_binary && -x $call_binary ]] || die "$call_binary is not an executable file"
fi

# The new binary must run here before it replaces anything.
version=$("$binary" -v 2>&1) || die "$binary -v failed: $version"
[[ $(sed -n 1p <<<"$version") == "lswsgi version "* ]] || die "$binary is not lswsgi: $version"
embedded=$(sed -n '2s/^Python [^ ]* (\(.*\))$/\1/p' <<<"$version")
if [[ -n $python && $embedded != "$py_exe" ]]; then
    die "$binary embeds $embedded, not $py_exe (--python); rebuild without --no-build/--binary"
fi
# X.Y of the embedded Python, for the versioned and CloudLinux names.
embedded_version=$(sed -n '2s/^Python \([0-9]*\.[0-9]*\).*/\1/p' <<<"$version")
if ((versioned || cloudlinux)); then
    [[ -n $embedded_version ]] || die "cannot tell which Python $binary embeds: $version"
fi
if ((cloudlinux)); then
    prefix=$alt_root/python${embedded_version/./}/bin
    name=lswsgi
elif ((versioned)); then
    name=lswsgi$embedded_version
fi

# install_file SOURCE DEST: backs DEST up, then replaces it atomically.
install_file() {
    local src=$1 dest=$2 backup n tmp
    if [[ -e $dest ]]; then
        backup=$dest.bak-$(date +%Y%m%d-%H%M%S)
        n=1
        while [[ -e $backup ]]; do
            backup=$dest.bak-$(date +%Y%m%d-%H%M%S).$n
            n=$((n + 1))
        done
        cp -p "$dest" "$backup" || die "cannot back up $dest to $backup"
        echo "Backed up the previous $(basename "$dest") to $backup"
    fi
    tmp=$(mktemp "$(dirname "$dest")/.$(basename "$dest").new.XXXXXX") ||
        die "cannot write to $(dirname "$dest")"
    if ! cp "$src" "$tmp" || ! chmod 755 "$tmp"; then
        rm -f "$tmp"
        die "cannot copy $src to $tmp"
    fi
    # Keep the owner of the file being replaced (root:root on most servers).
    if [[ -e $dest ]]; then
        chown --reference="$dest" "$tmp" 2>/dev/null || true
    fi
    # rename(2): a running worker keeps its inode, LiteSpeed's next start
    # gets the new file, and there is never a half-written binary.
    mv -f "$tmp" "$dest" || { rm -f "$tmp"; die "cannot replace $dest"; }
}

mkdir -p "$prefix" || die "cannot create $prefix"
install_file "$binary" "$prefix/$name"
echo "Installed $prefix/$name"
if ((with_call)); then
    install_file "$call_binary" "$prefix/lsapi-call"
    echo "Installed $prefix/lsapi-call"
fi

version=$("$prefix/$name" -v 2>&1) || die "the installed $prefix/$name does not run: $version"
echo "$version"

# LiteSpeed runs workers as an unprivileged user (nobody, or the account's
# user under suEXEC): warn when that user cannot reach the embedded Python.
dir=$(dirname "$embedded")
while [[ -n $embedded && $dir != / && $dir != . ]]; do
    perms=$(stat -c %A "$dir" 2>/dev/null) || break
    if [[ ${perms:9:1} != [xt] ]]; then
        echo "install.sh: warning: $dir is not searchable by other users, so workers" \
            "running as nobody or an account user cannot use the Python at $embedded;" \
            "they will look for another Python $(sed -n '2s/^Python \([^ ]*\) .*/\1/p' <<<"$version")" \
            "(/usr, /usr/local, /opt/alt) or fail with a message. Consider --python with a" \
            "system-wide Python." >&2
        break
    fi
    dir=$(dirname "$dir")
done
