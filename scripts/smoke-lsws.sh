#!/usr/bin/env bash
# smoke-lsws.sh: checks lswsgi through a real LiteSpeed Web Server or
# OpenLiteSpeed, over HTTP with curl, and prints a PASS/FAIL table.
# Needs bash, curl, coreutils, cmp and awk.
set -uo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF'
Usage: smoke-lsws.sh [options] URL...

Checks lswsgi through a running LiteSpeed Web Server or OpenLiteSpeed. Each
URL is a base under which LiteSpeed serves the three smoke applications of
scripts/apps/ with lswsgi:

  URL/hello.wsgi     hello.wsgi    answers "Hello from lswsgi!"
  URL/environ.wsgi   environ.wsgi  dumps the WSGI environ
  URL/echo.wsgi      echo.wsgi     sends the request body back

(--hello, --environ and --echo change those paths.) For every URL it prints
one row per check and exits non-zero if any check fails:

  hello        GET hello: status 200 and exactly "Hello from lswsgi!"
  environ      GET environ?smoke=TOKEN with an X-Lswsgi-Smoke header: status
               200; REQUEST_METHOD, QUERY_STRING, the header, wsgi.url_scheme
               (the URL's scheme) as sent; SCRIPT_NAME + PATH_INFO equal to
               the request path; SERVER_NAME, SERVER_PORT, SERVER_PROTOCOL,
               REMOTE_ADDR and wsgi.version present
  echo-text    POST a form body to echo: status 200, the same bytes back
  echo-binary  POST a binary body (every byte value) to echo: the same back
  repeat       20 GETs of hello on one HTTP connection: all status 200

Minimal LiteSpeed set-up (details in README.md), either:
  * script handler: copy scripts/apps/*.wsgi into a directory of the site,
    e.g. DOCROOT/smoke/; an External App of type "LSAPI App" named lswsgi
    with Command /usr/local/lsws/fcgi-bin/lswsgi, Address
    uds://tmp/lshttpd/lswsgi.sock, Max Connections 10 (and LSAPI_CHILDREN=10
    in its Environment for ProcessGroup mode); a Script Handler for suffix
    "wsgi", type LSAPI App, handler lswsgi. Then:
        smoke-lsws.sh https://example.com/smoke/
  * OpenLiteSpeed App Server contexts (type "App Server", Python, one per
    app, Startup File set to the .wsgi file, Binary Path
    /usr/local/lsws/fcgi-bin/lswsgi), mounted at /smoke-hello/,
    /smoke-environ/ and /smoke-echo/. Then:
        smoke-lsws.sh --hello smoke-hello/ --environ smoke-environ/ \
            --echo smoke-echo/ https://example.com/

Options:
  --hello PATH        path of the hello app under each URL (default hello.wsgi)
  --environ PATH      path of the environ app (default environ.wsgi)
  --echo PATH         path of the echo app (default echo.wsgi)
  --binary-size BYTES size of the binary POST body (default 200000)
  -k, --insecure      accept any TLS certificate (curl -k)
  --curl-arg ARG      pass ARG to every curl call (repeatable), e.g.
                      --curl-arg --resolve --curl-arg example.com:443:127.0.0.1
  --timeout SECS      time-out of each request (default 20)
  --baseline          check only what LiteSpeed's own lswsgi must do as well
                      (a green run on the worker being replaced): the echo
                      checks POST to echo?sized, which reads CONTENT_LENGTH
                      bytes; echo-read-all (wsgi.input.read() without a size,
                      which PEP 3333 says a server should allow) and
                      environ-path (SCRIPT_NAME + PATH_INFO is the request
                      path) are run too and shown as NOTE rows when they fail
  -h, --help          show this help

Exit status: 0 every check passed, 1 a check failed, 2 usage error or curl
missing.
EOF
}

die_usage() {
    echo "smoke-lsws.sh: $*" >&2
    echo "Try 'smoke-lsws.sh --help'." >&2
    exit 2
}

hello_path=hello.wsgi
environ_path=environ.wsgi
echo_path=echo.wsgi
binary_size=200000
timeout=20
baseline=0
curl_args=()
urls=()

while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --hello) (($# > 1)) || die_usage "$1 needs a value"; hello_path=$2; shift ;;
        --environ) (($# > 1)) || die_usage "$1 needs a value"; environ_path=$2; shift ;;
        --echo) (($# > 1)) || die_usage "$1 needs a value"; echo_path=$2; shift ;;
        --binary-size) (($# > 1)) || die_usage "$1 needs a value"; binary_size=$2; shift ;;
        -k | --insecure) curl_args+=(-k) ;;
        --curl-arg) (($# > 1)) || die_usage "$1 needs a value"; curl_args+=("$2"); shift ;;
        --timeout) (($# > 1)) || die_usage "$1 needs a value"; timeout=$2; shift ;;
        --baseline) baseline=1 ;;
        --) shift; urls+=("$@"); break ;;
        -*) die_usage "unknown option '$1'" ;;
        *) urls+=("$1") ;;
    esac
    shift
done

((${#urls[@]})) || die_usage "no URL given"
for url in "${urls[@]}"; do
    [[ $url =~ ^https?://[^/?#]+(/[^?#]*)?$ ]] ||
        die_usage "'$url' is not an http:// or https:// base URL (without ?query or #fragment)"
done
if ! [[ $binary_size =~ ^[0-9]+$ ]] || ((binary_size < 512)); then
    die_usage "--binary-size needs a number of at least 512"
fi
if ! [[ $timeout =~ ^[0-9]+$ ]] || ((timeout < 1)); then
    die_usage "--timeout needs a whole number of seconds"
fi
command -v curl >/dev/null || die_usage "curl is not installed"

work=$(mktemp -d "${TMPDIR:-/tmp}/lswsgi-smoke.XXXXXX") || die_usage "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

hello_text='Hello from lswsgi!'
fails=0
checks=0
notes=0
width=6
for url in "${urls[@]}"; do
    ((${#url} > width)) && width=${#url}
done

row() { # URL CHECK RESULT DETAIL
    printf '%-*s  %-12s %-6s %s\n' "$width" "$1" "$2" "$3" "$4"
    checks=$((checks + 1))
    [[ $3 == PASS ]] || fails=$((fails + 1))
}

# extra URL CHECK RESULT DETAIL: a check only this lswsgi has to pass; with
# --baseline a failure is a NOTE row, not counted.
extra() {
    if ((baseline)) && [[ $3 != PASS ]]; then
        printf '%-*s  %-12s %-6s %s\n' "$width" "$1" "$2" NOTE "$4"
        notes=$((notes + 1))
    else
        row "$@"
    fi
}

# join BASE PATH: BASE/PATH with exactly one slash between; BASE alone when
# PATH is empty.
join() {
    local path=${2#/}
    if [[ -z $path ]]; then
        echo "$1"
    else
        echo "${1%/}/$path"
    fi
}

# pct_decode STRING: %XX escapes decoded.
pct_decode() {
    local s=${1//\\/\\\\}
    printf '%b' "${s//%/\\x}"
}

# fetch TAG URL [CURL ARGS...]: one request; the response goes to
# $work/TAG.head and $work/TAG.body. Sets status (000 when there was no
# response), elapsed (ms), server (the Server header) and fetch_error.
fetch() {
    local tag=$1 url=$2 w rc
    shift 2
    w=$(curl -sS --max-time "$timeout" ${curl_args[@]+"${curl_args[@]}"} \
        -o "$work/$tag.body" -D "$work/$tag.head" -w '%{http_code} %{time_total}' \
        "$@" "$url" 2>"$work/$tag.err")
    rc=$?
    status=${w%% *}
    elapsed=$(awk -v t="${w#* }" 'BEGIN { printf "%d", t * 1000 }')
    server=$(tr -d '\r' <"$work/$tag.head" 2>/dev/null | awk -F': *' 'tolower($1) == "server" { v = $2 } END { print v }')
    fetch_error=
    touch "$work/$tag.body"
    if ((rc != 0)); then
        fetch_error="curl exit $rc: $(head -n1 "$work/$tag.err" | sed 's/^curl: ([0-9]*) //')"
        status=000
    fi
}

# status_detail TAG: a short description of an unexpected answer.
status_detail() {
    printf 'status %s: %s' "$status" "$(head -c 120 "$work/$1.body" | tr -s '\n\r\t' '   ')"
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

# env_mismatches FILE KEY=VALUE|KEY...: the expectations FILE does not meet
# (a bare KEY only has to be present).
env_mismatches() {
    local file=$1 kv key want got out=()
    shift
    for kv; do
        key=${kv%%=*}
        if ! got=$(env_get "$key" "$file"); then
            out+=("$key missing")
        elif [[ $kv == *=* ]]; then
            want=${kv#*=}
            [[ $got == "$want" ]] || out+=("$key='$got' (expected '$want')")
        fi
    done
    ((${#out[@]} == 0)) || printf '%s; ' "${out[@]}"
}

# echo_check BASE CHECK TAG FILE [CURL ARGS...]: POST FILE to echo (with
# --baseline: echo?sized, which reads CONTENT_LENGTH bytes); the same bytes
# must come back with status 200. Reported with the function $report names
# (row, or extra).
echo_check() {
    local base=$1 check=$2 tag=$3 data=$4 diff url report=${report:-row}
    shift 4
    url=$(join "$base" "$echo_path")
    ((baseline)) && [[ $report == row ]] && url+='?sized'
    fetch "$tag" "$url" --data-binary "@$data" "$@"
    if [[ -n $fetch_error ]]; then
        "$report" "$base" "$check" FAIL "$fetch_error"
    elif [[ $status != 200 ]]; then
        "$report" "$base" "$check" FAIL "$(status_detail "$tag")"
    elif diff=$(body_diff "$data" "$work/$tag.body") && [[ -n $diff ]]; then
        "$report" "$base" "$check" FAIL "$diff"
    else
        "$report" "$base" "$check" PASS "200, $(wc -c <"$data" | tr -d ' ') bytes back, $elapsed ms"
    fi
}

# The bodies the checks send and expect.
printf '%s\n' "$hello_text" >"$work/hello.expected"
printf '%s' 'name=smoke+test&text=h%C3%A9llo+w%C3%B6rld&empty=&n=42' >"$work/form.data"
{
    # Every byte value, CR LF and NUL included, then random bytes, then the
    # byte values again, so truncation at either end shows.
    printf '%b' "$(printf '\\0%03o' {0..255})"
    head -c "$((binary_size - 512))" /dev/urandom
    printf '%b' "$(printf '\\0%03o' {255..0})"
} >"$work/binary.data"

check_url() {
    local base=$1 i tag url scheme path token bad diff codes ok

    # hello
    fetch hello "$(join "$base" "$hello_path")"
    if [[ -n $fetch_error ]]; then
        row "$base" hello FAIL "$fetch_error"
    elif [[ $status != 200 ]]; then
        row "$base" hello FAIL "$(status_detail hello)"
    elif diff=$(body_diff "$work/hello.expected" "$work/hello.body") && [[ -n $diff ]]; then
        row "$base" hello FAIL "$diff: $(head -c 60 "$work/hello.body" | tr -s '\n\r\t' '   ')"
    else
        row "$base" hello PASS "200, $elapsed ms${server:+, server: $server}"
    fi

    # environ
    url=$(join "$base" "$environ_path")
    [[ $url =~ ^(https?)://[^/]+(/.*)?$ ]]
    scheme=${BASH_REMATCH[1]}
    path=${BASH_REMATCH[2]:-/}
    token="t$$x$RANDOM"
    fetch environ "$url?smoke=$token" -H "X-Lswsgi-Smoke: $token"
    if [[ -n $fetch_error ]]; then
        row "$base" environ FAIL "$fetch_error"
    elif [[ $status != 200 ]]; then
        row "$base" environ FAIL "$(status_detail environ)"
    else
        bad=$(env_mismatches "$work/environ.body" REQUEST_METHOD=GET "QUERY_STRING=smoke=$token" \
            "HTTP_X_LSWSGI_SMOKE=$token" "wsgi.url_scheme=$scheme" "wsgi.version=(1, 0)" \
            SCRIPT_NAME SERVER_NAME SERVER_PORT SERVER_PROTOCOL REMOTE_ADDR)
        local script_name path_info path_bad=
        script_name=$(env_get SCRIPT_NAME "$work/environ.body")
        path_info=$(env_get PATH_INFO "$work/environ.body")
        if [[ $script_name$path_info != "$(pct_decode "$path")" ]]; then
            path_bad="SCRIPT_NAME + PATH_INFO = '$script_name' + '$path_info', not the request path '$(pct_decode "$path")'"
        fi
        # PEP 3333's URL reconstruction is its own NOTE row with --baseline
        # (LiteSpeed's lswsgi repeats SCRIPT_NAME as PATH_INFO).
        ((baseline)) || bad=${bad:-$path_bad}
        if [[ -n $bad ]]; then
            row "$base" environ FAIL "$bad"
        else
            row "$base" environ PASS "200, SCRIPT_NAME='$script_name' PATH_INFO='$path_info', $elapsed ms"
        fi
        if ((baseline)); then
            extra "$base" environ-path "$([[ -z $path_bad ]] && echo PASS || echo FAIL)" \
                "${path_bad:-SCRIPT_NAME + PATH_INFO is the request path}"
        fi
    fi

    echo_check "$base" echo-text echo-text "$work/form.data" \
        -H 'Content-Type: application/x-www-form-urlencoded'
    echo_check "$base" echo-binary echo-binary "$work/binary.data" \
        -H 'Content-Type: application/octet-stream'
    if ((baseline)); then
        report=extra echo_check "$base" echo-read-all echo-read-all "$work/form.data" \
            -H 'Content-Type: application/x-www-form-urlencoded'
    fi

    # repeat: curl reuses one connection for the URLs of one call.
    url=$(join "$base" "$hello_path")
    local args=()
    for ((i = 0; i < 20; i++)); do
        args+=(-o /dev/null "$url")
    done
    codes=$(curl -sS --max-time "$((timeout * 2))" ${curl_args[@]+"${curl_args[@]}"} \
        -w '%{http_code} %{num_connects}\n' "${args[@]}" 2>"$work/repeat.err")
    ok=$(grep -c '^200 ' <<<"$codes")
    if ((ok == 20)); then
        row "$base" repeat PASS "20 x 200, $(awk '{ n += $2 } END { print n }' <<<"$codes") new connection(s)"
    else
        row "$base" repeat FAIL "$ok of 20 answered 200 ($(sort <<<"$codes" | uniq -c | awk '{ printf "%s%s x %s", s, $1, $2; s = ", " }'))$(head -n1 "$work/repeat.err" | sed 's/^/; /')"
    fi
}

printf '%-*s  %-12s %-6s %s\n' "$width" URL CHECK RESULT DETAIL
for url in "${urls[@]}"; do
    check_url "$url"
done
echo
if ((fails)); then
    echo "FAILED: $fails of $checks checks"
    echo "See README.md, \"Logging and troubleshooting\", and LiteSpeed's error log."
else
    echo "PASSED: all $checks checks$( ((baseline)) && echo " (--baseline)")"
fi
((notes == 0)) || echo "NOTES: $notes differences from this lswsgi (NOTE rows above; not failures with --baseline)"
((fails == 0))
