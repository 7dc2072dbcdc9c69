//! Worker mode end to end: the real binary on a real socket, driven from the
//! web-server side, running real WSGI applications (tests/apps).

mod common;

use common::*;
use lswsgi::client::{Client, Ending};
use lswsgi::lsapi::build::RequestSpec;
use lswsgi::lsapi::ByteOrder;
use std::io::{Read, Write};
use std::time::Duration;

fn stats(c: &mut Client) -> (u64, u64) {
    let r = call_ok(c, &suite("GET", "/stats"), b"");
    let t = r.text();
    let num = |k: &str| -> u64 {
        let i = t.find(&format!("\"{k}\": ")).unwrap() + k.len() + 4;
        t[i..]
            .split(|ch: char| !ch.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("close"), num("requests"))
}

#[test]
fn hello_sample_and_packet_sequence() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &get(
            "/hello.wsgi",
            &common::app("../../scripts/apps/hello.wsgi"),
            "/hello.wsgi",
        ),
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from lswsgi!\n");
    assert_eq!(r.header("Content-Length"), Some("19"));
    // REQ_RECEIVED, RESP_HEADER, RESP_STREAM, RESP_END.
    assert_eq!(r.packets, vec![7, 3, 4, 5]);
}

#[test]
fn every_read_style_on_every_body_size() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    // Bodies with newlines in them so the line readers have work to do.
    let sizes = [0usize, 1, 64 << 10, 50 << 20];
    for &size in &sizes {
        let mut body = pattern(size, size as u64 + 7);
        for (i, b) in body.iter_mut().enumerate() {
            if i % 97 == 96 {
                *b = b'\n';
            }
        }
        let digest = sha256_hex(&body);
        let styles: &[&str] = if size > (1 << 20) {
            &["all", "n", "line", "iter"]
        } else {
            &["all", "none", "n", "line", "linen", "lines", "iter"]
        };
        for style in styles {
            let mut spec = suite("POST", &format!("/read?style={style}&chunk=1000"));
            spec.body(size as u64);
            let r = call_ok(&mut c, &spec, &body);
            assert_eq!(r.status, 200, "style {style} size {size}: {}", r.text());
            assert_eq!(
                r.text(),
                format!("{size} {digest} 0"),
                "style {style} size {size}"
            );
        }
    }
}

#[test]
fn large_upload_keeps_memory_bounded() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    call_ok(&mut c, &suite("GET", "/pid"), b"");
    let before = status_kb(w.pid(), "VmRSS");
    let body = pattern(50 << 20, 3);
    // Streamed through read(65536), then a body the app never reads (drained).
    for path in ["/hash", "/ignore"] {
        let mut spec = suite("POST", path);
        spec.body(body.len() as u64);
        let r = call_ok(&mut c, &spec, &body);
        assert_eq!(r.status, 200);
    }
    let after = status_kb(w.pid(), "VmHWM");
    assert!(
        after < before + 8 * 1024,
        "peak RSS grew from {before} kB to {after} kB for a 50 MiB body"
    );
    // The connection is still in step after the drained body.
    assert_eq!(call_ok(&mut c, &suite("GET", "/x"), b"").text(), "path=/x");
}

#[test]
fn body_boundaries_are_exact() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    // Asking for more than the body gives exactly the body.
    let mut spec = suite("POST", "/overread");
    spec.body(11);
    assert_eq!(call_ok(&mut c, &spec, b"hello world").text(), "hello world");
    // A partly read body is drained before the next request.
    let mut spec = suite("POST", "/partial?n=3");
    spec.body(5000);
    assert_eq!(call_ok(&mut c, &spec, &vec![b'q'; 5000]).text(), "qqq");
    let mut spec = suite("POST", "/echo");
    spec.body(4);
    assert_eq!(call_ok(&mut c, &spec, b"next").text(), "next");
    // A body sent slowly in pieces still arrives whole.
    let mut spec = suite("POST", "/echo");
    let body = pattern(100_000, 9);
    spec.body(body.len() as u64);
    let r = c
        .call_in_pieces(&spec, &body, 7, Duration::from_millis(20))
        .unwrap();
    assert_eq!(r.body, body);
}

#[test]
fn hundred_requests_on_one_connection() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    for i in 0..100 {
        let r = call_ok(&mut c, &suite("GET", &format!("/n{i}")), b"");
        assert_eq!(r.text(), format!("path=/n{i}"));
    }
    let (_, requests) = stats(&mut c);
    assert_eq!(requests, 101);
}

#[test]
fn generator_and_sequence_responses() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &suite("GET", "/gen?n=4&size=3"), b"");
    assert_eq!(r.text(), "AAABBBCCCDDD");
    // Each block of a generator is its own RESP_STREAM, sent as produced.
    assert_eq!(r.packets, vec![7, 3, 4, 4, 4, 4, 5]);
    let r = call_ok(&mut c, &suite("GET", "/many"), b"");
    assert_eq!(r.body.len(), 3 + 20000);
    // Empty blocks are skipped; the 20000-byte block is split at 16384.
    assert_eq!(r.packets, vec![7, 3, 4, 4, 4, 4, 5]);
    let r = call_ok(&mut c, &suite("GET", "/empty"), b"");
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = call_ok(&mut c, &suite("GET", "/head_only"), b"");
    assert_eq!((r.status, r.header("X-Only")), (200, Some("head")));
    assert_eq!(r.packets, vec![7, 3, 5]);
}

#[test]
fn ten_mib_response_is_split_into_16k_packets() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let size = 10 << 20;
    let r = call_ok(&mut c, &suite("GET", &format!("/big?size={size}")), b"");
    assert_eq!(r.body.len(), size);
    let expect: Vec<u8> = (0..size)
        .map(|i| {
            if i < size / 251 * 251 {
                (i % 251) as u8
            } else {
                b'x'
            }
        })
        .collect();
    assert!(r.body == expect, "10 MiB body differs");
    let streams = r.packets.iter().filter(|&&t| t == 4).count();
    assert_eq!(streams, size / 16384);
}

#[test]
fn file_wrapper_is_byte_exact() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let dir = scratch("fw");
    let data = pattern(1_000_003, 11);
    let path = dir.join("data.bin");
    std::fs::write(&path, &data).unwrap();
    for pos in [0usize, 1, 16384, 999_999] {
        let r = call_ok(
            &mut c,
            &suite("GET", &format!("/file?path={}&pos={pos}", path.display())),
            b"",
        );
        assert_eq!(r.status, 200);
        assert!(r.body == data[pos..], "file from {pos} differs");
    }
    // A file-like without a descriptor is iterated instead, and closed.
    let (closes, _) = stats(&mut c);
    let r = call_ok(&mut c, &suite("GET", "/filelike"), b"");
    assert_eq!(r.body, b"0123456789".repeat(5000));
    assert_eq!(stats(&mut c).0, closes + 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn close_is_called_on_success_exception_and_disconnect() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let (c0, _) = stats(&mut c);
    assert_eq!(
        call_ok(&mut c, &suite("GET", "/closing"), b"").text(),
        "onetwo"
    );
    assert_eq!(stats(&mut c).0, c0 + 1, "close() after success");

    // Exception after the headers went out: the response is abandoned and
    // the connection dropped (no RESP_END), close() still runs.
    let r = c.call(&suite("GET", "/raise_after"), b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "first block");
    assert_eq!(r.ending, Ending::Eof);
    assert!(
        r.stderr.windows(7).any(|w| w == b"failure"),
        "traceback sent to the error log"
    );
    let mut c = w.connect();
    assert_eq!(stats(&mut c).0, c0 + 2, "close() after an exception");

    // Exception in the iterator before any non-empty block: a clean 500.
    let r = call_ok(&mut c, &suite("GET", "/raise_in_iter"), b"");
    assert_eq!(r.status, 500);
    assert_eq!(stats(&mut c).0, c0 + 3);

    // The server disconnects in the middle of a 64 MiB response. (A
    // Worker-mode process serves one connection at a time: release ours.)
    drop(c);
    let mut d = w.connect();
    let packet = suite("GET", "/closing_slow?size=1048576&n=64")
        .encode()
        .unwrap();
    d.stream().write_all(&packet).unwrap();
    let mut first = [0u8; 65536];
    d.stream().read_exact(&mut first).unwrap();
    drop(d);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = w.connect();
    assert_eq!(
        stats(&mut c).0,
        c0 + 4,
        "close() after the server went away"
    );
}

#[test]
fn application_errors_become_500_and_the_worker_keeps_serving() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let cases = [
        ("/raise_before", "failure before headers"),
        ("/bad_status?s=OK", "invalid status"),
        ("/bad_status?s=2000%20OK", "invalid status"),
        ("/bad_status?s=200", "invalid status"),
        ("/status_bytes", "invalid status"),
        ("/bad_header_type", "must be latin-1 str"),
        ("/bad_header_crlf", "0x0d"),
        ("/bad_header_name", "0x20"),
        ("/bad_header_nul", "0x00"),
        ("/many_headers?n=1001", "more than 1000"),
        ("/huge_header", "65535"),
        ("/no_start", "without calling start_response"),
        ("/str_body", "must be bytes"),
        ("/twice", "second time"),
    ];
    for (path, needle) in cases {
        let r = call_ok(&mut c, &suite("GET", path), b"");
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        assert!(r.text().contains("Internal Server Error"));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains(needle),
            "{path}: error log {err:?} lacks {needle:?}"
        );
        // Nothing the application tried to send leaks into the response.
        assert!(r.header("X-Evil").is_none() && r.header("X-Nul").is_none());
    }
    // 1000 headers are still fine.
    let r = call_ok(&mut c, &suite("GET", "/many_headers?n=1000"), b"");
    assert_eq!((r.status, r.headers.len()), (200, 1000));
    // Missing script, missing or non-callable callable, broken import.
    let mut spec = get("/nope.wsgi", "/nonexistent/nope.wsgi", "/nope.wsgi");
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.stderr).contains("/nonexistent/nope.wsgi"));
    spec = suite("GET", "/");
    spec.set_env("WSGICallableObject", "missing");
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.stderr).contains("\"missing\" not found"));
    spec.set_env("WSGICallableObject", "not_callable");
    assert_eq!(call_ok(&mut c, &spec, b"").status, 500);
    let r = call_ok(
        &mut c,
        &get("/b", &common::app("broken_import.wsgi"), "/b"),
        b"",
    );
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.stderr).contains("broken on purpose"));
    // Still serving on the same connection.
    assert_eq!(
        call_ok(&mut c, &suite("GET", "/fine"), b"").text(),
        "path=/fine"
    );
}

#[test]
fn start_response_exc_info_and_write() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &suite("GET", "/exc_info"), b"");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("X-Second"), Some("1"));
    assert!(r.header("X-First").is_none());
    assert_eq!(r.text(), "replaced");
    // exc_info after the headers went out re-raises: the response is abandoned.
    let r = c.call(&suite("GET", "/exc_info_late"), b"").unwrap();
    assert_eq!(
        (r.status, r.text().as_str(), r.ending),
        (200, "sent", Ending::Eof)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("late boom"));
    let mut c = w.connect();
    // sys.exc_info() from outside an except block counts as no error.
    let r = call_ok(&mut c, &suite("GET", "/exc_info_none"), b"");
    assert_eq!((r.status, r.header("X-Second")), (202, Some("1")));
    // ... but after the headers went out it cannot be re-raised: an error.
    let r = c.call(&suite("GET", "/exc_info_none_late"), b"").unwrap();
    assert_eq!((r.text().as_str(), r.ending), ("sent", Ending::Eof));
    assert!(String::from_utf8_lossy(&r.stderr).contains("after the headers were sent"));
    let mut c = w.connect();
    let r = call_ok(&mut c, &suite("GET", "/write"), b"");
    assert_eq!((r.status, r.text().as_str()), (201, "hello world!"));
}

#[test]
fn environ_follows_pep3333_and_the_request() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let mut spec = RequestSpec::new(
        "POST",
        "/app/suite.wsgi/a%20b/c?x=1&y=%C3%A9",
        &common::app("suite.wsgi"),
        "/app/suite.wsgi",
    );
    spec.set_env("PATH_INFO", "/environ");
    spec.set_env("HTTPS", "on");
    spec.set_env("LSAPI_STDERR_LOG", "/tmp/should-not-leak");
    spec.set_env("X-LSCACHE", "on");
    spec.header("Content-Type", "text/plain")
        .header("X-Forwarded-For", "1.1.1.1")
        .header("X-Forwarded-For", "2.2.2.2")
        .header("Cookie", "a=1")
        .header("Cookie", "b=2")
        .header("X-Multi", "one")
        .header("x-multi", "two")
        .header("X_Under_Score", "dropped")
        .header("User-Agent", "caf\u{e9}");
    spec.body(3);
    let r = call_ok(&mut c, &spec, b"abc");
    let env = r.text();
    let has = |kv: &str| assert!(env.contains(kv), "environ lacks {kv}: {env}");
    has("\"SCRIPT_NAME\": \"/app/suite.wsgi\"");
    has("\"PATH_INFO\": \"/environ\"");
    has("\"QUERY_STRING\": \"x=1&y=%C3%A9\"");
    has("\"REQUEST_METHOD\": \"POST\"");
    has("\"CONTENT_TYPE\": \"text/plain\"");
    has("\"CONTENT_LENGTH\": \"3\"");
    has("\"HTTP_X_FORWARDED_FOR\": \"1.1.1.1, 2.2.2.2\"");
    has("\"HTTP_COOKIE\": \"a=1; b=2\"");
    has("\"HTTP_X_MULTI\": \"one, two\"");
    has("\"HTTP_HOST\": \"localhost\"");
    // UTF-8 on the wire arrives as latin-1 decoded native strings.
    has("\"HTTP_USER_AGENT\": \"caf\\u00c3\\u00a9\"");
    has("\"wsgi.url_scheme\": \"https\"");
    has("\"wsgi.version\": [1, 0]");
    has("\"wsgi.multithread\": false");
    has("\"wsgi.multiprocess\": false");
    has("\"wsgi.run_once\": false");
    has("\"SERVER_NAME\": \"localhost\"");
    has("\"SERVER_PORT\": \"80\"");
    has("\"GATEWAY_INTERFACE\": \"CGI/1.1\"");
    has("\"X-LSCACHE\": \"on\"");
    assert!(!env.contains("LSAPI_"), "LSAPI_ keys leak: {env}");
    assert!(!env.contains("UNDER"), "underscore header leaked: {env}");
    assert!(!env.contains("HTTP_CONTENT_"), "{env}");

    // Without PATH_INFO the script is the whole path; a root mount is "".
    let r = call_ok(&mut c, &suite("GET", "?z=1"), b"");
    assert_eq!(r.text(), "path=");
}

#[test]
fn request_path_rebuilds_with_wsgiref() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let dir = scratch("uri");
    let script = dir.join("uri.wsgi");
    std::fs::write(
        &script,
        "from wsgiref.util import request_uri, application_uri\n\
         def application(environ, start_response):\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [('%s|%s' % (request_uri(environ), application_uri(environ))).encode()]\n",
    )
    .unwrap();
    let s = script.to_str().unwrap();
    let r = call_ok(
        &mut c,
        &get("/mnt/uri.wsgi/p/q?r=1", s, "/mnt/uri.wsgi"),
        b"",
    );
    assert_eq!(
        r.text(),
        "http://localhost/mnt/uri.wsgi/p/q?r=1|http://localhost/mnt/uri.wsgi"
    );
    // A directory alias mounted at the root: SCRIPT_NAME "" (not "/").
    let mut spec = get("/p", s, "/");
    spec.set_env("PATH_INFO", "/p");
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.text(), "http://localhost/p|http://localhost/");
}

#[test]
fn big_endian_requests_are_served() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let mut spec = suite("POST", "/echo");
    spec.order = ByteOrder::Big;
    spec.header("X-Some", "thing");
    spec.body(6);
    let r = call_ok(&mut c, &spec, b"bigend");
    assert_eq!(r.text(), "bigend");
    let mut spec = suite("GET", "/environ");
    spec.order = ByteOrder::Big;
    spec.header("Accept", "text/html");
    let r = call_ok(&mut c, &spec, b"");
    assert!(r.text().contains("\"HTTP_ACCEPT\": \"text/html\""));
}

#[test]
fn callable_selection_per_request() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let mut spec = suite("GET", "/x");
    spec.set_env("WSGICallableObject", "other_app");
    assert_eq!(call_ok(&mut c, &spec, b"").text(), "other callable");
    spec.set_env("WSGICallableObject", "application");
    assert_eq!(call_ok(&mut c, &spec, b"").text(), "path=/x");
}

#[test]
fn errors_stream_stdout_and_stdin_are_isolated() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &suite("GET", "/errors"), b"");
    assert_eq!(r.text(), "logged");
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "logged through wsgi.errors\nline two\n"
    );
    // print() to stdout must never reach the protocol stream.
    let r = call_ok(&mut c, &suite("GET", "/print"), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "printed"));
    assert!(w.wait_log("stray print to stdout", Duration::from_secs(5)));
    assert!(w.log_text().contains("stray print to stderr"));
    // sys.stdin is /dev/null, not the LSAPI socket.
    let r = call_ok(&mut c, &suite("GET", "/stdin"), b"");
    assert_eq!(r.text(), "stdin:0");
    assert_eq!(
        call_ok(&mut c, &suite("GET", "/ok"), b"").text(),
        "path=/ok"
    );
}

#[test]
fn errors_go_to_the_log_file_with_lsapi_stderr_log() {
    let dir = scratch("errlog");
    let log = dir.join("app.log");
    let w = Worker::start(&[], &[("LSAPI_STDERR_LOG", log.to_str().unwrap())]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &suite("GET", "/errors"), b"");
    assert!(r.stderr.is_empty());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("logged through wsgi.errors"), "{text}");
}

#[test]
fn wsgiref_validator_passes() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let script = common::app("validated.wsgi");
    for (path, body, expect) in [
        ("/read", b"some body".as_slice(), "some body"),
        ("/lines", b"a\nb\nc".as_slice(), "3 lines"),
        ("/iter", b"x\ny\n".as_slice(), "x\ny\n"),
        ("/empty", b"".as_slice(), ""),
    ] {
        let mut spec = RequestSpec::new("POST", &format!("/v.wsgi{path}"), &script, "/v.wsgi");
        spec.body(body.len() as u64);
        let r = call_ok(&mut c, &spec, body);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, expect),
            "{path}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

#[test]
fn preload_with_dash_m() {
    let w = Worker::start(&["-m", &common::app("preload.py")], &[]);
    let mut c = w.connect();
    // Any SCRIPT_FILENAME: the preloaded application serves every request,
    // mounted at the root.
    let r = call_ok(&mut c, &get("/some/path", "", "/some/path"), b"");
    assert_eq!(r.text(), format!("preloaded {} |/some/path", w.pid()));
    let w = Worker::start(&["-m", &format!("{}:app", common::app("preload.py"))], &[]);
    let mut c = w.connect();
    assert_eq!(
        call_ok(&mut c, &get("/", "", "/"), b"").text(),
        "named callable"
    );
    // A dotted module name with WSGI_ROOT as the working directory.
    let w = Worker::start(
        &["-m", "preload"],
        &[("WSGI_ROOT", &common::app("")), ("PYTHONPATH", ".")],
    );
    let mut c = w.connect();
    assert!(call_ok(&mut c, &get("/", "", "/"), b"")
        .text()
        .starts_with("preloaded"));
}

#[test]
fn listens_with_dash_a_and_uds() {
    let dir = scratch("listen");
    let sock = dir.join("w.sock");
    for addr in [
        sock.to_str().unwrap().to_string(),
        format!("uds:/{}", sock.to_str().unwrap()),
    ] {
        let mut child = std::process::Command::new(LSWSGI)
            .args(["-a", &addr])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut client = None;
        for _ in 0..500 {
            if let Ok(c) = Client::connect(sock.to_str().unwrap()) {
                client = Some(c);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut c = client.expect("connect to -a socket");
        assert_eq!(call_ok(&mut c, &suite("GET", "/a"), b"").text(), "path=/a");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // TCP on a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(LSWSGI)
        .args(["-a", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut client = None;
    for _ in 0..500 {
        if let Ok(c) = Client::connect(&format!("127.0.0.1:{port}")) {
            client = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = client.expect("connect to TCP");
    assert_eq!(
        call_ok(&mut c, &suite("GET", "/tcp"), b"").text(),
        "path=/tcp"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn connected_socket_on_fd0_is_served_then_the_worker_exits() {
    use std::os::unix::net::UnixStream;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = std::process::Command::new(LSWSGI)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut c = Client::from_stream(lswsgi::client::Stream::Unix(ours));
    for i in 0..3 {
        let r = call_ok(&mut c, &suite("GET", &format!("/s{i}")), b"");
        assert_eq!(r.text(), format!("path=/s{i}"));
    }
    drop(c);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn command_line() {
    let out = std::process::Command::new(LSWSGI)
        .arg("-v")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with(&format!("lswsgi version {}", env!("CARGO_PKG_VERSION"))));
    assert!(text.contains("Python 3."));
    let out = std::process::Command::new(LSWSGI)
        .arg("-h")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-m FILE[:CALLABLE]"));
    for bad in [
        vec!["-x"],
        vec!["-m"],
        vec!["-a", "nonsense"],
        vec!["extra"],
    ] {
        let out = std::process::Command::new(LSWSGI)
            .args(&bad)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!out.stderr.is_empty(), "{bad:?} explains itself");
    }
    // Not started by LiteSpeed (fd 0 is not a socket): a clear message.
    let out = std::process::Command::new(LSWSGI)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
}

#[test]
fn lsapi_variables_are_scrubbed_and_the_worker_stops_on_signal() {
    let dir = scratch("scrub");
    let script = dir.join("env.wsgi");
    std::fs::write(
        &script,
        "import os\n\
         def application(environ, start_response):\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [','.join(sorted(k for k in os.environ if k.startswith('LSAPI'))).encode()]\n",
    )
    .unwrap();
    let mut w = Worker::start(&[], &[("LSAPI_MAX_REQS", "1000"), ("LSAPI_SOMETHING", "x")]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &get("/e", script.to_str().unwrap(), "/e"), b"");
    assert_eq!(r.text(), "");
    drop(c);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(w.pid() as i32, libc::SIGTERM) };
    assert!(w.wait_log("stopping on signal 15", Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(10), || !w.alive()));
}

#[test]
fn max_reqs_ends_the_connection_with_conn_close() {
    let mut w = Worker::start(&[], &[("LSAPI_MAX_REQS", "3")]);
    let mut c = w.connect();
    for _ in 0..3 {
        call_ok(&mut c, &suite("GET", "/m"), b"");
    }
    // The next read sees CONN_CLOSE, then the end of the stream.
    let r = c.read_response().unwrap();
    assert_eq!(r.ending, Ending::Close);
    assert!(w.wait_log("exiting after 3 requests", Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(10), || !w.alive()));
}

/// The build Python's prefix, from `lswsgi -v` (`Python X.Y (/prefix/bin/python)`).
fn build_prefix() -> String {
    let out = std::process::Command::new(LSWSGI)
        .arg("-v")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let exe = text.lines().nth(1).unwrap().split('(').nth(1).unwrap();
    let exe = std::path::Path::new(exe.trim_end_matches(')'));
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_build_pythons_stdlib_is_used_whatever_is_installed_beside_it() {
    use std::os::unix::process::CommandExt;
    let dir = scratch("stdlib");
    let script = dir.join("where.wsgi");
    std::fs::write(
        &script,
        "import os, sys, hashlib\n\
         def application(environ, start_response):\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [('%s|%s|%s' % (sys.base_prefix, os.__file__, hashlib.sha256(b'x').hexdigest()[:8])).encode()]\n",
    )
    .unwrap();
    let prefix = build_prefix();
    let version = {
        let out = std::process::Command::new(LSWSGI)
            .arg("-v")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    // The worker installed as OTHER/bin/lswsgi where OTHER holds another
    // Python's standard library (as /usr/local does on many hosts), started
    // by a bare name found on PATH: a default start-up would take OTHER's
    // stdlib (here a poisoned one) with the build's libpython.
    let other = dir.join("other");
    let stdlib = other.join(format!("lib/python{version}"));
    std::fs::create_dir_all(&stdlib).unwrap();
    std::fs::create_dir_all(other.join("bin")).unwrap();
    std::fs::write(stdlib.join("os.py"), "raise ImportError('wrong stdlib')\n").unwrap();
    let installed = other.join("bin/lswsgi");
    std::fs::copy(LSWSGI, &installed).unwrap();
    let path = format!("{}:/usr/bin:/bin", other.join("bin").display());
    for (arg0, env) in [
        ("lswsgi", vec![("PATH", path.as_str())]),
        ("python3", vec![("PATH", "/usr/bin:/bin")]),
        (
            "lswsgi",
            vec![("PATH", path.as_str()), ("PYTHONHOME", prefix.as_str())],
        ),
    ] {
        let sock = dir.join("w.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut cmd = std::process::Command::new(&installed);
        cmd.arg0(arg0)
            .env_clear()
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                listener,
            )))
            .stderr(std::process::Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut c = Client::connect(sock.to_str().unwrap()).unwrap();
        c.stream()
            .set_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let r = c.call(&get("/w", script.to_str().unwrap(), "/w"), b"");
        let text = r.map(|r| r.text()).unwrap_or_default();
        let parts: Vec<&str> = text.split('|').collect();
        assert_eq!(parts[0], prefix, "{arg0} {env:?}: {text:?}");
        assert!(
            parts[1].starts_with(&prefix),
            "{arg0}: stdlib from {}",
            parts[1]
        );
        assert_eq!(parts[2], "2d711642");
        drop(c);
        let _ = child.kill();
        child.wait().unwrap();
    }
}

#[test]
fn a_virtualenv_of_another_python_gets_a_clear_500_at_once_not_a_restart_loop() {
    let (python, other) = other_python();
    let own = embedded_version();
    let dir = scratch("venvver");
    let (bin, app) = venv_and_app(&python, &dir);
    // No build for `other` beside this worker (target/debug has none).
    let mut w = Worker::start(&[], &[("LS_PYTHONBIN", bin.to_str().unwrap())]);
    let mut c = w.connect();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let r = call_ok(&mut c, &get("/w", &app, "/w"), b"");
        let took = t.elapsed();
        assert_eq!(r.status, 500, "{} {}", r.text(), w.log_text());
        assert!(took < Duration::from_secs(1), "the 500 took {took:?}");
        let page = r.text();
        assert!(
            page.contains(&format!("made with Python {other}"))
                && page.contains(&format!("with Python {own}")),
            "{page}"
        );
        assert!(
            !page.contains(dir.to_str().unwrap()),
            "the page names a path: {page}"
        );
    }
    assert!(w.alive(), "the worker exited: {}", w.log_text());
    // Logged at start-up and then at most once a minute, not per request.
    let log = w.log_text();
    let want = format!("is a Python {other} virtualenv");
    assert_eq!(log.matches(&want).count(), 1, "{log}");
    assert!(log.contains(&format!("embeds Python {own}")), "{log}");
}

#[test]
fn a_virtualenv_of_another_python_is_served_by_the_build_installed_beside() {
    let (python, other) = other_python();
    let dir = scratch("dispatch");
    let (bin, app) = venv_and_app(&python, &dir);
    let build = other_build(&python, &other);
    // The host's layout: the configured binPath and, beside it, the build
    // for the other Python under the name lswsgiX.Y (then lswsgiXY).
    let bin_dir = dir.join("fcgi-bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let worker = bin_dir.join("lswsgi");
    std::fs::copy(LSWSGI, &worker).unwrap();
    let nodot = other.replace('.', "");
    for name in [format!("lswsgi{other}"), format!("lswsgi{nodot}")] {
        let beside = bin_dir.join(&name);
        std::fs::copy(&build, &beside).unwrap();
        let w = Worker::start_argv(
            &[worker.to_str().unwrap()],
            &[("LS_PYTHONBIN", bin.to_str().unwrap())],
        );
        let mut c = w.connect();
        let r = call_ok(&mut c, &get("/w", &app, "/w"), b"");
        assert_eq!(r.status, 200, "{} {}", r.text(), w.log_text());
        let venv = bin.parent().unwrap().parent().unwrap();
        assert_eq!(
            r.text(),
            format!("{other}|{}", venv.display()),
            "{}",
            w.log_text()
        );
        // The same process, now running the other build.
        let exe = std::fs::read_link(format!("/proc/{}/exe", w.pid())).unwrap();
        assert_eq!(exe, beside, "{}", w.log_text());
        assert!(
            w.log_text().contains(&format!(
                "serving a Python {other} virtualenv: started by {}",
                worker.display()
            )),
            "{}",
            w.log_text()
        );
        drop(c);
        drop(w);
        std::fs::remove_file(&beside).unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// The worker's signals stay its own on every Python version: Python installs
/// no handlers of its own (PyConfig.install_signal_handlers = 0, so SIGINT is
/// not KeyboardInterrupt), an application's attempt to take SIGTERM is logged
/// and ignored in the main interpreter and in an application group, other
/// signals stay the application's, and SIGTERM still stops the worker.
#[test]
fn signals_stay_the_workers_in_every_interpreter() {
    let dir = scratch("signals");
    let script = dir.join("sig.wsgi");
    std::fs::write(
        &script,
        "import signal\n\
         def application(environ, start_response):\n\
         \x20   before = signal.getsignal(signal.SIGINT)\n\
         \x20   signal.signal(signal.SIGTERM, lambda *a: None)\n\
         \x20   try:\n\
         \x20       signal.signal(signal.SIGUSR2, lambda *a: None)\n\
         \x20       usr2 = 'set' if callable(signal.getsignal(signal.SIGUSR2)) else 'not set'\n\
         \x20   except ValueError:\n\
         \x20       usr2 = 'ValueError'\n\
         \x20   term = signal.getsignal(signal.SIGTERM)\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [('%s|%s|%s' % (before, callable(term), usr2)).encode()]\n",
    )
    .unwrap();
    let mut w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let spec = get("/s", script.to_str().unwrap(), "/s");
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.status, 200, "{}", w.log_text());
    // Main interpreter: SIGINT is the worker's C handler (None to Python, not
    // default_int_handler), SIGTERM not replaced, SIGUSR2 the application's.
    assert_eq!(r.text(), "None|False|set", "{}", w.log_text());
    let mut sub = spec.clone();
    sub.set_env("WSGIApplicationGroup", "sig");
    let r = call_ok(&mut c, &sub, b"");
    assert_eq!(r.status, 200, "{}", w.log_text());
    // A sub-interpreter may not set handlers at all (CPython's rule).
    assert_eq!(r.text(), "None|False|ValueError", "{}", w.log_text());
    let log = w.log_text();
    let ignored = "application tried to set a handler for signal 15; ignored";
    assert_eq!(log.matches(ignored).count(), 2, "{log}");
    drop(c);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(w.pid() as i32, libc::SIGTERM) };
    assert!(w.wait_log("stopping on signal 15", Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(10), || !w.alive()));
}

/// A script that fails while it loads, one frame below its module code.
const FAILS_TO_LOAD: &str = "def setup():
    raise RuntimeError('<b>broken</b> settings')
setup()
def application(environ, start_response):
    start_response('200 OK', [])
    return [b'never']
";

#[test]
fn the_500_page_says_where_to_look_and_development_shows_the_traceback() {
    let dir = scratch("errpage");
    let script = dir.join("broken.wsgi");
    std::fs::write(&script, FAILS_TO_LOAD).unwrap();
    let spec = get("/b", script.to_str().unwrap(), "/b");
    // Behind a plain LSAPI app the traceback goes to the server's error log
    // (the STDERR stream); the page says so and shows nothing of it.
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.status, 500);
    let page = r.text();
    assert!(page.contains("in the web server's error log"), "{page}");
    assert!(!page.contains("broken"), "{page}");
    let trace = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        trace.contains("RuntimeError: <b>broken</b> settings"),
        "{trace}"
    );
    assert!(trace.contains("in setup"), "{trace}");
    assert!(!trace.contains("load_script"), "our own frame: {trace}");
    drop(c);
    drop(w);
    // An App Server context: the traceback is in <approot>/stderr.log; the
    // page names the file, not its path; WSGI_ENV=development shows the
    // traceback (escaped), without our frames.
    let log = dir.join("stderr.log");
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_STDERR_LOG", log.to_str().unwrap()),
            ("WSGI_ENV", "development"),
        ],
    );
    let mut c = w.connect();
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.status, 500);
    let page = r.text();
    assert!(
        page.contains("in the application's log file stderr.log"),
        "{page}"
    );
    assert!(
        page.contains("RuntimeError: &lt;b&gt;broken&lt;/b&gt; settings"),
        "{page}"
    );
    assert!(page.contains("in setup"), "{page}");
    assert!(!page.contains("load_script"), "our own frame: {page}");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("RuntimeError: <b>broken</b> settings"))),
        "not in stderr.log"
    );
    drop(c);
    drop(w);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_symlinked_stderr_log_is_followed_when_not_root() {
    assert_eq!(euid(), 0, "run as root (as CI does)");
    // A site owner's application root whose stderr.log points into their
    // own logs directory; the worker runs as that owner (no privilege
    // boundary: the link gains nobody anything).
    let dir = scratch("loglink");
    let logs = dir.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let real = logs.join("app.log");
    let link = dir.join("stderr.log");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let script = dir.join("hello.wsgi");
    std::fs::write(
        &script,
        "import sys\n\
         def application(environ, start_response):\n\
         \x20   print('hello from the app', file=sys.stderr)\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [b'ok']\n",
    )
    .unwrap();
    let st = std::process::Command::new("chown")
        .args(["-R", "4321:4322"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let w = Worker::start_via(
        &["setpriv", "--reuid=4321", "--regid=4322", "--clear-groups"],
        &[],
        &[("LSAPI_STDERR_LOG", link.to_str().unwrap())],
    );
    let mut c = w.connect();
    let r = call_ok(&mut c, &get("/h", script.to_str().unwrap(), "/h"), b"");
    assert_eq!(r.status, 200, "{}", w.log_text());
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&real)
            .is_ok_and(|t| t.contains("hello from the app"))),
        "the owner's log stayed empty; worker log: {}",
        w.log_text()
    );
    assert!(!w.log_text().contains("symbolic link"), "{}", w.log_text());
    drop(c);
    drop(w);
    std::fs::remove_dir_all(dir).unwrap();
}
