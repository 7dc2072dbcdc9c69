#!/usr/bin/env bash
# smoke-direct.sh: checks an lswsgi binary without a web server.
#
# Starts lswsgi on a temporary Unix socket and drives it with lsapi-call, the
# way LiteSpeed would, in Worker mode and in ProcessGroup mode; prints a
# PASS/FAIL table. Run it on a host before pointing LiteSpeed at a new
# /usr/local/lsws/fcgi-bin/lswsgi. Needs bash, coreutils, cmp and awk.
set -uo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF'
Usage: smoke-direct.sh [options]

Checks an lswsgi worker without a web server: starts it on a temporary Unix
socket (lswsgi -a), sends it requests with lsapi-call as LiteSpeed would, and
prints a PASS/FAIL table. Both process models are run by default: Worker mode
(one process) and ProcessGroup mode (LSAPI_CHILDREN=N, a forking parent).

The worker gets a clean environment, like under LiteSpeed: PATH=/bin:/usr/bin
plus whatever -e adds.

Checks, per mode:
  start        the worker comes up and listens
  hello        hello.wsgi answers 200 "Hello from lswsgi!"
  environ      environ.wsgi shows REQUEST_METHOD, SCRIPT_NAME, PATH_INFO,
               QUERY_STRING, a request header, wsgi.url_scheme and
               wsgi.multiprocess as sent
  environ-https  HTTPS=on from the server gives wsgi.url_scheme=https
  echo-text    echo.wsgi returns a POSTed form body unchanged
  echo-binary  echo.wsgi returns a binary body (every byte value) unchanged
  keepalive    50 requests on one connection
  concurrent   8 connections at once
  fd0-spawn    lsapi-call --spawn: the socket on fd 0, as LiteSpeed starts it
  stop         SIGTERM stops the worker (and its children) within 10 s
plus, once, "version": lswsgi -v names the version and the embedded Python.

Options:
  --lswsgi PATH        the worker to check (default: $LSWSGI, else
                       target/release/lswsgi of this checkout (honouring
                       CARGO_TARGET_DIR), else lswsgi on PATH, else
                       /usr/local/lsws/fcgi-bin/lswsgi). Repeat it to check
                       several (one per Python version, installed with
                       install.sh --name): each gets the whole table, then a
                       summary line per binary
  --lsapi-call PATH    the LSAPI client (default: $LSAPI_CALL, else
                       target/release/lsapi-call, else lsapi-call on PATH,
                       else next to the worker)
  --apps DIR           directory holding hello.wsgi, environ.wsgi and
                       echo.wsgi (default: the apps/ directory next to this
                       script)
  --mode MODE          worker, pgroup or both (default both)
  --children N         LSAPI_CHILDREN for ProcessGroup mode (default 4)
  -e, --env KEY=VALUE  add to the worker's environment (repeatable), e.g.
                       LS_PYTHONBIN=/home/user/virtualenv/app/3.11/bin/python
  --binary-size BYTES  size of the binary POST body (default 200000)
  --timeout SECS       time-out of each request (default 10)
  --baseline           check only what LiteSpeed's own lswsgi must do as well,
                       so a host can get a green run on the worker it is
                       replacing: what only this lswsgi does is run too and
                       shown as NOTE rows that do not fail the run (see
                       "Baseline" below)
  -v, --verbose        show the worker logs even when every check passed
  -h, --help           show this help

Baseline (--baseline): the PEP 3333 minimum both workers meet. Changed:
  version      only the first line "lswsgi version ..." is required
  listener     (Worker mode) a second connection to the same worker; when it
               fails (LiteSpeed's lswsgi serves one connection per process
               in Worker mode; LiteSpeed starts another), the rest of the
               mode's checks start their own worker per connection (--spawn)
  environ      SCRIPT_FILENAME and the body length are not required
  echo-*       the app reads CONTENT_LENGTH bytes (echo.wsgi?sized)
Shown as NOTE rows when they fail: version-python (exit status 0 and the
embedded Python named), listener, environ-extra, echo-read-all
(wsgi.input.read() without a size, which PEP 3333 says a server should
allow).

Exit status: 0 every check passed, 1 a check failed, 2 usage error or a
missing binary.

Example, validating an install before LiteSpeed uses it:
  scripts/smoke-direct.sh --lswsgi /usr/local/lsws/fcgi-bin/lswsgi
EOF
}

die_usage() {
    echo "smoke-direct.sh: $*" >&2
    echo "Try 'smoke-direct.sh --help'." >&2
    exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
lswsgi=${LSWSGI:-}
lswsgis=()
pass_args=()
lsapi_call=${LSAPI_CALL:-}
apps=$here/apps
mode=both
children=4
binary_size=200000
timeout=10
verbose=0
baseline=0
worker_env=(PATH=/bin:/usr/bin)

# Every argument but --lswsgi, for checking several binaries one by one.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ ${args[i]} == --lswsgi ]]; then
        i=$((i + 1))
    else
        pass_args+=("${args[i]}")
    fi
done
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --lswsgi) (($# > 1)) || die_usage "$1 needs a value"; lswsgis+=("$2"); shift ;;
        --lsapi-call) (($# > 1)) || die_usage "$1 needs a value"; lsapi_call=$2; shift ;;
        --apps) (($# > 1)) || die_usage "$1 needs a value"; apps=$2; shift ;;
        --mode) (($# > 1)) || die_usage "$1 needs a value"; mode=$2; shift ;;
        --children) (($# > 1)) || die_usage "$1 needs a value"; children=$2; shift ;;
        -e | --env)
            (($# > 1)) || die_usage "$1 needs a value"
            [[ $2 == [A-Za-z_]*=* ]] || die_usage "expected KEY=VALUE, not '$2'"
            worker_env+=("$2"); shift ;;
        --binary-size) (($# > 1)) || die_usage "$1 needs a value"; binary_size=$2; shift ;;
        --timeout) (($# > 1)) || die_usage "$1 needs a value"; timeout=$2; shift ;;
        -v | --verbose) verbose=1 ;;
        --baseline) baseline=1 ;;
        *) die_usage "unknown argument '$1'" ;;
    esac
    shift
done

case $mode in
    worker | pgroup | both) ;;
    *) die_usage "--mode must be worker, pgroup or both, not '$mode'" ;;
esac
if ! [[ $children =~ ^[0-9]+$ ]] || ((children < 2)); then
    die_usage "--children needs a number above 1"
fi
if ! [[ $binary_size =~ ^[0-9]+$ ]] || ((binary_size < 512)); then
    die_usage "--binary-size needs a number of at least 512"
fi
if ! [[ $timeout =~ ^[0-9]+$ ]] || ((timeout < 1)); then
    die_usage "--timeout needs a whole number of seconds"
fi

if ((${#lswsgis[@]} > 1)); then
    summary=() failed=0
    for b in "${lswsgis[@]}"; do
        echo "=== $b ==="
        if "$0" "${pass_args[@]}" --lswsgi "$b"; then
            summary+=("PASS $b ($("$b" -v 2>/dev/null | sed -n 2p))")
        else
            rc=$?
            ((rc == 2)) && exit 2
            summary+=("FAIL $b")
            failed=$((failed + 1))
        fi
        echo
    done
    printf '%s\n' "${summary[@]}"
    ((failed == 0)) && echo "PASSED: all ${#lswsgis[@]} binaries" || echo "FAILED: $failed of ${#lswsgis[@]} binaries"
    ((failed == 0))
    exit
fi
((${#lswsgis[@]} == 0)) || lswsgi=${lswsgis[0]}

target_dir=${CARGO_TARGET_DIR:-$repo/target}
[[ $target_dir == /* ]] || target_dir=$repo/$target_dir

# find_binary NAME [FALLBACK...]: the release build of this checkout, then
# PATH, then each fallback path.
find_binary() {
    local name=$1 candidate
    shift
    if [[ -x $target_dir/release/$name ]]; then
        echo "$target_dir/release/$name"
    elif candidate=$(command -v "$name"); then
        echo "$candidate"
    else
        for candidate in "$@"; do
            [[ -x $candidate ]] && { echo "$candidate"; return; }
        done
        return 1
    fi
}

if [[ -z $lswsgi ]]; then
    lswsgi=$(find_binary lswsgi /usr/local/lsws/fcgi-bin/lswsgi) ||
        die_usage "no lswsgi found (build it with 'cargo build --release' or give --lswsgi PATH)"
fi
if [[ -z $lsapi_call ]]; then
    lsapi_call=$(find_binary lsapi-call "$(dirname "$lswsgi")/lsapi-call") ||
        die_usage "no lsapi-call found (build it with 'cargo build --release' or give --lsapi-call PATH)"
fi
[[ -x $lswsgi ]] || die_usage "$lswsgi is not an executable file"
[[ -x $lsapi_call ]] || die_usage "$lsapi_call is not an executable file"
for app in hello environ echo; do
    [[ -r $apps/$app.wsgi ]] || die_usage "$apps/$app.wsgi is missing"
done
# LiteSpeed always sends absolute script paths.
apps=$(cd "$apps" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/lswsgi-smoke.XXXXXX") || die_usage "cannot create a temporary directory"
worker_pid=
cleanup() {
    if [[ -n $worker_pid ]]; then
        kill -KILL "$worker_pid" 2>/dev/null
        wait "$worker_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

hello_text='Hello from lswsgi!'
fails=0
checks=0
notes=0
logs=()

row() { # MODE CHECK RESULT DETAIL
    printf '%-8s %-14s %-6s %s\n' "$1" "$2" "$3" "$4"
    checks=$((checks + 1))
    [[ $3 == PASS ]] || fails=$((fails + 1))
}

# extra MODE CHECK RESULT DETAIL: a check only this lswsgi has to pass; with
# --baseline a failure is a NOTE row, not counted.
extra() {
    if ((baseline)) && [[ $3 != PASS ]]; then
        printf '%-8s %-14s %-6s %s\n' "$1" "$2" NOTE "$4"
        notes=$((notes + 1))
    else
        row "$@"
    fi
}

# alive PID: whether the process exists and is not a zombie.
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && ${st:0:1} != Z ]]
}

ms_since() { # START_NS: milliseconds elapsed
    echo $((($(date +%s%N) - $1) / 1000000))
}

# split_response FILE PREFIX: splits lsapi-call's HTTP-style output into
# PREFIX.head (header lines) and PREFIX.body (the exact body bytes); sets
# status (000 when the output holds no response).
split_response() {
    local line n
    status=000
    : >"$2.head"
    : >"$2.body"
    {
        IFS= read -r line || return 0
        [[ $line =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]] || return 0
        status=${BASH_REMATCH[1]}
        n=$((${#line} + 1))
        while IFS= read -r line; do
            n=$((n + ${#line} + 1))
            [[ $line == $'\r' || -z $line ]] && break
            printf '%s\n' "${line%$'\r'}" >>"$2.head"
        done
    } <"$1"
    tail -c "+$((n + 1))" "$1" >"$2.body"
}

# lsapi ARGS...: runs lsapi-call ARGS with the time-out, in a clean
# environment made of call_env when that is set (a spawned worker inherits
# it).
call_env=()
lsapi() {
    if ((${#call_env[@]})); then
        env -i "${call_env[@]}" "$lsapi_call" --timeout "$timeout" "$@"
    else
        "$lsapi_call" --timeout "$timeout" "$@"
    fi
}

# call TAG ARGS...: runs lsapi ARGS; the response lands in $work/TAG.head
# and $work/TAG.body; sets status and call_error.
call() {
    local tag=$1 rc
    shift
    lsapi "$@" >"$work/$tag.out" 2>"$work/$tag.err"
    rc=$?
    call_error=
    split_response "$work/$tag.out" "$work/$tag"
    if ((rc != 0)); then
        call_error="lsapi-call exit $rc: $(grep -m1 '^lsapi-call:' "$work/$tag.err" | cut -c13-)"
        status=000
    fi
}

# body_diff EXPECTED_FILE ACTUAL_FILE: empty when equal, else what differs.
body_diff() {
    local got want report
    cmp -s "$1" "$2" && return
    got=$(wc -c <"$2" | tr -d ' ')
    want=$(wc -c <"$1" | tr -d ' ')
    report=$(cmp "$1" "$2" 2>&1)
    if [[ $report == *EOF* ]]; then
        printf 'body is %s bytes instead of %s, otherwise the same' "$got" "$want"
    else
        printf 'body differs from byte %s on (%s bytes, expected %s)' \
            "$(grep -o 'byte [0-9]*' <<<"$report" | head -n1 | cut -c6-)" "$got" "$want"
    fi
}

# env_get KEY FILE: a value from environ.wsgi's KEY=VALUE lines.
env_get() {
    awk -v k="$1" 'index($0, k "=") == 1 { print substr($0, length(k) + 2); found = 1; exit }
                   END { exit !found }' "$2"
}

# env_mismatches FILE KEY=VALUE...: the expectations FILE does not meet.
env_mismatches() {
    local file=$1 kv key want got out=()
    shift
    for kv; do
        key=${kv%%=*}
        want=${kv#*=}
        if ! got=$(env_get "$key" "$file"); then
            out+=("$key missing")
        elif [[ $got != "$want" ]]; then
            out+=("$key='$got' (expected '$want')")
        fi
    done
    ((${#out[@]} == 0)) || printf '%s; ' "${out[@]}"
}

# request_check MODE CHECK TAG EXPECTED_BODY_FILE ARGS...: one request that
# must answer 200 with exactly EXPECTED_BODY_FILE; reported with the
# function $report names (row, or extra).
request_check() {
    local m=$1 check=$2 tag=$3 expected=$4 start diff report=${report:-row}
    shift 4
    start=$(date +%s%N)
    call "$tag" "$@"
    if [[ -n $call_error ]]; then
        "$report" "$m" "$check" FAIL "$call_error"
    elif [[ $status != 200 ]]; then
        "$report" "$m" "$check" FAIL "status $status: $(head -c 120 "$work/$tag.body" | tr -s '\n\r' '  ')"
    elif diff=$(body_diff "$expected" "$work/$tag.body") && [[ -n $diff ]]; then
        "$report" "$m" "$check" FAIL "$diff"
    else
        "$report" "$m" "$check" PASS "200, $(wc -c <"$work/$tag.body" | tr -d ' ') bytes, $(ms_since "$start") ms"
    fi
}

# The bodies the checks expect.
printf '%s\n' "$hello_text" >"$work/hello.expected"
form='name=smoke+test&text=h%C3%A9llo+w%C3%B6rld&empty=&n=42'
printf '%s' "$form" >"$work/form.data"
{
    # Every byte value, CR LF and NUL included, then random bytes, then the
    # byte values again, so truncation at either end shows.
    printf '%b' "$(printf '\\0%03o' {0..255})"
    head -c "$((binary_size - 512))" /dev/urandom
    printf '%b' "$(printf '\\0%03o' {255..0})"
} >"$work/binary.data"

version_check() {
    local out rc
    out=$("$lswsgi" -v 2>&1)
    rc=$?
    if ((baseline)) && [[ $(sed -n 1p <<<"$out") == "lswsgi version "* ]]; then
        row - version PASS "$(sed -n 1p <<<"$out")"
        if ((rc)) || [[ $(sed -n 2p <<<"$out") != "Python "* ]]; then
            extra - version-python FAIL "exit status $rc, output: ${out//$'\n'/, } (this lswsgi: status 0 and the embedded Python)"
        else
            extra - version-python PASS "${out//$'\n'/, }"
        fi
    elif ((rc)); then
        row - version FAIL "$lswsgi -v failed: $(head -n1 <<<"$out")"
    elif [[ $(sed -n 1p <<<"$out") != "lswsgi version "* || $(sed -n 2p <<<"$out") != "Python "* ]]; then
        row - version FAIL "unexpected -v output: ${out//$'\n'/, }"
    else
        row - version PASS "${out//$'\n'/, }"
    fi
}

# run_mode MODE: every check against a worker in MODE (worker or pgroup).
run_mode() {
    local m=$1 sock=$work/$1.sock log=$work/$1.log start i n ok
    local env=("${worker_env[@]}") multiprocess=False
    if [[ $m == pgroup ]]; then
        env+=("LSAPI_CHILDREN=$children")
        multiprocess=True
    fi
    logs+=("$log")

    # start
    start=$(date +%s%N)
    env -i "${env[@]}" "$lswsgi" -a "$sock" </dev/null >>"$log" 2>&1 &
    worker_pid=$!
    for ((i = 0; i < 150; i++)); do
        [[ -S $sock ]] && break
        alive "$worker_pid" || break
        sleep 0.1
    done
    if ! [[ -S $sock ]] || ! alive "$worker_pid"; then
        wait "$worker_pid" 2>/dev/null
        row "$m" start FAIL "the worker did not start (exit status $?); see its log below"
        worker_pid=
        return
    fi
    row "$m" start PASS "pid $worker_pid$([[ $m == pgroup ]] && echo ", LSAPI_CHILDREN=$children"), $(ms_since "$start") ms"

    # Where the requests go: the worker's socket, or (--baseline, Worker
    # mode, a worker that served one connection only) a worker of their own.
    local target=("$sock")
    local script=(--script-name /hello.wsgi --script "$apps/hello.wsgi")
    request_check "$m" hello "$m-hello" "$work/hello.expected" "${target[@]}" "${script[@]}" /hello.wsgi
    if ((baseline)) && [[ $m == worker ]]; then
        call "$m-listener" "$sock" "${script[@]}" /hello.wsgi
        if [[ -z $call_error && $status == 200 ]] && cmp -s "$work/hello.expected" "$work/$m-listener.body"; then
            extra "$m" listener PASS "a second connection served by the same worker"
        else
            extra "$m" listener FAIL "no second connection (${call_error:-status $status}): each check below starts its own worker with the socket on fd 0, as LiteSpeed does in Worker mode"
            target=(--spawn "$(printf '%q' "$lswsgi")")
            call_env=("${env[@]}")
        fi
    fi

    # environ
    local token="smoke-$$-$RANDOM" bad
    call "$m-environ" "${target[@]}" --script "$apps/environ.wsgi" --script-name /environ.wsgi \
        -H "X-Lswsgi-Smoke: $token" "/environ.wsgi/extra/path?smoke=$token"
    if [[ -n $call_error ]]; then
        row "$m" environ FAIL "$call_error"
    elif [[ $status != 200 ]]; then
        row "$m" environ FAIL "status $status"
    else
        # PEP 3333's part, then what LiteSpeed's CGI-style variables and
        # this lswsgi add (not required with --baseline).
        # (LiteSpeed's lswsgi says wsgi.multiprocess=True in Worker mode
        # too: LiteSpeed may run several Worker-mode processes of an app.)
        local pep=(REQUEST_METHOD=GET SCRIPT_NAME=/environ.wsgi PATH_INFO=/extra/path
            "QUERY_STRING=smoke=$token" "HTTP_X_LSWSGI_SMOKE=$token" wsgi.url_scheme=http
            "wsgi.version=(1, 0)")
        local more=("wsgi.multiprocess=$multiprocess" "SCRIPT_FILENAME=$apps/environ.wsgi"
            body.length=0)
        if ((baseline)); then
            bad=$(env_mismatches "$work/$m-environ.body" "${pep[@]}")
            [[ -n $(env_mismatches "$work/$m-environ.body" wsgi.multiprocess=True) &&
                -n $(env_mismatches "$work/$m-environ.body" wsgi.multiprocess=False) ]] &&
                bad+="wsgi.multiprocess is neither True nor False; "
        else
            bad=$(env_mismatches "$work/$m-environ.body" "${pep[@]}" "${more[@]}")
        fi
        if [[ -n $bad ]]; then
            row "$m" environ FAIL "$bad"
        else
            row "$m" environ PASS "200, $(wc -l <"$work/$m-environ.body" | tr -d ' ') keys as expected"
        fi
        if ((baseline)); then
            bad=$(env_mismatches "$work/$m-environ.body" "${more[@]}")
            if [[ -n $bad ]]; then
                extra "$m" environ-extra FAIL "$bad"
            else
                extra "$m" environ-extra PASS "wsgi.multiprocess, SCRIPT_FILENAME and body.length as expected"
            fi
        fi
    fi

    call "$m-https" "${target[@]}" --script "$apps/environ.wsgi" --script-name /environ.wsgi \
        -e HTTPS=on -e SERVER_PORT=443 /environ.wsgi
    if [[ -n $call_error ]]; then
        row "$m" environ-https FAIL "$call_error"
    elif [[ $status != 200 ]]; then
        row "$m" environ-https FAIL "status $status"
    elif bad=$(env_mismatches "$work/$m-https.body" wsgi.url_scheme=https) && [[ -n $bad ]]; then
        row "$m" environ-https FAIL "$bad"
    else
        row "$m" environ-https PASS "wsgi.url_scheme=https"
    fi

    # echo.wsgi?sized reads CONTENT_LENGTH bytes, as every WSGI server
    # allows; plain echo.wsgi calls read() without a size.
    local echo=(--script-name /echo.wsgi --script "$apps/echo.wsgi") uri=/echo.wsgi
    ((baseline)) && uri='/echo.wsgi?sized'
    request_check "$m" echo-text "$m-echo-text" "$work/form.data" "${target[@]}" "${echo[@]}" \
        -d "@$work/form.data" "$uri"
    request_check "$m" echo-binary "$m-echo-binary" "$work/binary.data" "${target[@]}" "${echo[@]}" \
        -H 'Content-Type: application/octet-stream' -d "@$work/binary.data" "$uri"
    if ((baseline)); then
        report=extra request_check "$m" echo-read-all "$m-echo-read-all" "$work/form.data" \
            "${target[@]}" "${echo[@]}" -d "@$work/form.data" /echo.wsgi
    fi

    request_check "$m" keepalive "$m-keepalive" "$work/hello.expected" "${target[@]}" "${script[@]}" \
        -n 50 /hello.wsgi

    # concurrent
    local pids=() failed=0
    start=$(date +%s%N)
    for i in 1 2 3 4 5 6 7 8; do
        lsapi -s -f "${target[@]}" "${script[@]}" /hello.wsgi >"$work/$m-concurrent.$i" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}" || ! cmp -s "$work/hello.expected" "$work/$m-concurrent.$((i + 1))"; then
            failed=$((failed + 1))
        fi
    done
    if ((failed)); then
        row "$m" concurrent FAIL "$failed of 8 parallel requests failed: $(head -c 120 "$work/$m-concurrent.1" | tr -s '\n\r' '  ')"
    else
        row "$m" concurrent PASS "8 connections at once, $(ms_since "$start") ms"
    fi

    # fd0-spawn: a second worker, started with the socket as its fd 0 (and
    # the same clean environment, which it inherits from lsapi-call).
    start=$(date +%s%N)
    call_env=("${env[@]}")
    call "$m-spawn" --spawn "$(printf '%q' "$lswsgi")" "${script[@]}" /hello.wsgi
    call_env=()
    if [[ -n $call_error ]]; then
        row "$m" fd0-spawn FAIL "$call_error"
    elif [[ $status != 200 ]] || ! cmp -s "$work/hello.expected" "$work/$m-spawn.body"; then
        row "$m" fd0-spawn FAIL "status $status: $(head -c 120 "$work/$m-spawn.body" | tr -s '\n\r' '  ')"
    else
        row "$m" fd0-spawn PASS "200 from a worker with the socket on fd 0, $(ms_since "$start") ms"
    fi
    cat "$work/$m-spawn.err" >>"$log"

    # stop
    local kids=() code left=()
    if command -v pgrep >/dev/null; then
        mapfile -t kids < <(pgrep -P "$worker_pid")
    fi
    start=$(date +%s%N)
    kill -TERM "$worker_pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        alive "$worker_pid" || break
        sleep 0.1
    done
    if alive "$worker_pid"; then
        row "$m" stop FAIL "still running 10 s after SIGTERM; killed"
        kill -KILL "$worker_pid"
        wait "$worker_pid" 2>/dev/null
        worker_pid=
        return
    fi
    wait "$worker_pid"
    code=$?
    worker_pid=
    for ((i = 0; i < 50; i++)); do
        left=()
        for n in "${kids[@]}"; do
            alive "$n" && left+=("$n")
        done
        ((${#left[@]} == 0)) && break
        sleep 0.1
    done
    ok="exit status $code after $(ms_since "$start") ms"
    [[ $m == pgroup ]] && ok+=", ${#kids[@]} children gone"
    if ((code != 0)); then
        row "$m" stop FAIL "$ok (expected 0)"
    elif ((${#left[@]})); then
        row "$m" stop FAIL "children still running after 5 s: ${left[*]}"
        kill -KILL "${left[@]}" 2>/dev/null
    else
        row "$m" stop PASS "$ok"
    fi
}

echo "lswsgi:     $lswsgi"
echo "lsapi-call: $lsapi_call"
echo "apps:       $apps"
echo
printf '%-8s %-14s %-6s %s\n' MODE CHECK RESULT DETAIL
version_check
[[ $mode == pgroup ]] || run_mode worker
[[ $mode == worker ]] || run_mode pgroup

echo
if ((fails)); then
    echo "FAILED: $fails of $checks checks"
else
    echo "PASSED: all $checks checks$( ((baseline)) && echo " (--baseline)")"
fi
((notes == 0)) || echo "NOTES: $notes differences from this lswsgi (NOTE rows above; not failures with --baseline)"
if ((fails || verbose)); then
    for log in "${logs[@]}"; do
        echo
        echo "--- worker log ($(basename "$log" .log) mode, last 40 lines) ---"
        tail -n 40 "$log" 2>/dev/null
    done
elif ((${#logs[@]})) && grep -qh '\[\(WARN\|ERROR\)\]' "${logs[@]}" 2>/dev/null; then
    # Passing, but worth knowing (e.g. a fallback to another Python install).
    echo
    echo "Worker warnings:"
    grep -h '\[\(WARN\|ERROR\)\]' "${logs[@]}" | sed 's/^[^[]*\[[0-9]*\] //' | sort | uniq -c | head -n 10
fi
((fails == 0))
