//! Real frameworks and virtualenvs through the real worker (issue #5, mod_wsgi
//! compatibility): a Flask application and a Django project, installed only in
//! a virtualenv the way cPanel's "Setup Python App" / CloudLinux's Python
//! Selector create one, served in Worker and ProcessGroup mode, loaded both
//! per request (SCRIPT_FILENAME, script handler) and with `-m
//! passenger_wsgi.py` (App Server context).
//!
//! The virtualenv comes from `LSWSGI_TEST_VENV` (set by `bash
//! scripts/test.sh`), else `<repo>/.venv-test`; without one holding Flask and
//! Django these tests fail, they never skip.

mod common;

use common::*;
use lswsgi::client::{Client, Response};
use lswsgi::lsapi::build::RequestSpec;
use lswsgi::lsapi::{PacketHeader, HEADER_LEN};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

// ---------------------------------------------------------------------------
// The virtualenv

/// The test virtualenv (absolute path), or a panic telling how to make one.
fn venv() -> &'static Path {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = VENV.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (dir, from_env) = match std::env::var_os("LSWSGI_TEST_VENV") {
            Some(v) if !v.is_empty() => (repo.join(PathBuf::from(v)), true),
            _ => (repo.join(".venv-test"), false),
        };
        let python = dir.join("bin/python");
        let ok = Command::new(&python)
            .args(["-c", "import flask, django"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            Ok(dir)
        } else {
            let origin = if from_env {
                "LSWSGI_TEST_VENV names"
            } else {
                "LSWSGI_TEST_VENV is unset and the fallback is"
            };
            Err(format!(
                "the framework tests need a virtualenv with Flask and Django: {origin} {}, \
                 where `bin/python -c 'import flask, django'` fails. \
                 Run `bash scripts/test.sh` (it creates .venv-test and sets LSWSGI_TEST_VENV).",
                dir.display()
            ))
        }
    });
    match found {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// `LS_PYTHONBIN` for the test virtualenv.
fn venv_python() -> String {
    venv().join("bin/python").to_string_lossy().into_owned()
}

/// The virtualenv's site-packages directory, as its own python reports it.
fn venv_site_packages() -> PathBuf {
    let out = Command::new(venv_python())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .expect("run the virtualenv's python");
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The interpreter the worker embeds, from `lswsgi -v`
/// ("Python 3.11 (/path/to/python3)").
fn embedded_python() -> String {
    let out = Command::new(LSWSGI).arg("-v").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match (text.rfind('('), text.rfind(')')) {
        (Some(a), Some(b)) if a < b => text[a + 1..b].to_string(),
        _ => "python3".to_string(),
    }
}

/// Whether `python -c 'import NAME'` succeeds.
fn imports(python: &str, name: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A package created inside the virtualenv's site-packages for one test and
/// removed afterwards: it exists nowhere else, so importing it proves the
/// virtualenv is the interpreter's environment.
struct Marker {
    name: String,
    value: String,
    dir: PathBuf,
}

impl Marker {
    fn create() -> Marker {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let value = format!("{}_{nanos}", std::process::id());
        let name = format!("lswsgi_venv_marker_{value}");
        let dir = venv_site_packages().join(&name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("__init__.py"), format!("VALUE = {value:?}\n")).unwrap();
        Marker { name, value, dir }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn same_dir(a: &str, b: &Path) -> bool {
    std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
}

/// `key=value` lines of a probe response.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

// ---------------------------------------------------------------------------
// A site: one framework, one process model, one way of loading

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fw {
    Flask,
    Django,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Default: one process serves the connection itself.
    Worker,
    /// `LSAPI_CHILDREN=4`: a parent forks a child per connection.
    Group,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    /// Script handler: SCRIPT_FILENAME names `app.wsgi` in every request,
    /// mounted under [`MOUNT`].
    Script,
    /// App Server context: `-m /abs/passenger_wsgi.py` with WSGI_ROOT, the
    /// application mounted at the root.
    Preload,
}

/// Where the script-handler variant is mounted.
const MOUNT: &str = "/mnt/app.wsgi";

fn app_dir(fw: Fw) -> String {
    common::app(match fw {
        Fw::Flask => "flask_app",
        Fw::Django => "django_site",
    })
}

struct Site {
    fw: Fw,
    load: Load,
    w: Worker,
    c: Client,
    /// Cookies the "browser" holds: name, value.
    jar: Vec<(String, String)>,
}

impl Site {
    /// Starts the worker and checks, with a first request, that the process
    /// model and the mount are the expected ones.
    fn start(fw: Fw, mode: Mode, load: Load) -> Site {
        let python = venv_python();
        let dir = app_dir(fw);
        let startup = format!("{dir}/passenger_wsgi.py");
        let mut env: Vec<(&str, &str)> = vec![("LS_PYTHONBIN", &python)];
        let mut args: Vec<&str> = Vec::new();
        if load == Load::Preload {
            args.extend(["-m", &startup]);
            env.push(("WSGI_ROOT", &dir));
        }
        if mode == Mode::Group {
            env.push(("LSAPI_CHILDREN", "4"));
        }
        let w = Worker::start(&args, &env);
        let mut c = w.connect();
        c.stream()
            .set_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut site = Site {
            fw,
            load,
            w,
            c,
            jar: Vec::new(),
        };
        site.check_mode(mode);
        site
    }

    /// `/whoami` answers "PID wsgi.multiprocess SCRIPT_NAME|PATH_INFO".
    fn check_mode(&mut self, mode: Mode) {
        let r = self.call(&mut self.spec("GET", "/whoami"), b"");
        assert_eq!(r.status, 200, "{}", self.explain(&r));
        let text = r.text();
        let (pid, rest) = text.split_once(' ').unwrap();
        let pid: u32 = pid.parse().unwrap();
        let mount = self.prefix();
        match mode {
            Mode::Worker => {
                assert_eq!(pid, self.w.pid(), "Worker mode serves in the worker itself");
                assert_eq!(rest, format!("False {mount}|/whoami"));
            }
            Mode::Group => {
                assert_ne!(
                    pid,
                    self.w.pid(),
                    "ProcessGroup mode (LSAPI_CHILDREN=4) must serve in a forked child, \
                     but the request was served by the process we started"
                );
                assert_eq!(
                    r.pid,
                    Some(pid as i32),
                    "a forked child announces its pid (\\0PID notice) first"
                );
                assert_eq!(rest, format!("True {mount}|/whoami"));
            }
        }
    }

    /// A request for `path_and_query` of the application, described as
    /// LiteSpeed describes it for this way of loading.
    fn spec(&self, method: &str, path_and_query: &str) -> RequestSpec {
        match self.load {
            Load::Script => {
                let script = format!("{}/app.wsgi", app_dir(self.fw));
                RequestSpec::new(method, &format!("{MOUNT}{path_and_query}"), &script, MOUNT)
            }
            Load::Preload => {
                // App Server context: no PATH_INFO, SCRIPT_NAME is the path.
                let path = path_and_query.split('?').next().unwrap();
                RequestSpec::new(method, path_and_query, "", path)
            }
        }
    }

    /// Like [`Site::spec`] for a percent-encoded `uri` whose path decodes to
    /// `decoded` (CGI variables carry the decoded path, REQUEST_URI the
    /// encoded one).
    fn spec_decoded(&self, method: &str, uri: &str, decoded: &str) -> RequestSpec {
        match self.load {
            Load::Script => {
                let mut spec = self.spec(method, uri);
                spec.set_env("PATH_INFO", decoded);
                spec
            }
            Load::Preload => RequestSpec::new(method, uri, "", decoded),
        }
    }

    /// The mount prefix URLs built by the application carry.
    fn prefix(&self) -> &'static str {
        match self.load {
            Load::Script => MOUNT,
            Load::Preload => "",
        }
    }

    /// Sends `spec` with the jar's cookies, stores the cookies set.
    fn call(&mut self, spec: &mut RequestSpec, body: &[u8]) -> Response {
        if !self.jar.is_empty() {
            let cookie = self
                .jar
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            spec.header("Cookie", &cookie);
        }
        let r = call_ok(&mut self.c, spec, body);
        for (name, value) in &r.headers {
            if name.eq_ignore_ascii_case("Set-Cookie") {
                let pair = value.split(';').next().unwrap();
                let (n, v) = pair.split_once('=').unwrap();
                self.jar.retain(|(old, _)| old != n);
                if !v.is_empty() {
                    self.jar.push((n.to_string(), v.to_string()));
                }
            }
        }
        r
    }

    /// Sends `spec` without touching the jar.
    fn call_bare(&mut self, spec: &RequestSpec, body: &[u8]) -> Response {
        call_ok(&mut self.c, spec, body)
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.jar
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Name of the framework's session cookie.
    fn session_cookie(&self) -> &'static str {
        match self.fw {
            Fw::Flask => "session",
            Fw::Django => "sessionid",
        }
    }

    /// Name of the form field that carries the CSRF token.
    fn token_field(&self) -> &'static str {
        match self.fw {
            Fw::Flask => "csrf_token",
            Fw::Django => "csrfmiddlewaretoken",
        }
    }

    /// GETs the form page and returns the CSRF token in its hidden field.
    fn form_token(&mut self) -> String {
        let r = self.call(&mut self.spec("GET", "/form"), b"");
        assert_eq!(r.status, 200, "{}", self.explain(&r));
        let page = r.text();
        let action = format!("action=\"{}/submit\"", self.prefix());
        assert!(page.contains(&action), "form lacks {action}: {page}");
        let token = hidden_value(&page, self.token_field())
            .unwrap_or_else(|| panic!("no {} in {page}", self.token_field()));
        match self.fw {
            Fw::Flask => assert_eq!(token.len(), 32, "{token}"),
            Fw::Django => {
                assert_eq!(token.len(), 64, "{token}");
                assert_eq!(self.cookie("csrftoken").map(str::len), Some(32));
            }
        }
        token
    }

    /// A POST of an urlencoded form; Django also gets the Origin a browser sends.
    fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> (RequestSpec, Vec<u8>) {
        let body = urlencode(fields).into_bytes();
        let mut spec = self.spec("POST", path);
        spec.header("Content-Type", "application/x-www-form-urlencoded");
        if self.fw == Fw::Django {
            spec.header("Origin", "http://localhost");
        }
        spec.body(body.len() as u64);
        (spec, body)
    }

    /// The 403 text for a CSRF failure with `reason` (Django's own words).
    fn assert_csrf_refused(&self, r: &Response, django_reason: &str) {
        assert_eq!(r.status, 403, "{}", self.explain(r));
        match self.fw {
            Fw::Flask => assert!(
                r.text().contains("CSRF token missing or wrong"),
                "{}",
                r.text()
            ),
            Fw::Django => assert_eq!(r.text(), format!("CSRF failure: {django_reason}")),
        }
    }

    /// Status, body, error log and worker log, for assertion messages.
    fn explain(&self, r: &Response) -> String {
        format!(
            "status {} body {:?}\nerror log: {}\nworker log: {}",
            r.status,
            r.text(),
            String::from_utf8_lossy(&r.stderr),
            self.w.log_text()
        )
    }
}

/// The value of `<input type="hidden" name="NAME" value="...">`.
fn hidden_value(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\""))?;
    let tag_start = page[..at].rfind('<')?;
    let tag_end = at + page[at..].find('>')?;
    let tag = &page[tag_start..tag_end];
    let v = tag.find("value=\"")? + 7;
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

/// Form/query encoding of one value (`application/x-www-form-urlencoded`).
fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn urlencode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", form_escape(k), form_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

const BOUNDARY: &str = "----lswsgiFormBoundary7MA4YWxkTrZu0gW";

/// A multipart/form-data body: text fields, then one file.
fn multipart(fields: &[(&str, &str)], file_field: &str, filename: &str, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(data.len() + 1024);
    for (k, v) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{file_field}\"; \
             filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

// ---------------------------------------------------------------------------
// What each framework must do through the worker

/// A form POST protected by CSRF: accepted with the token (and, for Django,
/// the cookie and a matching Origin or, under HTTPS, Referer), refused
/// without.
fn csrf_form(fw: Fw, mode: Mode, load: Load) {
    let mut s = Site::start(fw, mode, load);
    let token = s.form_token();
    let field = s.token_field();

    let (mut spec, body) = s.post_form("/submit", &[(field, &token), ("name", "Ada Lovelace")]);
    let r = s.call(&mut spec, &body);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "thanks Ada Lovelace"),
        "{}",
        s.explain(&r)
    );

    // No token in the form.
    let (mut spec, body) = s.post_form("/submit", &[("name", "Mallory")]);
    let r = s.call(&mut spec, &body);
    s.assert_csrf_refused(&r, "CSRF token missing.");

    // A wrong token.
    let wrong = match fw {
        Fw::Flask => "0".repeat(32),
        Fw::Django => "A".repeat(64),
    };
    let (mut spec, body) = s.post_form("/submit", &[(field, &wrong), ("name", "Mallory")]);
    let r = s.call(&mut spec, &body);
    s.assert_csrf_refused(&r, "CSRF token from POST incorrect.");

    // The right token but without the cookies (another browser).
    let (spec, body) = s.post_form("/submit", &[(field, &token), ("name", "Mallory")]);
    let r = s.call_bare(&spec, &body);
    s.assert_csrf_refused(&r, "CSRF cookie not set.");

    if fw == Fw::Django {
        // A cross-site Origin is refused even with the token.
        let body = urlencode(&[(field, &token), ("name", "Mallory")]).into_bytes();
        let mut spec = s.spec("POST", "/submit");
        spec.header("Content-Type", "application/x-www-form-urlencoded")
            .header("Origin", "http://evil.example");
        spec.body(body.len() as u64);
        let r = s.call(&mut spec, &body);
        s.assert_csrf_refused(
            &r,
            "Origin checking failed - http://evil.example does not match any trusted origins.",
        );

        // HTTPS (wsgi.url_scheme "https"): without Origin, Django checks the
        // Referer, which must be there and same-origin.
        let body = urlencode(&[(field, &token), ("name", "Grace")]).into_bytes();
        let https = |referer: Option<&str>| {
            let mut spec = s.spec("POST", "/submit");
            spec.set_env("HTTPS", "on").set_env("SERVER_PORT", "443");
            spec.header("Content-Type", "application/x-www-form-urlencoded");
            if let Some(r) = referer {
                spec.header("Referer", r);
            }
            spec.body(body.len() as u64);
            spec
        };
        let referer = format!("https://localhost{}/form", s.prefix());
        let (mut without, mut with) = (https(None), https(Some(&referer)));
        let r = s.call(&mut without, &body);
        s.assert_csrf_refused(&r, "Referer checking failed - no Referer.");
        let r = s.call(&mut with, &body);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "thanks Grace"),
            "{}",
            s.explain(&r)
        );
    }
}

/// Redirects built with url_for / reverse carry SCRIPT_NAME; absolute ones
/// the scheme and host; the session set on the way survives the redirect.
fn redirect(fw: Fw, mode: Mode, load: Load) {
    let mut s = Site::start(fw, mode, load);
    let prefix = s.prefix();
    let r = s.call(&mut s.spec("GET", "/login?user=bob"), b"");
    assert_eq!(r.status, 302, "{}", s.explain(&r));
    let location = r.header("Location").unwrap().to_string();
    assert_eq!(location, format!("{prefix}/done"));
    assert!(s.cookie(s.session_cookie()).is_some(), "{:?}", r.headers);

    let path = location.strip_prefix(prefix).unwrap();
    let r = s.call(&mut s.spec("GET", path), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "done bob"));

    let r = s.call(&mut s.spec("GET", "/login?user=eve&external=1"), b"");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("Location"),
        Some(format!("http://localhost{prefix}/done").as_str())
    );

    let mut spec = s.spec("GET", "/login?user=eve&external=1");
    spec.set_env("HTTPS", "on").set_env("SERVER_PORT", "443");
    let r = s.call(&mut spec, b"");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("Location"),
        Some(format!("https://localhost{prefix}/done").as_str())
    );
    let r = s.call(&mut s.spec("GET", "/done"), b"");
    assert_eq!(r.text(), "done eve");
}

/// A 5 MiB multipart/form-data upload (CSRF token in the form): the
/// application reports its size, SHA-256, file name and the text field.
fn upload(fw: Fw, mode: Mode, load: Load) {
    let mut s = Site::start(fw, mode, load);
    let token = s.form_token();
    let data = pattern(5 << 20, 0x5eed);
    assert!(!data
        .windows(BOUNDARY.len())
        .any(|w| w == BOUNDARY.as_bytes()));
    let body = multipart(
        &[(s.token_field(), &token), ("note", "five MiB")],
        "file",
        "data.bin",
        &data,
    );
    let mut spec = s.spec("POST", "/upload");
    spec.header(
        "Content-Type",
        &format!("multipart/form-data; boundary={BOUNDARY}"),
    );
    if fw == Fw::Django {
        spec.header("Origin", "http://localhost");
    }
    spec.body(body.len() as u64);
    let r = s.call(&mut spec, &body);
    assert_eq!(r.status, 200, "{}", s.explain(&r));
    assert_eq!(
        r.text(),
        format!("{} {} data.bin five MiB", data.len(), sha256_hex(&data))
    );
    // The connection is still in step after the large body.
    let r = s.call(&mut s.spec("GET", "/done"), b"");
    assert_eq!(r.status, 200);
}

/// Set-Cookie in responses; cookies sent back are read, the signed session
/// cookie round-trips and is updated on each request.
fn cookies(fw: Fw, mode: Mode, load: Load) {
    let mut s = Site::start(fw, mode, load);
    let r = s.call(&mut s.spec("GET", "/cookie/set?v=oat"), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "set"));
    let set: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Set-Cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(set.len(), 2, "two Set-Cookie headers: {set:?}");
    assert!(set.contains(&"flavour=oat; Path=/"), "{set:?}");
    assert!(
        set.iter()
            .any(|c| c.starts_with(&format!("{}=", s.session_cookie()))),
        "{set:?}"
    );

    for visits in 1..=3 {
        let r = s.call(&mut s.spec("GET", "/cookie/get"), b"");
        assert_eq!(r.text(), format!("flavour=oat visits={visits}"));
    }

    // A request without cookies starts afresh.
    let r = s.call_bare(&s.spec("GET", "/cookie/get"), b"");
    assert_eq!(r.text(), "flavour=- visits=1");

    // Cookies split over two Cookie headers (as HTTP/2 clients send them)
    // are joined with "; " and both read.
    let mut spec = s.spec("GET", "/cookie/get");
    spec.header("Cookie", "flavour=rye");
    spec.header(
        "Cookie",
        &format!(
            "{}={}",
            s.session_cookie(),
            s.cookie(s.session_cookie()).unwrap()
        ),
    );
    let r = s.call_bare(&spec, b"");
    assert_eq!(r.text(), "flavour=rye visits=4");
}

/// A generator response (Flask's stream_with_context, Django's
/// StreamingHttpResponse) leaves block by block: one RESP_STREAM per block.
fn streaming(fw: Fw, mode: Mode, load: Load) {
    let mut s = Site::start(fw, mode, load);
    let r = s.call(&mut s.spec("GET", "/stream?n=6&who=zed"), b"");
    assert_eq!(r.status, 200, "{}", s.explain(&r));
    assert_eq!(r.text(), "zed-0;zed-1;zed-2;zed-3;zed-4;zed-5;");
    assert_eq!(r.header("Content-Length"), None);
    let streams = r.packets.iter().filter(|&&t| t == 4).count();
    assert_eq!(streams, 6, "packets {:?}", r.packets);
    assert_eq!(r.packets.last(), Some(&5));
    // Several streamed responses in a row on one connection.
    for n in [1, 40] {
        let r = s.call(&mut s.spec("GET", &format!("/stream?n={n}&who=q")), b"");
        let expect: String = (0..n).map(|i| format!("q-{i};")).collect();
        assert_eq!(r.text(), expect);
        assert_eq!(r.packets.iter().filter(|&&t| t == 4).count(), n);
    }

    // Blocks leave as they are produced: the application holds its second
    // block until the client has received the first.
    let dir = scratch("gate");
    let gate = dir.join("open");
    let spec = s.spec(
        "GET",
        &format!("/stream_gate?gate={}", form_escape(gate.to_str().unwrap())),
    );
    s.c.stream().write_all(&spec.encode().unwrap()).unwrap();
    let (mut packets, mut body) = (Vec::new(), Vec::new());
    loop {
        let (kind, payload) = read_packet(s.c.stream());
        packets.push(kind);
        if kind == 4 {
            body.extend_from_slice(&payload);
            if body == b"first;" {
                std::fs::write(&gate, b"").unwrap();
            }
        }
        if kind == 5 {
            break;
        }
    }
    assert_eq!(String::from_utf8_lossy(&body), "first;second;");
    assert_eq!(packets, [7, 3, 4, 4, 5]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// One packet off the connection: type and payload.
fn read_packet(stream: &mut impl Read) -> (u8, Vec<u8>) {
    let mut head = [0u8; HEADER_LEN];
    stream.read_exact(&mut head).expect("a packet header");
    let h = PacketHeader::decode(&head).expect("a valid packet header");
    let mut payload = vec![0; h.len - HEADER_LEN];
    stream.read_exact(&mut payload).expect("a packet payload");
    (h.kind, payload)
}

/// A UTF-8 path and query: PATH_INFO arrives as latin-1 decoded bytes (PEP
/// 3333) and each framework turns it back into the same text and URLs its
/// own test client gives.
fn unicode_path(fw: Fw, mode: Mode, load: Load) {
    let mut s = Site::start(fw, mode, load);
    let prefix = s.prefix();
    let mut spec = s.spec_decoded(
        "GET",
        "/hello/caf%C3%A9?q=%C3%A9t%C3%A9",
        "/hello/caf\u{e9}",
    );
    let r = s.call(&mut spec, b"");
    assert_eq!(r.status, 200, "{}", s.explain(&r));
    let url = match fw {
        // Werkzeug's request.url is an IRI, Django's build_absolute_uri a URI.
        Fw::Flask => format!("http://localhost{prefix}/hello/caf\u{e9}?q=\u{e9}t\u{e9}"),
        Fw::Django => format!("http://localhost{prefix}/hello/caf%C3%A9?q=%C3%A9t%C3%A9"),
    };
    assert_eq!(
        r.text(),
        format!("hello caf\u{e9}|\u{e9}t\u{e9}|/hello/caf\u{e9}|{url}")
    );
}

/// A file download through wsgi.file_wrapper (Flask's send_file, Django's
/// FileResponse): byte-exact with its Content-Length; Flask also answers a
/// Range request from the wrapped file.
fn download(fw: Fw, mode: Mode, load: Load) {
    let mut s = Site::start(fw, mode, load);
    let dir = scratch("download");
    let data = pattern((1 << 20) + 3, 0xd0);
    let path = dir.join("data.bin");
    std::fs::write(&path, &data).unwrap();
    let query = format!("/download?path={}", form_escape(path.to_str().unwrap()));
    let r = s.call(&mut s.spec("GET", &query), b"");
    assert_eq!(r.status, 200, "{}", s.explain(&r));
    assert!(r.body == data, "downloaded {} bytes differ", r.body.len());
    let len = data.len().to_string();
    assert_eq!(r.header("Content-Length"), Some(len.as_str()));
    let disposition = match fw {
        Fw::Flask => "attachment; filename=data.bin",
        Fw::Django => "attachment; filename=\"data.bin\"",
    };
    assert_eq!(r.header("Content-Disposition"), Some(disposition));
    if fw == Fw::Flask {
        let mut spec = s.spec("GET", &query);
        spec.header("Range", "bytes=100000-299999");
        let r = s.call(&mut spec, b"");
        assert_eq!(r.status, 206, "{}", s.explain(&r));
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes 100000-299999/{len}").as_str())
        );
        assert!(r.body == data[100_000..300_000], "range body differs");
    }
    // Still in step on the same connection.
    assert_eq!(s.call(&mut s.spec("GET", "/done"), b"").status, 200);
    std::fs::remove_dir_all(dir).unwrap();
}

/// An exception in a view: the framework answers 500 and logs the
/// traceback (Flask to wsgi.errors, i.e. LiteSpeed's error log; Django to
/// sys.stderr, i.e. the worker's log); the worker keeps serving.
fn view_exception(fw: Fw, mode: Mode, load: Load) {
    let mut s = Site::start(fw, mode, load);
    let r = s.call(&mut s.spec("GET", "/boom"), b"");
    assert_eq!(r.status, 500, "{}", s.explain(&r));
    let errors = String::from_utf8_lossy(&r.stderr).into_owned();
    match fw {
        Fw::Flask => {
            assert!(r.text().contains("Internal Server Error"), "{}", r.text());
            assert!(
                errors.contains("Exception on /boom [GET]") && errors.contains("ZeroDivisionError"),
                "error log: {errors}"
            );
        }
        Fw::Django => {
            assert!(r.text().contains("Server Error (500)"), "{}", r.text());
            let needle = format!("Internal Server Error: {}/boom", s.prefix());
            assert!(
                s.w.wait_log(&needle, Duration::from_secs(5)),
                "worker log lacks {needle:?}: {}",
                s.w.log_text()
            );
            assert!(s.w.log_text().contains("ZeroDivisionError"));
        }
    }
    let r = s.call(&mut s.spec("GET", "/boom?d=1"), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "1"));
}

/// Eight tests per feature: framework × process model × way of loading.
macro_rules! matrix {
    ($feature:ident) => {
        mod $feature {
            use super::{Fw, Load, Mode};
            #[test]
            fn flask_worker_script() {
                super::$feature(Fw::Flask, Mode::Worker, Load::Script)
            }
            #[test]
            fn flask_worker_preload() {
                super::$feature(Fw::Flask, Mode::Worker, Load::Preload)
            }
            #[test]
            fn flask_group_script() {
                super::$feature(Fw::Flask, Mode::Group, Load::Script)
            }
            #[test]
            fn flask_group_preload() {
                super::$feature(Fw::Flask, Mode::Group, Load::Preload)
            }
            #[test]
            fn django_worker_script() {
                super::$feature(Fw::Django, Mode::Worker, Load::Script)
            }
            #[test]
            fn django_worker_preload() {
                super::$feature(Fw::Django, Mode::Worker, Load::Preload)
            }
            #[test]
            fn django_group_script() {
                super::$feature(Fw::Django, Mode::Group, Load::Script)
            }
            #[test]
            fn django_group_preload() {
                super::$feature(Fw::Django, Mode::Group, Load::Preload)
            }
        }
    };
}

matrix!(csrf_form);
matrix!(redirect);
matrix!(upload);
matrix!(cookies);
matrix!(streaming);
matrix!(unicode_path);
matrix!(download);
matrix!(view_exception);

// ---------------------------------------------------------------------------
// Virtualenvs as cPanel / CloudLinux create them

/// With `LS_PYTHONBIN=<venv>/bin/python`, sys.prefix is the virtualenv and
/// its site-packages import; without it, neither.
fn venv_is_the_environment(mode: Mode) {
    let venv = venv();
    let site = venv_site_packages();
    let base = embedded_python();
    // Proof that a module comes from the virtualenv needs a module the base
    // interpreter cannot import: Flask if the base lacks it, else a package
    // made inside the virtualenv for this test.
    let base_has_flask = imports(&base, "flask");
    let marker = base_has_flask.then(Marker::create);
    if let Some(m) = &marker {
        assert!(!imports(&base, &m.name), "{base} imports {}", m.name);
    }
    let probe = common::app("venv_probe.wsgi");
    let mut query = "/p?mod=flask&mod=django".to_string();
    if let Some(m) = &marker {
        query.push_str(&format!("&mod={}", m.name));
    }
    let spec = get(
        &format!("/venv_probe.wsgi{query}"),
        &probe,
        "/venv_probe.wsgi",
    );
    let children = match mode {
        Mode::Worker => "0",
        Mode::Group => "4",
    };

    let python = venv_python();
    let w = Worker::start(
        &[],
        &[("LS_PYTHONBIN", &python), ("LSAPI_CHILDREN", children)],
    );
    let mut c = w.connect();
    let r = call_ok(&mut c, &spec, b"");
    let text = r.text();
    assert_eq!(r.status, 200, "{text} {}", w.log_text());
    let prefix = field(&text, "prefix").unwrap();
    assert!(
        same_dir(prefix, venv),
        "sys.prefix {prefix} is not the virtualenv {}",
        venv.display()
    );
    assert_ne!(field(&text, "base_prefix").unwrap(), prefix);
    for name in ["flask", "django"] {
        assert_eq!(
            field(&text, name),
            Some(format!("{}/{name}/__init__.py -", site.display()).as_str()),
            "{text}"
        );
    }
    if let Some(m) = &marker {
        assert_eq!(
            field(&text, &m.name),
            Some(format!("{}/__init__.py {}", m.dir.display(), m.value).as_str()),
            "{text}"
        );
    }
    // A named WSGIApplicationGroup (a sub-interpreter) sees the same
    // environment.
    let mut sub = spec.clone();
    sub.set_env("WSGIApplicationGroup", "venv-site");
    let sub_text = call_ok(&mut c, &sub, b"").text();
    assert_eq!(sub_text, text);
    drop(c);
    drop(w);

    // Control: the same probe without LS_PYTHONBIN runs in the base
    // interpreter, which cannot see the virtualenv.
    let w = Worker::start(&[], &[("LSAPI_CHILDREN", children)]);
    let mut c = w.connect();
    let text = call_ok(&mut c, &spec, b"").text();
    let prefix = field(&text, "prefix").unwrap();
    assert!(!same_dir(prefix, venv), "{text}");
    match &marker {
        Some(m) => assert_eq!(field(&text, &m.name), Some("ImportError"), "{text}"),
        None => assert_eq!(field(&text, "flask"), Some("ImportError"), "{text}"),
    }
}

#[test]
fn venv_is_the_environment_worker() {
    venv_is_the_environment(Mode::Worker);
}

#[test]
fn venv_is_the_environment_group() {
    venv_is_the_environment(Mode::Group);
}

/// Flask and Django side by side in one process, as two script-handler
/// sites: each in its own WSGIApplicationGroup (sub-interpreter) sees only its
/// own framework; in the shared main interpreter both are loaded. Requests
/// alternate between the sites on one connection.
fn side_by_side(mode: Mode) {
    let python = venv_python();
    let children = match mode {
        Mode::Worker => "0",
        Mode::Group => "4",
    };
    let w = Worker::start(
        &[],
        &[("LS_PYTHONBIN", &python), ("LSAPI_CHILDREN", children)],
    );
    let mut c = w.connect();
    let sites = [
        (Fw::Flask, "/flask/app.wsgi"),
        (Fw::Django, "/django/app.wsgi"),
    ];
    let request = |fw: Fw, mount: &str, path: &str, group: Option<&str>| {
        let script = format!("{}/app.wsgi", app_dir(fw));
        let mut spec = RequestSpec::new("GET", &format!("{mount}{path}"), &script, mount);
        if let Some(g) = group {
            spec.set_env("WSGIApplicationGroup", g);
        }
        spec
    };
    for round in 0..3 {
        for (fw, mount) in sites {
            let group = format!("{fw:?}-site");
            let r = call_ok(
                &mut c,
                &request(fw, mount, &format!("/hello/x?q={round}"), Some(&group)),
                b"",
            );
            assert_eq!(
                r.text(),
                format!("hello x|{round}|/hello/x|http://localhost{mount}/hello/x?q={round}"),
                "{}",
                String::from_utf8_lossy(&r.stderr)
            );
            let r = call_ok(&mut c, &request(fw, mount, "/where", Some(&group)), b"");
            let own = format!("{fw:?}").to_lowercase();
            assert_eq!(field(&r.text(), "loaded"), Some(own.as_str()));
        }
    }
    // The same two sites in the main interpreter share it.
    for (fw, mount) in sites {
        let r = call_ok(&mut c, &request(fw, mount, "/where", None), b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.stderr));
    }
    let r = call_ok(
        &mut c,
        &request(Fw::Flask, "/flask/app.wsgi", "/where", None),
        b"",
    );
    assert_eq!(field(&r.text(), "loaded"), Some("flask,django"));
}

#[test]
fn flask_and_django_side_by_side_worker() {
    side_by_side(Mode::Worker);
}

#[test]
fn flask_and_django_side_by_side_group() {
    side_by_side(Mode::Group);
}

/// A cPanel-style passenger_wsgi.py with `-m /abs/path/passenger_wsgi.py`,
/// started from another directory: the startup file finds its application,
/// the framework comes from the virtualenv.
fn passenger_absolute(fw: Fw) {
    let dir = app_dir(fw);
    let python = venv_python();
    let w = Worker::start(
        &["-m", &format!("{dir}/passenger_wsgi.py")],
        &[("LS_PYTHONBIN", &python)],
    );
    let elsewhere = std::env::current_dir().unwrap();
    check_passenger(&w, fw, &elsewhere);
}

/// The same with `WSGI_ROOT` set to the application directory and the
/// startup file named relative to it, as an App Server context does.
fn passenger_wsgi_root(fw: Fw) {
    let dir = app_dir(fw);
    let python = venv_python();
    let w = Worker::start(
        &["-m", "passenger_wsgi.py"],
        &[
            ("LS_PYTHONBIN", &python),
            ("WSGI_ROOT", &dir),
            ("LSAPI_KEEP_LISTEN", "2"),
        ],
    );
    check_passenger(&w, fw, Path::new(&dir));
}

fn check_passenger(w: &Worker, fw: Fw, cwd: &Path) {
    let mut c = w.connect();
    let r = call_ok(&mut c, &get("/where", "", "/where"), b"");
    let text = r.text();
    assert_eq!(r.status, 200, "{text}\n{}", w.log_text());
    assert!(same_dir(field(&text, "prefix").unwrap(), venv()), "{text}");
    assert!(same_dir(field(&text, "cwd").unwrap(), cwd), "{text}");
    let framework = match fw {
        Fw::Flask => "flask",
        Fw::Django => "django",
    };
    assert_eq!(
        field(&text, "framework"),
        Some(format!("{}/{framework}/__init__.py", venv_site_packages().display()).as_str())
    );
    let r = call_ok(&mut c, &get("/whoami", "", "/whoami"), b"");
    assert_eq!(r.text(), format!("{} False |/whoami", w.pid()));
}

#[test]
fn passenger_wsgi_absolute_flask() {
    passenger_absolute(Fw::Flask);
}

#[test]
fn passenger_wsgi_absolute_django() {
    passenger_absolute(Fw::Django);
}

#[test]
fn passenger_wsgi_with_wsgi_root_flask() {
    passenger_wsgi_root(Fw::Flask);
}

#[test]
fn passenger_wsgi_with_wsgi_root_django() {
    passenger_wsgi_root(Fw::Django);
}
