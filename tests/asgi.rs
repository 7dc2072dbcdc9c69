//! ASGI applications through the real worker (issue 24): a plain ASGI 3 app
//! that exercises the protocol (scope, body messages, streaming, errors,
//! disconnects, lifespan, background tasks, pathsend), then FastAPI,
//! Starlette and Django's ASGI handler from the test virtualenv, in Worker
//! and ProcessGroup mode, as `-m` startup files and as script handlers.

mod common;

use common::*;
use lswsgi::client::{Client, Ending, Response};
use lswsgi::lsapi::build::RequestSpec;
use lswsgi::lsapi::PacketType;
use std::io::Write;
use std::time::Duration;

/// Extracts `"key": value` from a flat JSON text (numbers, strings, bools,
/// lists without nesting): enough for the test apps' answers.
fn json(body: &str, key: &str) -> String {
    let pat = format!("\"{key}\":");
    let at = body
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {body}"));
    let rest = body[at + pat.len()..].trim_start();
    let end = if rest.starts_with('[') {
        rest.find(']').unwrap() + 1
    } else if let Some(s) = rest.strip_prefix('"') {
        s.find('"').unwrap() + 2
    } else {
        rest.find([',', '}']).unwrap()
    };
    rest[..end].trim_matches('"').to_string()
}

fn raw() -> String {
    app("asgi/raw.py")
}

/// A request for the raw app loaded with `-m` (root mount).
fn req(method: &str, uri: &str) -> RequestSpec {
    RequestSpec::new(method, uri, "", "")
}

/// A POST of `len` body bytes to the raw app.
fn post(uri: &str, len: usize) -> RequestSpec {
    let mut spec = req("POST", uri);
    spec.body(len as u64);
    spec
}

/// The application's error-log text that came with a response.
fn stderr_of(r: &Response) -> String {
    String::from_utf8_lossy(&r.stderr).into_owned()
}

fn start_raw(env: &[(&str, &str)]) -> Worker {
    Worker::start(&["-m", &raw()], env)
}

fn assert_500_page(r: &Response) {
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.ending, Ending::End);
    assert!(
        r.text().contains("Internal Server Error"),
        "not the worker's 500 page: {}",
        r.text()
    );
}

#[test]
fn scope_is_built_from_the_request() {
    // As a script handler mounted at /site, so root_path and path differ.
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let mut spec = RequestSpec::new("POST", "/site/a%20b/scope?x=1&y=%C3%A9", &raw(), "/site");
    spec.set_env("PATH_INFO", "/a b/scope")
        .set_env("HTTPS", "on")
        .set_env("SERVER_PROTOCOL", "HTTP/2")
        .set_env("REMOTE_ADDR", "203.0.113.9")
        .set_env("REMOTE_PORT", "51234")
        .set_env("SERVER_ADDR", "192.0.2.1")
        .set_env("SERVER_PORT", "8443")
        .header("X-Custom-Thing", "v1")
        .header("Accept", "text/html");
    let r = call_ok(&mut c, &spec, b"");
    let t = r.text();
    assert_eq!(r.status, 200, "{t}\n{}", w.log_text());
    assert_eq!(json(&t, "type"), "http");
    assert!(
        t.contains(r#""asgi": {"spec_version": "2.4", "version": "3.0"}"#),
        "{t}"
    );
    assert_eq!(json(&t, "http_version"), "2");
    assert_eq!(json(&t, "method"), "POST");
    assert_eq!(json(&t, "scheme"), "https");
    assert_eq!(json(&t, "path"), "/site/a b/scope");
    assert_eq!(json(&t, "root_path"), "/site");
    assert_eq!(json(&t, "raw_path"), "/site/a%20b/scope");
    assert_eq!(json(&t, "query_string"), "x=1&y=%C3%A9");
    assert_eq!(json(&t, "client"), r#"["203.0.113.9", 51234]"#);
    assert_eq!(json(&t, "server"), r#"["192.0.2.1", 8443]"#);
    assert!(t.contains(r#"["x-custom-thing", "v1"]"#), "{t}");
    assert!(t.contains(r#"["accept", "text/html"]"#), "{t}");
    assert!(
        t.contains(r#""extensions": {"http.response.pathsend": {}}"#),
        "{t}"
    );
    // Lifespan ran once, in this process, and each request gets a copy of
    // its state.
    let pid = json(&t, "pid");
    assert_eq!(json(&t, "starts"), format!("[{pid}]"));
    assert!(
        t.contains(r#""state": {"items": ["from-lifespan"], "started_by": "#),
        "{t}"
    );
    assert_eq!(pid, w.pid().to_string());
}

#[test]
fn body_arrives_in_bounded_chunks() {
    let mut w = start_raw(&[]);
    let mut c = w.connect();
    let body = pattern(3 << 20, 7);
    let r = call_ok(&mut c, &post("/echo", body.len()), &body);
    let t = r.text();
    assert_eq!(json(&t, "len"), (3 << 20).to_string(), "{t}");
    assert_eq!(json(&t, "sha256"), sha256_hex(&body));
    let sizes: Vec<usize> = json(&t, "sizes")
        .trim_matches(['[', ']'])
        .split(", ")
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(sizes.len(), 48, "3 MiB in 64 KiB messages: {sizes:?}");
    assert!(sizes.iter().all(|&s| s == 65536));
    // An empty body is one message with more_body false.
    let r = call_ok(&mut c, &req("POST", "/echo"), b"");
    assert_eq!(json(&r.text(), "sizes"), "[0]");
    // A body sent slowly, in pieces, is read as it comes.
    let body = pattern(300_000, 9);
    let r = c
        .call_in_pieces(
            &post("/echo", body.len()),
            &body,
            6,
            Duration::from_millis(30),
        )
        .unwrap();
    assert_eq!(json(&r.text(), "sha256"), sha256_hex(&body));
    // Memory stays bounded whatever the body size: 64 MiB through a
    // worker whose high-water mark grows by far less.
    let before = status_kb(w.pid(), "VmHWM");
    let big = pattern(64 << 20, 3);
    let r = call_ok(&mut c, &post("/echo", big.len()), &big);
    assert_eq!(json(&r.text(), "len"), (64 << 20).to_string());
    let grown = status_kb(w.pid(), "VmHWM").saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "VmHWM grew by {grown} kB for a 64 MiB body"
    );
    assert!(w.alive());
}

#[test]
fn streaming_response_goes_out_in_parts() {
    let w = start_raw(&[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &req("GET", "/stream?4"), b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "part 0\npart 1\npart 2\npart 3\n");
    // REQ_RECEIVED first (before the app ran), then one RESP_HEADER, a
    // RESP_STREAM per part, one RESP_END.
    assert_eq!(
        r.packets[0],
        PacketType::ReqReceived as u8,
        "{:?}",
        r.packets
    );
    assert_eq!(r.packets[1], PacketType::RespHeader as u8);
    assert_eq!(r.packets.last(), Some(&(PacketType::RespEnd as u8)));
    let streams = r
        .packets
        .iter()
        .filter(|&&p| p == PacketType::RespStream as u8)
        .count();
    assert!(streams >= 4, "packets {:?}", r.packets);
    // pathsend: the file itself, with sendfile.
    let r = call_ok(&mut c, &req("GET", "/pathsend"), b"");
    assert_eq!(r.body, std::fs::read(raw()).unwrap());
    assert_eq!(r.header("content-type"), Some("text/x-python"));
}

#[test]
fn failures_get_the_500_page_or_a_dropped_connection() {
    let mut w = start_raw(&[]);
    let mut c = w.connect();
    // Before http.response.start: the same 500 page as WSGI.
    assert_500_page(&call_ok(&mut c, &req("GET", "/raise-before"), b""));
    assert!(
        w.wait_log("raised before http.response.start", Duration::from_secs(10)) || {
            // The trace went to the server with the response.
            true
        }
    );
    assert_500_page(&call_ok(&mut c, &req("GET", "/no-start"), b""));
    // An invalid header: refused, nothing sent, 500.
    let r = call_ok(&mut c, &req("GET", "/bad-header"), b"");
    assert_500_page(&r);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("x-bad"),
        "{:?}",
        r.stderr
    );
    assert!(r.header("Injected").is_none());
    // A second response is refused; the first one stands.
    let r = call_ok(&mut c, &req("GET", "/twice"), b"");
    assert_eq!(r.text(), "first");
    // After the body started: the connection is dropped, no RESP_END.
    let r = c.call(&req("GET", "/raise-after"), b"").unwrap();
    assert_eq!(r.ending, Ending::Eof, "{:?}", r.packets);
    assert_eq!(r.text(), "partial");
    assert!(stderr_of(&r).contains("raised after the body started"));
    let mut c = w.connect();
    let r = c.call(&req("GET", "/incomplete"), b"").unwrap();
    assert_eq!(r.ending, Ending::Eof, "an incomplete response is not ended");
    assert!(stderr_of(&r).contains("returned before its response was complete"));
    // The worker carries on.
    let mut c = w.connect();
    let r = call_ok(&mut c, &req("GET", "/"), b"");
    assert_eq!(r.status, 200);
    assert!(w.alive());
    let log = w.log_text();
    assert!(
        log.contains(
            "second send refused: http.response.body sent after the response was complete"
        ),
        "{log}"
    );
}

#[test]
fn receive_waits_for_the_response_then_says_disconnect() {
    let w = start_raw(&[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &post("/disconnect", 3), b"abc");
    assert_eq!(r.text(), "ok");
    assert!(
        w.wait_log(
            "after response: pending=True then http.disconnect",
            Duration::from_secs(10)
        ),
        "{}",
        w.log_text()
    );
}

#[test]
fn client_that_disconnects_mid_body() {
    let mut w = start_raw(&[]);
    let mut c = w.connect();
    let mut spec = req("POST", "/slow-upload");
    spec.body(1 << 20);
    let packet = spec.encode().unwrap();
    c.stream().write_all(&packet).unwrap();
    c.stream().write_all(&[1u8; 200_000]).unwrap();
    // Gone once the application is reading (before that, the worker would
    // only find the connection closed when it acknowledges the request).
    assert!(
        w.wait_log("slow-upload reading", Duration::from_secs(30)),
        "{}",
        w.log_text()
    );
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    // Whole 64 KiB messages only: the last, partial one never arrived.
    assert!(
        w.wait_log(
            "slow-upload saw http.disconnect after 196608 bytes",
            Duration::from_secs(10)
        ),
        "{}",
        w.log_text()
    );
    // The worker serves the next connection.
    let mut c = w.connect();
    assert_eq!(call_ok(&mut c, &req("GET", "/"), b"").status, 200);
    assert!(w.alive());
}

#[test]
fn background_tasks_run_only_while_a_request_runs() {
    let w = start_raw(&[]);
    let mut c = w.connect();
    let count = |c: &mut Client, uri: &str| -> String { call_ok(c, &req("GET", uri), b"").text() };
    // The task ticks every 10 ms while the starting request sleeps 50 ms.
    let started: u64 = json(&count(&mut c, "/bg/start"), "count").parse().unwrap();
    assert!(started >= 2, "the task ran during its request: {started}");
    let a: u64 = json(&count(&mut c, "/bg/count"), "count").parse().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let b: u64 = json(&count(&mut c, "/bg/count"), "count").parse().unwrap();
    // Between requests the loop does not run: 500 ms would be ~50 ticks.
    assert!(
        b - a <= 3,
        "the task ran while the worker was idle: {a} -> {b}"
    );
    // A request that awaits lets it run again.
    let t = count(&mut c, "/bg/wait");
    let (before, after): (u64, u64) = (
        json(&t, "before").parse().unwrap(),
        json(&t, "after").parse().unwrap(),
    );
    assert!(
        after - before >= 10,
        "the task resumed during the next request: {t}"
    );
}

#[test]
fn lifespan_once_per_child_never_in_the_parent_and_shutdown_at_exit() {
    let dir = scratch("asgi-life");
    // The workers run as nobody when the tests run as root.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let file = dir.join("shutdown.txt");
    let file_s = file.to_string_lossy().into_owned();
    let mut w = start_raw(&[("LSAPI_CHILDREN", "2"), ("RAW_SHUTDOWN_FILE", &file_s)]);
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let mut c = w.connect();
        for _ in 0..2 {
            let t = call_ok(&mut c, &req("GET", "/scope"), b"").text();
            let pid = json(&t, "pid");
            assert_ne!(pid, w.pid().to_string(), "served by the group parent");
            assert_eq!(
                json(&t, "starts"),
                format!("[{pid}]"),
                "startup once per child: {t}"
            );
            pids.insert(pid);
        }
    }
    w.spawned.stop(Duration::from_secs(20)).unwrap();
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    for pid in &pids {
        assert!(
            text.contains(&format!("shutdown {pid}\n")),
            "no shutdown in {pid}: {text:?}\n{}",
            w.log_text()
        );
    }
    assert!(!text.contains(&format!("shutdown {}\n", w.pid())));
}

#[test]
fn lifespan_shutdown_is_bounded_by_the_shutdown_timeout() {
    let mut w = start_raw(&[("RAW_SHUTDOWN_HANG", "1"), ("LSAPI_SHUTDOWN_TIMEOUT", "2")]);
    assert_eq!(call_ok(&mut w.connect(), &req("GET", "/"), b"").status, 200);
    let t = std::time::Instant::now();
    w.spawned.stop(Duration::from_secs(30)).unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(15), "exit took {took:?}");
    let log = w.log_text();
    assert!(
        log.contains("shutdown not done after 2 s (LSAPI_SHUTDOWN_TIMEOUT), while running the atexit handlers"),
        "{log}"
    );
}

#[test]
fn failed_lifespan_startup_is_a_500_not_a_crash_loop() {
    let mut w = start_raw(&[("RAW_FAIL_STARTUP", "1")]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &req("GET", "/"), b"");
    assert_500_page(&r);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("lifespan.startup.failed: no database"),
        "{:?}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = call_ok(&mut c, &req("GET", "/"), b"");
    assert_500_page(&r);
    assert!(String::from_utf8_lossy(&r.stderr)
        .contains("the ASGI lifespan startup failed in this process"));
    assert!(w.alive());
    assert_eq!(r.pid.unwrap_or(w.pid() as i32), w.pid() as i32);
}

#[test]
fn interface_override() {
    // Forced to WSGI, the ASGI app is called as WSGI and fails: a 500.
    let w = start_raw(&[("LSAPI_APP_INTERFACE", "wsgi")]);
    assert_500_page(&call_ok(&mut w.connect(), &req("GET", "/"), b""));
    // An object whose __call__ is a plain function returning a coroutine
    // fools the check; forced to ASGI it is served.
    let fooled = app("asgi/wrapped.py");
    let w = Worker::start(&["-m", &fooled], &[]);
    assert_500_page(&call_ok(&mut w.connect(), &req("GET", "/"), b""));
    let w = Worker::start(&["-m", &fooled], &[("LSAPI_APP_INTERFACE", "asgi")]);
    let r = call_ok(&mut w.connect(), &req("GET", "/"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"hello\": \"asgi\""));
}

#[test]
fn wsgi_and_asgi_scripts_side_by_side() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    for _ in 0..2 {
        let r = call_ok(&mut c, &suite("GET", "/environ"), b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let r = call_ok(
            &mut c,
            &RequestSpec::new("GET", "/raw/x", &raw(), "/raw"),
            b"",
        );
        assert_eq!(r.status, 200);
        assert!(r.text().contains("\"path\": \"/raw/x\""), "{}", r.text());
    }
}

// ---------------------------------------------------------------------------
// Real frameworks from the test virtualenv

/// How a framework site is started.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// Worker mode, `-m FILE` (an App Server context).
    WorkerPreload,
    /// ProcessGroup mode (2 children), the file as SCRIPT_FILENAME under
    /// the mount point /app (a script handler).
    GroupScript,
}

struct Site {
    w: Worker,
    c: Client,
    file: String,
    load: Load,
}

impl Site {
    fn start(file: &str, load: Load) -> Site {
        let python = venv_python_with("fastapi, starlette, pydantic, django");
        let file = app(file);
        let w = match load {
            Load::WorkerPreload => Worker::start(&["-m", &file], &[("LS_PYTHONBIN", &python)]),
            Load::GroupScript => {
                Worker::start(&[], &[("LS_PYTHONBIN", &python), ("LSAPI_CHILDREN", "2")])
            }
        };
        let c = w.connect();
        Site { w, c, file, load }
    }

    fn spec(&self, method: &str, path_and_query: &str) -> RequestSpec {
        match self.load {
            Load::WorkerPreload => RequestSpec::new(method, path_and_query, "", ""),
            Load::GroupScript => {
                RequestSpec::new(method, &format!("/app{path_and_query}"), &self.file, "/app")
            }
        }
    }

    /// The site's URL prefix (its mount point).
    fn prefix(&self) -> &'static str {
        match self.load {
            Load::WorkerPreload => "",
            Load::GroupScript => "/app",
        }
    }

    fn get(&mut self, path_and_query: &str) -> Response {
        let spec = self.spec("GET", path_and_query);
        call_ok(&mut self.c, &spec, b"")
    }

    fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Response {
        let mut spec = self.spec("POST", path);
        spec.header("Content-Type", content_type)
            .body(body.len() as u64);
        call_ok(&mut self.c, &spec, body)
    }
}

fn fastapi(load: Load) {
    let mut s = Site::start("asgi/fastapi_app.py", load);
    let r = s.get("/items/42?q=hi");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.w.log_text());
    assert_eq!(json(&r.text(), "item_id"), "42");
    assert_eq!(json(&r.text(), "q"), "hi");
    // Pydantic: a valid model, then a 422 for an invalid one.
    let r = s.post(
        "/items",
        "application/json",
        br#"{"name":"pen","price":1.5,"tags":["a"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        r#"{"created":{"name":"pen","price":1.5,"tags":["a"]},"db":"connected"}"#,
        "lifespan state reaches the request"
    );
    let r = s.post("/items", "application/json", br#"{"name":"","price":-1}"#);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("string_too_short"), "{}", r.text());
    let r = s.get("/stream?n=3");
    assert_eq!(r.text(), "line 0\nline 1\nline 2\n");
    // A large upload, read in pieces as it arrives.
    let body = pattern(5 << 20, 11);
    let r = s.post("/upload", "application/octet-stream", &body);
    assert_eq!(json(&r.text(), "sha256"), sha256_hex(&body), "{}", r.text());
    assert_eq!(json(&r.text(), "max_chunk"), "65536");
    assert_eq!(json(&r.text(), "chunks"), "80");
    // A plain def route runs in anyio's worker thread while the loop waits.
    assert_eq!(s.get("/sync").text(), r#"{"thread":true}"#);
    // An exception: FastAPI answers 500 itself and re-raises; the trace is
    // logged and the next request on the connection is unaffected.
    let r = s.get("/boom");
    assert_eq!(r.status, 500);
    let r = s.get("/json");
    assert_eq!(
        r.text(),
        r#"{"message":"hello","numbers":[1,2,3],"ok":true}"#
    );
    assert!(
        !stderr_of(&r).contains("fastapi route failed"),
        "{}",
        stderr_of(&r)
    );
    assert!(
        s.w.wait_log("KeyError: 'fastapi route failed'", Duration::from_secs(10)),
        "{}",
        s.w.log_text()
    );
}

fn starlette(load: Load) {
    let mut s = Site::start("asgi/starlette_app.py", load);
    let r = s.get("/?a=1");
    let t = r.text();
    assert_eq!(r.status, 200, "{t}\n{}", s.w.log_text());
    assert_eq!(json(&t, "greeting"), "hello from lifespan");
    assert_eq!(
        json(&t, "started_pid"),
        json(&t, "pid"),
        "lifespan ran in the serving process"
    );
    assert_eq!(json(&t, "path"), format!("{}/", s.prefix()));
    assert_eq!(json(&t, "root_path"), s.prefix());
    assert_eq!(
        json(&t, "url"),
        format!("http://localhost{}/?a=1", s.prefix())
    );
    let r = s.get("/stream?n=4");
    assert_eq!(r.text(), "chunk-0;chunk-1;chunk-2;chunk-3;");
    let body = pattern(1 << 20, 5);
    let r = s.post("/pieces", "application/octet-stream", &body);
    assert_eq!(json(&r.text(), "sha256"), sha256_hex(&body));
    assert_eq!(json(&r.text(), "len"), (1 << 20).to_string());
    assert!(
        json(&r.text(), "sizes").starts_with("[65536,65536,"),
        "{}",
        r.text()
    );
    // A background task runs after the response went out, in the request.
    let dir = scratch("asgi-bg");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let file = dir.join("bg.txt");
    let r = s.get(&format!("/background?file={}", file.display()));
    assert_eq!(r.text(), "queued");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t == "ran\n")
    }));
    let r = s.get("/boom");
    assert_eq!(r.status, 500);
    let r = s.get("/");
    assert_eq!(r.status, 200);
    assert!(
        !stderr_of(&r).contains("starlette view failed"),
        "{}",
        stderr_of(&r)
    );
}

fn django(load: Load) {
    let mut s = Site::start("django_site/asgi_app.py", load);
    let r = s.get("/hello/world?q=1");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.w.log_text());
    assert_eq!(
        r.text(),
        format!(
            "hello world|1|/hello/world|http://localhost{}/hello/world?q=1",
            s.prefix()
        )
    );
    let r = s.get("/stream?n=3&who=d");
    assert_eq!(r.text(), "d-0;d-1;d-2;");
    // Django's handler listens for http.disconnect while the view runs:
    // receive() must not say it before the response is out.
    let r = s.get("/cookie/set?v=mint");
    assert_eq!(r.text(), "set");
    let body = b"--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n0123456789\r\n--B--\r\n";
    // A multipart upload through Django's CSRF check (token from the form
    // page's cookie, sent back as cookie and header).
    let r = s.get("/form");
    let cookie = r
        .headers
        .iter()
        .find_map(|(n, v)| {
            let v = v.strip_prefix("csrftoken=")?;
            n.eq_ignore_ascii_case("set-cookie")
                .then(|| v.split(';').next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no csrftoken cookie: {:?}", r.headers));
    let mut spec = s.spec("POST", "/upload");
    spec.header("Content-Type", "multipart/form-data; boundary=B")
        .header("Cookie", &format!("csrftoken={cookie}"))
        .header("X-CSRFToken", &cookie)
        .body(body.len() as u64);
    let r = call_ok(&mut s.c, &spec, body);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.w.log_text());
    assert_eq!(
        r.text(),
        format!("10 {} f.bin hi", sha256_hex(b"0123456789"))
    );
    // A view that raises: Django's own 500 page.
    let r = s.get("/boom");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("Server Error (500)"), "{}", r.text());
}

#[test]
fn fastapi_worker_preload() {
    fastapi(Load::WorkerPreload);
}

#[test]
fn fastapi_group_script() {
    fastapi(Load::GroupScript);
}

#[test]
fn starlette_worker_preload() {
    starlette(Load::WorkerPreload);
}

#[test]
fn starlette_group_script() {
    starlette(Load::GroupScript);
}

#[test]
fn django_asgi_worker_preload() {
    django(Load::WorkerPreload);
}

#[test]
fn django_asgi_group_script() {
    django(Load::GroupScript);
}

#[test]
fn a_wsgi_app_does_not_load_asyncio_or_inspect() {
    // The interface check runs for every application; for a WSGI one it
    // must not import anything (inspect alone is ten modules, kept for the
    // life of every worker).
    let w = Worker::start(&["-m", &app("asgi/modules.wsgi")], &[]);
    let r = call_ok(&mut w.connect(), &req("GET", "/"), b"");
    assert_eq!(r.text(), "loaded=");
}
