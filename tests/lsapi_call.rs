//! Interop tests of the `lsapi-call` tool against an independent LSAPI
//! application (tests/fixtures/mini_lsapi_app.py, plain Python written from
//! the protocol notes alone, answering in big-endian byte order).
//!
//! Every run is bounded: the tool gets `--timeout`, the test kills it after
//! a deadline, and the app exits by itself once the tool is gone.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lsapi-call");
const APP: &str = "python3 tests/fixtures/mini_lsapi_app.py";
const DEADLINE: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The response body: what follows the blank line after the headers.
    fn body(&self) -> &[u8] {
        let at = self
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no end of headers");
        &self.stdout[at + 4..]
    }
}

/// Runs the tool with `args` (feeding `stdin`), killing it at the deadline.
fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lsapi-call");
    // Pipes are fed and drained by threads so a large output cannot stall us.
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let mut err = child.stderr.take().unwrap();
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lsapi-call {args:?} still running after {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    let run = Run {
        code: status.code().expect("lsapi-call killed by a signal"),
        stdout: out.join().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    };
    if run.code != 0 {
        eprintln!("lsapi-call {args:?} exited {}: {}", run.code, run.stderr);
    }
    run
}

fn run(args: &[&str]) -> Run {
    run_with_stdin(args, b"")
}

/// Runs the tool against a freshly spawned mini app.
fn call(args: &[&str]) -> Run {
    let mut all = vec!["--spawn", APP, "--timeout", "20"];
    all.extend_from_slice(args);
    run(&all)
}

fn has_line(r: &Run, line: &str) -> bool {
    r.text().lines().any(|l| l == line)
}

#[track_caller]
fn assert_lines(r: &Run, lines: &[&str]) {
    for l in lines {
        assert!(has_line(r, l), "missing line {l:?} in:\n{}", r.text());
    }
}

/// A file `body` in its own temporary directory, both removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let dir =
            std::env::temp_dir().join(format!("lsapi-call-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("body"), contents).unwrap();
        TempFile(dir)
    }

    fn arg(&self) -> String {
        format!("@{}", self.0.join("body").display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes of every value, NUL and newline included, in a fixed pattern.
fn binary(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

const NATIVE_ORDER: &str = if cfg!(target_endian = "little") {
    "order=little"
} else {
    "order=big"
};

#[test]
fn get_prints_status_line_headers_and_body() {
    let r = call(&["/app/hello?x=1&y=2"]);
    assert_eq!(r.code, 0);
    let text = r.text();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let head = format!(
        "\r\nContent-Type: text/plain\r\nX-Order: {}\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
        &NATIVE_ORDER[6..]
    );
    assert!(text.contains(&head), "{text}");
    assert!(r.body().starts_with(b"conn=1 request=1\n"));
    assert_lines(
        &r,
        &[
            NATIVE_ORDER,
            "method=GET",
            "script_filename=",
            "script_name=/app/hello",
            "query_string=x=1&y=2",
            "env:REQUEST_URI=/app/hello?x=1&y=2",
            "env:REQUEST_METHOD=GET",
            "known:Host=localhost",
            "body_len=0",
        ],
    );
    assert!(!text.contains("env:PATH_INFO"), "no PATH_INFO when empty");
    assert!(text.ends_with("body:\n"));
}

#[test]
fn script_name_and_path_info() {
    let r = call(&[
        "--script",
        "/srv/app.wsgi",
        "--script-name",
        "/app",
        "/app/extra/path?q",
    ]);
    assert_eq!(r.code, 0);
    assert_lines(
        &r,
        &[
            "script_filename=/srv/app.wsgi",
            "script_name=/app",
            "query_string=q",
            "env:SCRIPT_FILENAME=/srv/app.wsgi",
            "env:PATH_INFO=/extra/path",
        ],
    );
    let r = call(&["--script-name", "", "/whole/path"]);
    assert_lines(&r, &["script_name=", "env:PATH_INFO=/whole/path"]);
}

#[test]
fn headers_env_and_method() {
    let r = call(&[
        "-X",
        "PUT",
        "-H",
        "Accept: text/html",
        "-H",
        "X-Thing:  spaced value ",
        "-H",
        "accept: second",
        "-H",
        "Host: example.org",
        "-e",
        "HTTPS=on",
        "-e",
        "SERVER_PORT=443",
        "-e",
        "EMPTY=",
        "/h",
    ]);
    assert_eq!(r.code, 0);
    assert_lines(
        &r,
        &[
            "method=PUT",
            "known:Accept=text/html",
            "known:Host=example.org",
            "unknown:X-Thing=spaced value",
            "unknown:accept=second",
            "env:HTTPS=on",
            "env:SERVER_PORT=443",
            "env:EMPTY=",
        ],
    );
    assert!(
        !r.text().contains("Host=localhost"),
        "Host replaced, not added"
    );
    assert!(!r.text().contains("env:SERVER_PORT=80"), "env overridden");
}

#[test]
fn silent_headers_prints_only_the_body() {
    let r = call(&["-s", "/"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with(b"conn=1 request=1\n"));
    // -i restores the default.
    let r = call(&["-s", "-i", "/"]);
    assert!(r.stdout.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[test]
fn repeated_requests_share_one_connection() {
    let r = call(&["-n", "5", "-s", "/"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with(b"conn=1 request=5\n"), "{}", r.text());
    // After CONN_CLOSE the next request goes on a new connection.
    let r = call(&["-n", "3", "-s", "-v", "/connclose"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with(b"conn=3 request=1\n"), "{}", r.text());
    assert_eq!(r.stderr.matches("reconnecting").count(), 2);
}

#[test]
fn repeated_requests_survive_max_reqs_on_the_real_worker() {
    // The worker's children leave after 3 requests: CONN_CLOSE follows the
    // third RESP_END, and the fourth request must go over a new connection.
    let lswsgi = env!("CARGO_BIN_EXE_lswsgi");
    let r = run(&[
        "--spawn",
        lswsgi,
        "--env-spawn",
        "LSAPI_CHILDREN=2",
        "--env-spawn",
        "LSAPI_MAX_REQS=3",
        "--timeout",
        "20",
        "--script",
        "scripts/apps/hello.wsgi",
        "-n",
        "10",
        "-v",
        "/hello.wsgi",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.text().contains("200"), "{}", r.text());
}

#[test]
fn bodies_from_files() {
    for (name, len) in [("zero", 0), ("one", 1), ("big", 300 << 10)] {
        let data = binary(len);
        let file = TempFile::new(name, &data);
        let arg = file.arg();
        let r = call(&["-d", &arg, "/upload"]);
        assert_eq!(r.code, 0, "{len} bytes");
        assert_lines(
            &r,
            &[
                "method=POST",
                &format!("known:Content-Length={len}"),
                "known:Content-Type=application/x-www-form-urlencoded",
                &format!("body_len={len}"),
            ],
        );
        assert!(r.stdout.ends_with(&data), "{len}-byte body echoed intact");
    }
}

#[test]
fn big_body_repeated_and_big_endian() {
    // 300 KiB is above the client's 256 KiB threaded-send threshold.
    let data = binary(300 << 10);
    let file = TempFile::new("big-repeat", &data);
    let arg = file.arg();
    let r = call(&[
        "--big-endian",
        "-n",
        "3",
        "-d",
        &arg,
        "-H",
        "Content-Type: application/octet-stream",
        "/up",
    ]);
    assert_eq!(r.code, 0);
    assert!(r.body().starts_with(b"conn=1 request=3\n"));
    assert_lines(
        &r,
        &[
            "order=big",
            "known:Content-Type=application/octet-stream",
            &format!("body_len={}", 300 << 10),
        ],
    );
    assert!(r.stdout.ends_with(&data));
}

#[test]
fn big_endian_request() {
    let r = call(&["--big-endian", "-H", "X-A: 1", "-d", "abc", "/be?k=v"]);
    assert_eq!(r.code, 0);
    assert!(r.text().contains("\r\nX-Order: big\r\n"));
    assert_lines(
        &r,
        &[
            "order=big",
            "method=POST",
            "query_string=k=v",
            "unknown:X-A=1",
            "body_len=3",
        ],
    );
    assert!(r.stdout.ends_with(b"body:\nabc"));
}

#[test]
fn body_from_stdin() {
    let all = [
        "--spawn",
        APP,
        "--timeout",
        "20",
        "-X",
        "PATCH",
        "-d",
        "@-",
        "/in",
    ];
    let r = run_with_stdin(&all, b"from stdin\n");
    assert_eq!(r.code, 0);
    assert_lines(&r, &["method=PATCH", "body_len=11"]);
    assert!(r.stdout.ends_with(b"body:\nfrom stdin\n"));
}

#[test]
fn app_stderr_and_verbose_trace() {
    let r = call(&["/stderr"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stderr.contains("mini-app: hello from the app\n"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("RESP_HEADER"), "no trace without -v");

    let r = call(&["-v", "-n", "2", "/stderr"]);
    assert_eq!(r.code, 0);
    assert_eq!(r.stderr.matches("mini-app: hello from the app").count(), 2);
    assert_eq!(
        r.stderr
            .matches("< REQ_RECEIVED STDERR_STREAM RESP_HEADER RESP_STREAM RESP_END\n")
            .count(),
        2,
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("> BEGIN_REQUEST "));
}

#[test]
fn timing_line() {
    let r = call(&["-w", "-s", "/"]);
    assert_eq!(r.code, 0);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("connect "))
        .unwrap();
    assert!(
        line.contains(" ms, first byte ") && line.contains(" ms, total "),
        "{line}"
    );
}

#[test]
fn status_codes_and_fail() {
    let r = call(&["/status/404"]);
    assert_eq!(r.code, 0, "any status is a received response");
    assert!(r.stdout.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
    let r = call(&["/status/299"]);
    assert!(
        r.stdout.starts_with(b"HTTP/1.1 299 \r\n"),
        "unknown code, empty reason"
    );
    let r = call(&["-f", "/status/404"]);
    assert_eq!(r.code, 22);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("404"));
    let r = call(&["--fail", "/status/503"]);
    assert_eq!(r.code, 22);
    let r = call(&["-f", "/status/399"]);
    assert_eq!(r.code, 0);
}

#[test]
fn spawn_environment_and_quoting() {
    let app = "python3 'tests/fixtures/mini_lsapi_app.py'";
    let r = run(&["--spawn", app, "--env-spawn", "MINI_APP_TAG=tag value", "/"]);
    assert_eq!(r.code, 0);
    assert!(
        r.text().contains("\r\nX-App-Tag: tag value\r\n"),
        "{}",
        r.text()
    );
}

#[test]
fn cannot_connect_or_spawn() {
    assert_eq!(run(&["/nonexistent/lsapi.sock", "/"]).code, 3);
    assert_eq!(run(&["uds://nonexistent/lsapi.sock", "/"]).code, 3);
    assert_eq!(run(&["127.0.0.1:1", "/"]).code, 3);
    let r = run(&["--spawn", "/nonexistent/program --flag", "/"]);
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("/nonexistent/program"));
}

#[test]
fn usage_errors() {
    for args in [
        &[][..],
        &["/"],
        &["sock", "/", "extra"],
        &["sock", "no-slash"],
        &["--bogus", "sock", "/"],
        &["sock", "/", "-n", "0"],
        &["sock", "/", "-n", "x"],
        &["sock", "/", "-n"],
        &["sock", "/", "-X"],
        &["sock", "/", "-X", "TWO WORDS"],
        &["sock", "/", "-H", "no colon"],
        &["sock", "/", "-H", ": empty name"],
        &["sock", "/", "-e", "=x"],
        &["sock", "/", "-e", "noequals"],
        &["sock", "/", "--timeout", "0"],
        &["sock", "/", "--timeout", "soon"],
        &["sock", "/", "-d", "a", "-d", "b"],
        &["sock", "/", "--env-spawn", "A=1"],
        &["--spawn", "'unterminated", "/"],
        &["--spawn", "", "/"],
        &["--spawn", APP, "-d", "@/nonexistent/file", "/"],
    ] {
        let r = run(args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(
            r.stderr.starts_with("lsapi-call: "),
            "{args:?}: {}",
            r.stderr
        );
    }
    // A request too large for one packet is refused before connecting.
    let big = format!("X-Big: {}", "x".repeat(70000));
    assert_eq!(run(&["/nonexistent/sock", "-H", &big, "/"]).code, 2);
}

#[test]
fn help_lists_options_and_exit_codes() {
    for flag in ["-h", "--help"] {
        let r = run(&[flag]);
        assert_eq!(r.code, 0);
        let text = r.text();
        for word in [
            "--spawn",
            "--env-spawn",
            "-X",
            "-H",
            "-d",
            "-e",
            "--script",
            "--script-name",
            "--big-endian",
            "-n",
            "-i",
            "-s",
            "-v",
            "-w",
            "-f",
            "--timeout",
            "Exit codes",
        ] {
            assert!(text.contains(word), "help lacks {word}");
        }
        for code in ["0 ", "2 ", "3 ", "4 ", "5 ", "22 "] {
            assert!(
                text.contains(&format!("\n  {code}")),
                "help lacks exit code {code}"
            );
        }
    }
}

#[test]
fn connection_closed_mid_response_is_a_protocol_error() {
    let r = call(&["/close"]);
    assert_eq!(r.code, 4);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("closed before RESP_END"), "{}", r.stderr);
    let r = call(&["/garbage"]);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("magic"), "{}", r.stderr);
}

#[test]
fn no_answer_is_a_timeout() {
    let started = Instant::now();
    let r = run(&["--spawn", APP, "--timeout", "0.5", "/sleep/10"]);
    assert_eq!(r.code, 5);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "gave up on time"
    );
}

#[test]
fn split_words_via_spawn_quoting() {
    // Double quotes with an escaped quote inside reach the program intact:
    // the app ignores its arguments, so a successful run shows the split
    // produced a runnable command line.
    let app = r#"python3 "tests/fixtures/mini_lsapi_app.py" "ignored \"arg\"" ''"#;
    assert_eq!(run(&["--spawn", app, "-s", "/"]).code, 0);
}
