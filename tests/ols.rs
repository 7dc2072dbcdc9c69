//! lswsgi behind a real OpenLiteSpeed 1.5.12, driven over HTTP with curl.
//!
//! Where the server comes from (nothing here names a path outside the
//! project; `.ci/run` sets these):
//! - `LSWSGI_OLS_PREFIX`: an installed OpenLiteSpeed (`PREFIX/bin/openlitespeed`);
//! - `LSWSGI_OLS_SRC`: a directory with `build-ols.sh` and the source archive
//!   it builds; the build goes to `target/ols` and is reused while the archive
//!   is the same (build-ols.sh checks that itself).
//!
//! With neither, every test here says so on one line and passes, unless
//! `LSWSGI_OLS_REQUIRED=1` (as in CI), which turns "not run" into a failure.
//!
//! Each test starts its own server from the one build: its own server root
//! (`LSWS_HOME`), pid file (`OLS_PID_FILE`), configuration written here,
//! loopback ports and vhost names, with a copy of the lswsgi binary under
//! test. Every process it started is stopped by pid: the server from its pid
//! file, detached workers from the `<socket>.pid` files the server writes,
//! Worker-mode processes from the "add child process pid" lines of its error
//! log; any process still carrying this server's marker variable afterwards is
//! killed and reported as a failure.

mod common;
#[path = "../bench/ols_kit.rs"]
mod ols_kit;
#[path = "../bench/ols_server.rs"]
mod ols_server;
#[path = "../bench/peer.rs"]
mod peer;

use common::{FAILING_ENVIRON, SHORT_ECHO};
use ols_kit::{find_or_build, Missing, Server};
use ols_server::{alive, free_port, sh, tail, terminate, unique, Ols, SOCKET_DIR};

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The worker built for this test run (debug profile under `cargo test`).
const TEST_LSWSGI: &str = env!("CARGO_BIN_EXE_lswsgi");
/// The server's dead-lock notice: no packet from the worker within 10 s.
const DEAD_LOCK: &str = "possible dead lock";

// ------------------------------------------------------------------ the build

/// The installation of `server` to run, or None (after one NOT RUN line
/// naming the test) when no server of that version was given.
fn ols_prefix(server: Server) -> Option<PathBuf> {
    // A failed build is stored too, so the other tests fail at once rather
    // than build again.
    static PREFIX: [OnceLock<Result<PathBuf, Missing>>; 2] = [OnceLock::new(), OnceLock::new()];
    let found = PREFIX[server as usize].get_or_init(|| find_or_build(server));
    match found {
        Ok(p) => Some(p.clone()),
        Err(Missing::Broken(why)) => panic!("{}: {why}", server.label()),
        Err(Missing::NotGiven(why)) => {
            let required = std::env::var("LSWSGI_OLS_REQUIRED").is_ok_and(|v| v == "1");
            assert!(!required, "LSWSGI_OLS_REQUIRED=1 but {why}");
            // One line per test (libtest names the thread after it), past
            // the harness's capture, in one write so that it is never split
            // by other output: scripts/test.sh counts these lines as tests
            // that did not run.
            let line = format!(
                "tests/ols.rs: NOT RUN: {} ({}): {why}\n",
                thread::current().name().unwrap_or("?"),
                server.label()
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

/// The lswsgi binary to put behind the server: the release build (what
/// ships; scripts/test.sh builds it before the tests) when it is newer than
/// every source file, otherwise this test run's own build, so a stale
/// release binary is never the one tested. `LSWSGI_OLS_WORKER` names
/// another binary instead (an older build, LiteSpeed's own lswsgi).
fn worker_binary() -> PathBuf {
    static CHOSEN: OnceLock<PathBuf> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut newest = None;
            let mut stack = vec![Path::new(ROOT).join("src")];
            for f in ["Cargo.toml", "Cargo.lock", "build.rs"] {
                newest = newest.max(mtime(&Path::new(ROOT).join(f)));
            }
            while let Some(dir) = stack.pop() {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else {
                        newest = newest.max(mtime(&path));
                    }
                }
            }
            if let Some(w) = std::env::var_os("LSWSGI_OLS_WORKER") {
                eprintln!("tests/ols.rs: worker under test: {w:?} (LSWSGI_OLS_WORKER)");
                return PathBuf::from(w);
            }
            let release = Path::new(TEST_LSWSGI)
                .parent()
                .and_then(|profile| profile.parent())
                .map(|target| target.join("release/lswsgi"));
            let chosen = match release {
                Some(r) if mtime(&r).is_some() && mtime(&r) >= newest => r,
                _ => PathBuf::from(TEST_LSWSGI),
            };
            eprintln!("tests/ols.rs: worker under test: {}", chosen.display());
            chosen
        })
        .clone()
}

// --------------------------------------------------------------- the set-up

/// One LSAPI external application with its own vhost and listener.
struct Site {
    /// vhost, extProcessor and listener name suffix.
    name: &'static str,
    /// Extra `env` lines of the extProcessor (LSAPI_CHILDREN, ...).
    env: &'static [&'static str],
    max_conns: u32,
    /// App Server contexts: (URI, startup file in the docroot), each with
    /// the site's `max_conns`.
    app_servers: &'static [(&'static str, &'static str)],
    /// The extProcessor's worker exits at once without serving (the server
    /// checks at start-up that the path exists and is executable).
    missing_worker: bool,
}

/// Makes `dir` a directory the workers' user (nobody) can write, and checks
/// it is one. Servers (of this and other test processes) start
/// concurrently: the directory is made under a unique name, given mode 1777
/// (as /tmp), then renamed into place, so nobody sees it with another mode;
/// when another got there first, theirs stays.
fn shared_socket_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if !dir.is_dir() {
        let parent = dir.parent().unwrap();
        let part = parent.join(format!(".lswsgi-sockdir-{}", unique()));
        std::fs::create_dir(&part).unwrap();
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o1777)).unwrap();
        if let Err(e) = std::fs::rename(&part, dir) {
            let _ = std::fs::remove_dir(&part);
            // rename(2) onto an existing (non-empty) directory: EEXIST or ENOTEMPTY.
            assert!(dir.is_dir(), "rename to {}: {e}", dir.display());
        }
    }
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).unwrap();
    assert!(
        m.mode() & 0o002 != 0 || m.uid() == 65534,
        "{} must be writable by nobody (the App Server sockets go there)",
        dir.display()
    );
}

impl Ols {
    /// `debug`: the server logs every LSAPI packet it receives (debugLevel 10).
    fn start(prefix: &Path, sites: &[Site], debug: bool) -> Ols {
        Ols::start_with(prefix, sites, debug, &worker_binary())
    }

    /// As `start`, with `worker` as the sites' lswsgi.
    fn start_with(prefix: &Path, sites: &[Site], debug: bool, worker: &Path) -> Ols {
        let mut ols = Ols::lay_out(prefix, worker, "lswsgi-ols");
        let root = ols.root.clone();
        // Writable by the worker's user (nobody): /crash records attempts here.
        let state = root.join("state");
        std::fs::create_dir_all(&state).unwrap();
        sh(Command::new("chmod").arg("1777").arg(&state));
        // App Server sockets live at a fixed place the server does not create.
        shared_socket_dir(Path::new(SOCKET_DIR));
        std::fs::write(root.join("fcgi-bin/dead"), "#!/bin/sh\nexit 1\n").unwrap();
        sh(Command::new("chmod")
            .arg("755")
            .arg(root.join("fcgi-bin/dead")));
        // The docroot: the test app, and the smoke apps at the top and in a
        // sub-directory (as scripts/smoke-lsws.sh is told to find them).
        let html = root.join("html");
        std::fs::create_dir_all(html.join("site/smoke")).unwrap();
        std::fs::copy(format!("{ROOT}/tests/apps/ols.wsgi"), html.join("ols.wsgi")).unwrap();
        for app in ["hello.wsgi", "environ.wsgi", "echo.wsgi"] {
            let from = format!("{ROOT}/scripts/apps/{app}");
            std::fs::copy(&from, html.join(app)).unwrap();
            std::fs::copy(&from, html.join("site/smoke").join(app)).unwrap();
        }
        // A broken copy for smoke-lsws.sh's failure report: hello as it is,
        // environ raising (500), echo losing the last byte.
        std::fs::create_dir_all(html.join("broken")).unwrap();
        std::fs::copy(
            format!("{ROOT}/scripts/apps/hello.wsgi"),
            html.join("broken/hello.wsgi"),
        )
        .unwrap();
        std::fs::write(html.join("broken/environ.wsgi"), FAILING_ENVIRON).unwrap();
        std::fs::write(html.join("broken/echo.wsgi"), SHORT_ECHO).unwrap();
        // The ASGI apps: .py for App Server startup files, .wsgi for the
        // script handler; the Django project with its ASGI entry point.
        std::fs::create_dir_all(html.join("asgi")).unwrap();
        for (from, to) in [
            ("raw.py", "raw.py"),
            ("raw.py", "raw.wsgi"),
            ("fastapi_app.py", "fastapi.wsgi"),
            ("starlette_app.py", "starlette.wsgi"),
        ] {
            std::fs::copy(
                format!("{ROOT}/tests/apps/asgi/{from}"),
                html.join("asgi").join(to),
            )
            .unwrap();
        }
        sh(Command::new("cp")
            .arg("-r")
            .arg(format!("{ROOT}/tests/apps/django_site"))
            .arg(&html));
        std::fs::copy(
            html.join("django_site/asgi_app.py"),
            html.join("django_site/asgi.wsgi"),
        )
        .unwrap();
        sh(Command::new("chmod").arg("-R").arg("a+rX").arg(&root));
        // The server, running as nobody, swaps large request bodies (a
        // chunked one it de-chunks, 1.9.1) to files there.
        sh(Command::new("chown")
            .arg("nobody:nogroup")
            .arg(root.join("tmp/swap")));
        // 1.9.1 opens <location>stderr.log as the worker's user (the
        // location belongs to the site's user on a host).
        std::fs::write(html.join("stderr.log"), "").unwrap();
        sh(Command::new("chown")
            .arg("nobody:nogroup")
            .arg(html.join("stderr.log")));

        let (id, marker) = (ols.id.clone(), ols.marker.clone());
        let r = root.display();
        let (level, debug) = if debug { ("DEBUG", 10) } else { ("INFO", 0) };
        let mut conf = ols.server_conf(
            "lswsgi-ols-test",
            level,
            debug,
            "accessLog logs/access.log {\n rollingSize 200M\n keepDays 1\n compressArchive 0\n}\n",
            " maxReqBodySize 2047M\n maxDynRespSize 2047M\n maxReqHeaderSize 65536\n",
        );
        for site in sites {
            let name = format!("l{id}{}", site.name);
            let port = ols.add_listener(name.clone());
            let mut env = format!(" env {marker}\n env OLS_STATE={}\n", state.display());
            let bin = if site.missing_worker {
                "dead"
            } else {
                "lswsgi"
            };
            for e in site.env {
                let _ = writeln!(env, " env {e}");
            }
            let _ = write!(
                conf,
                "extProcessor {name} {{\n type lsapi\n address uds:/{r}/tmp/{name}.sock\n\
                 maxConns {mc}\n{env} initTimeout 60\n retryTimeout 0\n persistConn 1\n\
                 pcKeepAliveTimeout 60\n respBuffer 0\n autoStart 1\n path {r}/fcgi-bin/{bin}\n\
                 backlog 100\n instances 1\n}}\n\
                 virtualHost {name} {{\n vhRoot {r}/\n configFile {r}/conf/vhosts/{name}.conf\n\
                 allowSymbolLink 1\n enableScript 1\n restrained 0\n setUIDMode 0\n}}\n\
                 listener {name} {{\n address 127.0.0.1:{port}\n secure 0\n map {name} *\n}}\n",
                mc = site.max_conns
            );
            let mut vh = format!(
                "docRoot {r}/html/\nenableGzip 0\n\
                 scriptHandler {{\n add lsapi:{name} wsgi\n}}\n\
                 accessLog {r}/logs/access.log {{\n useServer 1\n}}\n"
            );
            for (uri, startup) in site.app_servers {
                let _ = write!(
                    vh,
                    "context {uri} {{\n type appserver\n location {r}/html/\n\
                     binPath {r}/fcgi-bin/lswsgi\n appType wsgi\n startupFile {startup}\n\
                     maxConns {mc}\n env {marker}\n env OLS_STATE={}\n env APP_MARKER=from-context-env\n}}\n",
                    state.display(),
                    mc = site.max_conns
                );
            }
            vh.push_str("rewrite {\n enable 0\n}\n");
            std::fs::write(root.join(format!("conf/vhosts/{name}.conf")), vh).unwrap();
        }
        std::fs::write(root.join("conf/httpd_config.conf"), conf).unwrap();

        ols.launch();
        ols
    }

    /// `http://127.0.0.1:PORT` of a site.
    fn base(&self, site: &str) -> String {
        let port = self
            .ports
            .iter()
            .find(|(n, _)| n.ends_with(site))
            .map(|(_, p)| *p)
            .unwrap();
        format!("http://127.0.0.1:{port}")
    }

    fn vhost(&self, site: &str) -> String {
        self.ports
            .iter()
            .find(|(n, _)| n.ends_with(site))
            .map(|(n, _)| n.clone())
            .unwrap()
    }

    fn logs(&self) -> String {
        format!(
            "--- error.log (tail)\n{}\n--- stderr.log (tail)\n{}",
            tail(&self.error_log(), 40),
            tail(&self.stderr_log(), 20)
        )
    }
}

// ---------------------------------------------------------------- HTTP (curl)

struct Resp {
    status: u32,
    headers: String,
    body: Vec<u8>,
    secs: f64,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// One request with curl; `args` go before the URL.
fn curl(url: &str, args: &[&str], max_secs: u32) -> Resp {
    let dir = std::env::temp_dir().join(format!("lswsgi-ols-curl-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let (head, body) = (dir.join("head"), dir.join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", &max_secs.to_string(), "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code} %{time_total}"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl (apt-get install curl)");
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut f = w.split_whitespace();
    let resp = Resp {
        status: f.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        secs: f.next().and_then(|s| s.parse().ok()).unwrap_or(0.0),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    if resp.status == 0 {
        eprintln!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    resp
}

/// `n` GETs of `url` over one connection (curl reuses it between the URLs
/// of one call): per request (status, X-Pid header), and the number of
/// connections curl opened.
fn keep_alive(url: &str, n: usize) -> (Vec<(u32, String)>, usize) {
    keep_alive_header(url, n, "x-pid")
}

/// As `keep_alive`, keeping response header `header` instead of X-Pid.
fn keep_alive_header(url: &str, n: usize, header: &str) -> (Vec<(u32, String)>, usize) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120"]).args([
        "-w",
        &format!("%{{http_code}} %{{num_connects}} %header{{{header}}}\\n"),
    ]);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run curl");
    let mut rows = Vec::new();
    let mut connects = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        rows.push((
            f.first().and_then(|s| s.parse().ok()).unwrap_or(0),
            f.get(2).unwrap_or(&"").to_string(),
        ));
        connects += f.get(1).and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
    }
    while rows.len() < n {
        rows.push((0, String::new()));
    }
    (rows, connects)
}

/// `clients` concurrent keep-alive clients, `each` requests apiece.
fn concurrent(url: &str, clients: usize, each: usize) -> Vec<(u32, String)> {
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.to_string();
            thread::spawn(move || keep_alive(&url, each).0)
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn not_ok(rows: &[(u32, String)]) -> Vec<u32> {
    rows.iter().map(|r| r.0).filter(|&s| s != 200).collect()
}

fn pids(rows: &[(u32, String)]) -> BTreeSet<String> {
    rows.iter()
        .filter(|r| !r.1.is_empty())
        .map(|r| r.1.clone())
        .collect()
}

// --------------------------------------------------------------- the checks

/// Failed checks of one test, reported together at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, name: &str, ok: bool, detail: impl AsRef<str>) {
        let line = format!(
            "{:<4} {name}: {}",
            if ok { "ok" } else { "FAIL" },
            detail.as_ref()
        );
        eprintln!("{line}");
        if !ok {
            self.0.push(line);
        }
    }
}

fn json_field(body: &str, key: &str) -> Option<String> {
    // The app's /env is a flat JSON object of strings, bools and lists;
    // python3 is always there (the worker embeds it), so let it parse.
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); \
             print(v if isinstance(v,str) else json.dumps(v), end='') if v is not None else sys.exit(1)",
            key,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The checks both process models must pass, on site `site` of `ols`.
fn common_checks(ols: &Ols, site: &str, multiprocess: bool, f: &mut Failures) {
    let base = ols.base(site);
    let app = format!("{base}/ols.wsgi");
    let r = curl(&app, &[], 30);
    f.check(
        "hello",
        r.status == 200
            && r.text() == "Hello from lswsgi!\n"
            && r.header("Server").as_deref() == Some("LiteSpeed"),
        format!(
            "{} {:?} Server: {:?}",
            r.status,
            r.text(),
            r.header("Server")
        ),
    );

    // Responses without any header, which the server used to answer with
    // its own 500 ("Premature end of response header").
    let r = curl(&format!("{app}/bare"), &[], 30);
    f.check(
        "a response without headers",
        r.status == 200 && r.text() == "bare body\n" && r.header("Status").is_none(),
        format!(
            "{} {:?} Status: {:?}",
            r.status,
            r.text(),
            r.header("Status")
        ),
    );
    let r = curl(&format!("{app}/bare?204"), &[], 30);
    f.check(
        "a 204 without headers",
        r.status == 204 && r.text().is_empty() && r.header("Status").is_none(),
        format!(
            "{} {:?} Status: {:?}",
            r.status,
            r.text(),
            r.header("Status")
        ),
    );

    let r = curl(
        &format!("{app}/env/a/b%20c?x=1&y=%20z"),
        &[
            "-H",
            "X-Custom: v1",
            "-H",
            "X-Multi: one",
            "-H",
            "X-Multi: two",
        ],
        30,
    );
    let body = r.text();
    let want = [
        ("SCRIPT_NAME", "/ols.wsgi"),
        ("PATH_INFO", "/env/a/b c"),
        ("QUERY_STRING", "x=1&y=%20z"),
        ("REQUEST_METHOD", "GET"),
        ("HTTP_X_CUSTOM", "v1"),
        ("HTTP_X_MULTI", "one, two"),
        ("wsgi.url_scheme", "http"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        (
            "wsgi.multiprocess",
            if multiprocess { "true" } else { "false" },
        ),
    ];
    let bad: Vec<String> = want
        .iter()
        .filter_map(|(k, v)| {
            let got = json_field(&body, k);
            (got.as_deref() != Some(*v)).then(|| format!("{k}={got:?} (want {v:?})"))
        })
        .collect();
    f.check(
        "environ: SCRIPT_NAME/PATH_INFO/QUERY_STRING/headers",
        r.status == 200 && bad.is_empty(),
        format!("{} {}", r.status, bad.join("; ")),
    );

    let data_path = ols.root.join("state/post.bin");
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&data_path, &data).unwrap();
    let r = curl(
        &format!("{app}/echo"),
        &[
            "--data-binary",
            &format!("@{}", data_path.display()),
            "-H",
            "Content-Type: application/octet-stream",
        ],
        60,
    );
    f.check(
        "1 MiB POST echoed byte-exact",
        r.status == 200 && r.body == data,
        format!("{} {} bytes back", r.status, r.body.len()),
    );

    let (rows, connects) = keep_alive(&app, 200);
    f.check(
        "200 keep-alive requests",
        not_ok(&rows).is_empty() && connects == 1,
        format!("{} not 200, {connects} connection(s)", not_ok(&rows).len()),
    );

    // The slow request runs alongside the remaining checks: 13 s, past the
    // server's 10 s deadline for the worker's first packet. It starts after
    // the keep-alive run, so it goes over a pooled connection that has
    // served requests before (a forked child's first request is covered by
    // its PID notice, later ones only by REQ_RECEIVED).
    let slow = {
        let url = format!("{app}/sleep?13");
        thread::spawn(move || curl(&url, &[], 60))
    };
    thread::sleep(Duration::from_millis(200));

    let rows = concurrent(&app, 8, 25);
    f.check(
        "8 concurrent keep-alive clients, maxConns 4",
        not_ok(&rows).is_empty() && rows.len() == 200,
        format!(
            "{} of {} not 200: {:?}",
            not_ok(&rows).len(),
            rows.len(),
            not_ok(&rows)
        ),
    );

    let r = curl(&format!("{app}/raise"), &[], 30);
    let traced = wait_for(Duration::from_secs(5), || {
        (ols.error_log() + &ols.stderr_log()).contains("deliberate failure before the headers")
    });
    f.check(
        "exception before headers: 500 page, traceback in the server's log",
        r.status == 500 && traced,
        format!("{} traceback logged: {traced}", r.status),
    );

    // 1.9.1 drops the connection on a STDERR packet over 16384 bytes.
    let r = curl(&format!("{app}/errors?100000"), &[], 30);
    let logged = wait_for(Duration::from_secs(5), || {
        (ols.error_log() + &ols.stderr_log()).contains("ols test: 100000 bytes to wsgi.errors")
    });
    f.check(
        "100 kB to wsgi.errors in one write: 200, logged",
        r.status == 200 && r.text() == "logged\n" && logged,
        format!("{} {:?} logged: {logged}", r.status, r.text()),
    );

    // Chunked request bodies. The server de-chunks them and sends the length
    // when the body has all arrived before it starts the request: always for
    // a small one. OpenLiteSpeed 1.9.1 may start a larger one early, with
    // reqBodyLen -1 and no end marker, which no worker can frame: the worker
    // refuses it (a logged protocol error; the server answers 503 after its
    // retries), never answering 200 with a body cut short.
    let small = ols.root.join("state/small.bin");
    std::fs::write(&small, &data[..1000]).unwrap();
    let chunked = |file: &Path| {
        curl(
            &format!("{app}/echo"),
            &[
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &format!("@{}", file.display()),
            ],
            60,
        )
    };
    let r = chunked(&small);
    f.check(
        "1000-byte chunked POST echoed byte-exact",
        r.status == 200 && r.body == data[..1000],
        format!("{} {} bytes back", r.status, r.body.len()),
    );
    let r = chunked(&data_path);
    let refused = r.status == 503
        && wait_for(Duration::from_secs(5), || {
            ols.stderr_log().contains("invalid reqBodyLen -1")
        });
    f.check(
        "1 MiB chunked POST: echoed byte-exact, or refused when sent without a length",
        (r.status == 200 && r.body == data) || refused,
        format!(
            "{} {} bytes back; refused with 'invalid reqBodyLen -1' logged: {refused}",
            r.status,
            r.body.len()
        ),
    );

    let token = unique();
    let r = curl(&format!("{app}/crash?{token}"), &[], 60);
    let attempts = std::fs::read_to_string(ols.root.join(format!("state/crash-{token}")))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let after = curl(&app, &[], 30);
    f.check(
        "worker crash mid-request: retried (2 or 3 attempts), 503, still serving",
        r.status == 503 && (2..=3).contains(&attempts) && after.status == 200,
        format!(
            "{} after {attempts} attempt(s); next request {}",
            r.status, after.status
        ),
    );

    let r = slow.join().unwrap();
    let vhost = ols.vhost(site);
    let dead: Vec<String> = ols
        .error_log()
        .lines()
        .filter(|l| l.contains(DEAD_LOCK) && l.contains(&vhost))
        .map(String::from)
        .collect();
    f.check(
        "13 s request: 200, no dead-lock notice",
        r.status == 200 && r.text() == "slept 13\n" && dead.is_empty(),
        format!(
            "{} after {:.1} s; dead-lock lines: {dead:?}",
            r.status, r.secs
        ),
    );
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// LSAPI_MAX_REQS=5: the worker ends its connections with CONN_CLOSE every
/// 5 requests; the server reconnects and no client request fails.
fn max_reqs_check(ols: &Ols, site: &str, f: &mut Failures) {
    let url = format!("{}/ols.wsgi/pid", ols.base(site));
    let rows = concurrent(&url, 3, 20);
    let seen = pids(&rows);
    f.check(
        "LSAPI_MAX_REQS=5: CONN_CLOSE, no failed request",
        not_ok(&rows).is_empty() && seen.len() >= 60 / 5,
        format!(
            "{} of 60 not 200; {} worker pids (at least 12 = a new process every 5)",
            not_ok(&rows).len(),
            seen.len()
        ),
    );
}

/// scripts/smoke-lsws.sh against the real server, every URL given.
fn smoke(args: &[String], f: &mut Failures, name: &str) {
    let out = Command::new("bash")
        .arg(format!("{ROOT}/scripts/smoke-lsws.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/smoke-lsws.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok =
        out.status.success() && stdout.contains("PASSED") && stdout.contains("server: LiteSpeed");
    let detail = if ok {
        stdout.lines().last().unwrap_or("").to_string()
    } else {
        format!(
            "{:?}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    f.check(name, ok, detail);
}

/// scripts/smoke-lsws.sh must report what is broken: an application that
/// fails or corrupts the body, a worker the server cannot start (503),
/// nothing listening (curl exit 7).
fn smoke_failures(ols: &Ols, f: &mut Failures) {
    let broken = format!("{}/broken/", ols.base("wk"));
    let gone = format!("{}/", ols.base("gone"));
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let out = Command::new("bash")
        .arg(format!("{ROOT}/scripts/smoke-lsws.sh"))
        .args(["--timeout", "30", &broken, &gone, &dead])
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/smoke-lsws.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let result = |url: &str, check: &str| -> String {
        stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.len() >= 3 && w[0] == url && w[1] == check)
            .map(|w| w[2].to_string())
            .unwrap_or_default()
    };
    let mut bad = Vec::new();
    for (url, check, want) in [
        (&broken, "hello", "PASS"),
        (&broken, "repeat", "PASS"),
        (&broken, "environ", "FAIL"),
        (&broken, "echo-text", "FAIL"),
        (&broken, "echo-binary", "FAIL"),
    ] {
        if result(url, check) != want {
            bad.push(format!("{url} {check} not {want}"));
        }
    }
    for url in [&gone, &dead] {
        for check in ["hello", "environ", "echo-text", "echo-binary", "repeat"] {
            if result(url, check) != "FAIL" {
                bad.push(format!("{url} {check} not FAIL"));
            }
        }
    }
    for text in [
        "status 500",
        "status 503",
        "curl exit 7",
        "body is 199999 bytes instead of 200000",
        "FAILED: 13 of 15 checks",
    ] {
        if !stdout.contains(text) {
            bad.push(format!("no {text:?}"));
        }
    }
    let traced = ols
        .error_log()
        .contains("deliberately broken for the smoke test");
    f.check(
        "smoke-lsws.sh reports a broken app, a missing worker, a dead port",
        out.status.code() == Some(1) && bad.is_empty() && traced,
        if bad.is_empty() && traced {
            stdout.lines().last().unwrap_or("").to_string()
        } else {
            format!(
                "{:?} {bad:?} traceback logged: {traced}\n{stdout}",
                out.status
            )
        },
    );
}

fn finish(mut ols: Ols, f: Failures) {
    let logs = ols.logs();
    let leaked = ols.stop();
    let mut f = f;
    f.check(
        "every process stopped by its pid",
        leaked.is_empty(),
        format!("found by marker only: {leaked:?}"),
    );
    assert!(f.0.is_empty(), "{}\n{logs}", f.0.join("\n"));
}

// ------------------------------------------------------------------ tests

/// `per_server!(check => test_1_5, test_1_9)`: the test `check` once per
/// OpenLiteSpeed release.
macro_rules! per_server {
    ($($check:ident => $v15:ident, $v19:ident;)*) => {$(
        #[test]
        fn $v15() {
            $check(Server::V1_5)
        }
        #[test]
        fn $v19() {
            $check(Server::V1_9)
        }
    )*};
}

per_server! {
    smoke_lsws_baseline_behind_openlitespeed =>
        smoke_lsws_baseline_behind_ols_1_5, smoke_lsws_baseline_behind_ols_1_9;
    worker_mode_behind_openlitespeed => worker_mode_behind_ols_1_5, worker_mode_behind_ols_1_9;
    process_group_mode_behind_openlitespeed =>
        process_group_mode_behind_ols_1_5, process_group_mode_behind_ols_1_9;
    max_busy_worker_behind_openlitespeed =>
        max_busy_worker_behind_ols_1_5, max_busy_worker_behind_ols_1_9;
    shedding_mid_request_loses_no_request_behind_openlitespeed =>
        shedding_mid_request_loses_no_request_behind_ols_1_5,
        shedding_mid_request_loses_no_request_behind_ols_1_9;
    asgi_behind_openlitespeed => asgi_behind_ols_1_5, asgi_behind_ols_1_9;
    wrong_python_virtualenv_behind_openlitespeed =>
        wrong_python_virtualenv_behind_ols_1_5, wrong_python_virtualenv_behind_ols_1_9;
}

/// Servers start concurrently, each making sure the App Server socket
/// directory exists: none may see it before it has its final mode.
#[test]
fn socket_dir_is_never_seen_half_made() {
    let base = std::env::temp_dir().join(format!("lswsgi-ols-sockdir-{}", unique()));
    for round in 0..20 {
        let dir = base.join(round.to_string());
        std::fs::create_dir_all(&base).unwrap();
        let go = std::sync::Barrier::new(8);
        thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    go.wait();
                    shared_socket_dir(&dir);
                });
            }
        });
    }
    std::fs::remove_dir_all(&base).unwrap();
}

fn worker_mode_behind_openlitespeed(server: Server) {
    let Some(prefix) = ols_prefix(server) else {
        return;
    };
    let started = Instant::now();
    let ols = Ols::start(
        &prefix,
        &[
            Site {
                name: "wk",
                env: &[],
                max_conns: 4,
                app_servers: &[],
                missing_worker: false,
            },
            Site {
                name: "wkmr",
                env: &["LSAPI_MAX_REQS=5"],
                max_conns: 4,
                app_servers: &[],
                missing_worker: false,
            },
            Site {
                name: "gone",
                env: &[],
                max_conns: 1,
                app_servers: &[],
                missing_worker: true,
            },
        ],
        false,
    );
    let mut f = Failures::default();
    common_checks(&ols, "wk", false, &mut f);
    max_reqs_check(&ols, "wkmr", &mut f);
    let base = ols.base("wk");
    smoke(
        &[format!("{base}/"), format!("{base}/site/smoke")],
        &mut f,
        "smoke-lsws.sh, script handler",
    );
    smoke_failures(&ols, &mut f);
    eprintln!("worker mode: {:.1} s", started.elapsed().as_secs_f64());
    finish(ols, f);
}

fn process_group_mode_behind_openlitespeed(server: Server) {
    let Some(prefix) = ols_prefix(server) else {
        return;
    };
    let started = Instant::now();
    let ols = Ols::start(
        &prefix,
        &[
            Site {
                name: "pg",
                env: &["LSAPI_CHILDREN=4"],
                max_conns: 4,
                app_servers: &[
                    ("/app/", "ols.wsgi"),
                    ("/smoke-hello/", "hello.wsgi"),
                    ("/smoke-environ/", "environ.wsgi"),
                    ("/smoke-echo/", "echo.wsgi"),
                ],
                missing_worker: false,
            },
            Site {
                name: "pgmr",
                env: &["LSAPI_CHILDREN=4", "LSAPI_MAX_REQS=5"],
                max_conns: 4,
                app_servers: &[],
                missing_worker: false,
            },
        ],
        false,
    );
    let mut f = Failures::default();
    common_checks(&ols, "pg", true, &mut f);
    max_reqs_check(&ols, "pgmr", &mut f);

    // The App Server context: the server runs `lswsgi -m <location><startupFile>`.
    let base = ols.base("pg");
    let r = curl(&format!("{base}/app/env?q=1"), &[], 30);
    let body = r.text();
    let cmdline = json_field(&body, "process.cmdline").unwrap_or_default();
    let startup = format!("{}/html/ols.wsgi", ols.root.display());
    let got = |k: &str| json_field(&body, k).unwrap_or_default();
    f.check(
        "App Server context with -m",
        r.status == 200
            && cmdline.contains("\"-m\"")
            && cmdline.contains(&startup)
            && got("SCRIPT_NAME") + &got("PATH_INFO") == "/app/env"
            && got("QUERY_STRING") == "q=1"
            && got("process.environ.APP_MARKER") == "from-context-env",
        format!(
            "{} cmdline {cmdline} SCRIPT_NAME={:?} PATH_INFO={:?} APP_MARKER={:?}",
            r.status,
            got("SCRIPT_NAME"),
            got("PATH_INFO"),
            got("process.environ.APP_MARKER")
        ),
    );
    smoke(
        &[format!("{base}/"), format!("{base}/site/smoke")],
        &mut f,
        "smoke-lsws.sh, script handler",
    );
    smoke(
        &[
            "--hello".into(),
            "smoke-hello/".into(),
            "--environ".into(),
            "smoke-environ/".into(),
            "--echo".into(),
            "smoke-echo/".into(),
            format!("{base}/"),
        ],
        &mut f,
        "smoke-lsws.sh, App Server contexts",
    );
    eprintln!(
        "process-group mode: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    finish(ols, f);
}

/// LSAPI_MAX_BUSY_WORKER as lsapilib: unset = never shed, N > 0 = shed when
/// N children are busy. Seen from the server's side: at debugLevel 10 it
/// logs every packet it receives, CONN_CLOSE included. (The pids cannot
/// show it: a detached group runs with LSAPI_KEEP_LISTEN=2, so a child that
/// shed its connection accepts the next one itself.)
fn max_busy_worker_behind_openlitespeed(server: Server) {
    let Some(prefix) = ols_prefix(server) else {
        return;
    };
    let ols = Ols::start(
        &prefix,
        &[
            Site {
                name: "busy0",
                env: &["LSAPI_CHILDREN=8"],
                max_conns: 8,
                app_servers: &[],
                missing_worker: false,
            },
            Site {
                name: "busy2",
                env: &["LSAPI_CHILDREN=8", "LSAPI_MAX_BUSY_WORKER=2"],
                max_conns: 8,
                app_servers: &[],
                missing_worker: false,
            },
        ],
        true,
    );
    let mut f = Failures::default();
    for (site, shed) in [("busy0", false), ("busy2", true)] {
        let url = format!("{}/ols.wsgi/sleep?0.05", ols.base(site));
        let rows = concurrent(&url, 8, 30);
        let tag = format!("#{}:lsapi]", ols.vhost(site));
        let closes = ols
            .error_log()
            .lines()
            .filter(|l| l.contains(&tag) && l.contains("received LSAPI_CONN_CLOSE"))
            .count();
        let ok = not_ok(&rows).is_empty() && if shed { closes > 0 } else { closes == 0 };
        f.check(
            &format!("8 connections, LSAPI_CHILDREN=8, {site}"),
            ok,
            format!(
                "{} of {} not 200; {closes} CONN_CLOSE received by the server ({})",
                not_ok(&rows).len(),
                rows.len(),
                if shed {
                    "LSAPI_MAX_BUSY_WORKER=2: some"
                } else {
                    "unset: none"
                }
            ),
        );
    }
    finish(ols, f);
}

/// Shedding that starts while a request runs (LSAPI_MAX_BUSY_WORKER reached
/// meanwhile): the worker's CONN_CLOSE then follows the RESP_END in a write
/// of its own. With more clients than the server's connections, the server
/// hands a waiting request to a connection the moment its RESP_END
/// arrives, sometimes before the CONN_CLOSE: none of those requests may be
/// lost (the server sends them again: not yet confirmed by REQ_RECEIVED, so
/// never run).
fn shedding_mid_request_loses_no_request_behind_openlitespeed(server: Server) {
    let Some(prefix) = ols_prefix(server) else {
        return;
    };
    let ols = Ols::start(
        &prefix,
        &[Site {
            name: "shed",
            env: &["LSAPI_CHILDREN=4", "LSAPI_MAX_BUSY_WORKER=2"],
            max_conns: 4,
            app_servers: &[],
            missing_worker: false,
        }],
        true,
    );
    let mut f = Failures::default();
    let url = format!("{}/ols.wsgi/sleep?0.03", ols.base("shed"));
    let rows = concurrent(&url, 24, 40);
    let tag = format!("#{}:lsapi]", ols.vhost("shed"));
    let log = ols.error_log();
    let closes = log
        .lines()
        .filter(|l| l.contains(&tag) && l.contains("received LSAPI_CONN_CLOSE"))
        .count();
    // A request the server sent on a connection the worker was closing:
    // the server sees the reset before any REQ_RECEIVED and sends it again.
    let resent = log
        .lines()
        .filter(|l| l.contains(&tag) && l.contains("confirmed 0, error"))
        .count();
    f.check(
        "24 clients on 4 connections, LSAPI_MAX_BUSY_WORKER=2",
        not_ok(&rows).is_empty() && closes > 0,
        format!(
            "{} of {} not 200 ({:?}); {closes} CONN_CLOSE received by the server, \
             {resent} requests met a closing connection and were sent again",
            not_ok(&rows).len(),
            rows.len(),
            not_ok(&rows).iter().take(10).collect::<Vec<_>>()
        ),
    );
    finish(ols, f);
}

// ------------------------------------------------- OpenLiteSpeed 1.9.1 only

/// Clients requesting one URL over keep-alive connections, without pause,
/// until stopped: (status, kept header) of every request, in order per
/// client.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<thread::JoinHandle<Vec<(u32, String)>>>,
}

impl Load {
    fn start(url: &str, clients: usize, header: &'static str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (url, stop) = (url.to_string(), stop.clone());
                thread::spawn(move || {
                    let mut rows = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        rows.extend(keep_alive_header(&url, 10, header).0);
                    }
                    rows
                })
            })
            .collect();
        Load { stop, clients }
    }

    fn finish(self) -> Vec<Vec<(u32, String)>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect()
    }
}

/// The parent of `pid` (0 when it is gone).
fn ppid(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The live child processes of `pid` (forked by any of its threads).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out.retain(|&p| alive(p));
    out
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim_end()
                .to_string()
        })
        .unwrap_or_default()
}

/// 1.9.1 runs every App Server context detached with
/// `LSAPI_CHILDREN=<maxConns>`, 1 included, and
/// `LSAPI_PGRP_MAX_IDLE=2147483647`, from binPath's folder, with stderr
/// handed over as fd 2: contexts of maxConns 1 and 2 serve concurrent
/// clients with no more processes than that, stay up while idle, and log a
/// traceback.
#[test]
fn app_server_max_conns_1_and_2_behind_ols_1_9() {
    let Some(prefix) = ols_prefix(Server::V1_9) else {
        return;
    };
    let site = |name, max_conns, app_servers| Site {
        name,
        env: &[],
        max_conns,
        app_servers,
        missing_worker: false,
    };
    let ols = Ols::start(
        &prefix,
        &[
            site("as1", 1, &[("/one/", "ols.wsgi")]),
            site("as2", 2, &[("/two/", "ols.wsgi")]),
        ],
        false,
    );
    let mut f = Failures::default();
    for (uri, max) in [("/one/", 1usize), ("/two/", 2)] {
        let base = ols.base(&format!("as{max}"));
        // The group's parent: the parent of the process that serves.
        let first = curl(&format!("{base}{uri}pid"), &[], 30);
        let parent = first
            .header("X-Pid")
            .and_then(|p| p.parse().ok())
            .map(ppid)
            .unwrap_or(0);
        let load = {
            let url = format!("{base}{uri}sleep?0.1");
            thread::spawn(move || concurrent(&url, 4, 10))
        };
        // Never more than maxConns processes serve at once: the children of
        // a ProcessGroup parent (they come and go: LSAPI_MAX_IDLE_CHILDREN
        // ends surplus ones), or the worker alone when its parent is the
        // server's lscgid.
        let group = cmdline(parent).contains("fcgi-bin/lswsgi");
        let mut most = 0;
        while !load.is_finished() {
            if group {
                most = most.max(children(parent).len());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let rows = load.join().unwrap();
        if !group {
            most = pids(&rows).len();
        }
        f.check(
            &format!("maxConns {max}: 4 concurrent clients"),
            not_ok(&rows).is_empty() && (1..=max).contains(&most),
            format!(
                "{} of {} not 200; at most {most} processes under the group's parent {parent} \
                 ({}) at once (want 1..={max}); served by {:?}",
                not_ok(&rows).len(),
                rows.len(),
                cmdline(parent),
                pids(&rows),
            ),
        );
        // LSAPI_PGRP_MAX_IDLE=2147483647: no limit, so the group (the
        // parent, or the worker serving alone) is the same after a pause.
        let before: BTreeSet<i32> = if group {
            BTreeSet::from([parent])
        } else {
            pids(&rows).iter().filter_map(|p| p.parse().ok()).collect()
        };
        thread::sleep(Duration::from_secs(3));
        let (rows, _) = keep_alive(&format!("{base}{uri}pid"), 5);
        let after: BTreeSet<i32> = pids(&rows)
            .iter()
            .filter_map(|p| p.parse().ok())
            .map(|p| if group { ppid(p) } else { p })
            .collect();
        f.check(
            &format!("maxConns {max}: same group after 3 s idle"),
            not_ok(&rows).is_empty() && parent > 0 && before.len() == 1 && after == before,
            format!(
                "{} not 200; {before:?}, then {after:?}",
                not_ok(&rows).len()
            ),
        );
    }
    let r = curl(&format!("{}/one/raise", ols.base("as1")), &[], 30);
    let traced = wait_for(Duration::from_secs(5), || {
        (ols.error_log() + &ols.stderr_log()).contains("deliberate failure before the headers")
    });
    // The worker's own log goes to fd 2, which lscgid opened as
    // <location>stderr.log.
    let own_log = std::fs::read_to_string(ols.root.join("html/stderr.log")).unwrap_or_default();
    f.check(
        "exception before headers: 500, traceback in the server's log; worker log on fd 2",
        r.status == 500 && traced && own_log.contains("process group: up to 2 children"),
        format!(
            "{} traceback logged: {traced}; <location>stderr.log:\n{}",
            r.status,
            tail(&own_log, 10)
        ),
    );
    finish(ols, f);
}

/// A versioned app for the restart test: answers its version in X-Version,
/// after 0.2 s, so that requests are in flight when the old group is told
/// to stop.
fn versioned_app(version: &str) -> String {
    format!(
        "import os, time\n\
         def application(environ, start_response):\n    \
             time.sleep(0.2)\n    \
             start_response('200 OK', [('Content-Type', 'text/plain'), \
             ('X-Version', '{version}'), ('X-Pid', str(os.getpid()))])\n    \
             return [b'{version}\\n']\n"
    )
}

/// Touching `<location>tmp/restart.txt` under load: the server (checking
/// every 10 s) removes the socket, SIGTERMs the old group and starts a new
/// one; no request fails, the new code is served afterwards and the old
/// group goes away.
#[test]
fn restart_txt_under_load_behind_ols_1_9() {
    let Some(prefix) = ols_prefix(Server::V1_9) else {
        return;
    };
    let ols = Ols::start(
        &prefix,
        &[Site {
            name: "rs",
            env: &[],
            max_conns: 2,
            app_servers: &[("/app/", "versioned.wsgi")],
            missing_worker: false,
        }],
        false,
    );
    let html = ols.root.join("html");
    std::fs::write(html.join("versioned.wsgi"), versioned_app("v1")).unwrap();
    let url = format!("{}/app/", ols.base("rs"));
    let first = curl(&url, &[], 30);
    let old_parent = first
        .header("X-Pid")
        .and_then(|p| p.parse().ok())
        .map(ppid)
        .unwrap_or(0);
    let load = Load::start(&url, 3, "x-version");
    thread::sleep(Duration::from_secs(2));
    std::fs::write(html.join("versioned.wsgi"), versioned_app("v2")).unwrap();
    std::fs::create_dir_all(html.join("tmp")).unwrap();
    std::fs::write(html.join("tmp/restart.txt"), "").unwrap();
    let switched = wait_for(Duration::from_secs(45), || {
        curl(&url, &[], 30).header("X-Version").as_deref() == Some("v2")
    });
    // The load goes on until the old group has gone (its children finish
    // what they serve first), so it covers the whole switch.
    let old_gone = wait_for(Duration::from_secs(20), || !alive(old_parent));
    let rows: Vec<(u32, String)> = load.finish().into_iter().flatten().collect();
    let (after, _) = keep_alive_header(&url, 10, "x-version");
    let mut f = Failures::default();
    f.check(
        "restart.txt under load: no failed request, new code served, old group gone",
        first.status == 200
            && old_parent > 0
            && switched
            && not_ok(&rows).is_empty()
            && old_gone
            && after.iter().all(|r| r.0 == 200 && r.1 == "v2"),
        format!(
            "{} of {} not 200 {:?}; v2 served: {switched}; old parent {old_parent} gone: \
             {old_gone}; then {after:?}",
            not_ok(&rows).len(),
            rows.len(),
            not_ok(&rows)
        ),
    );
    finish(ols, f);
}

/// New in 1.9: the server restarts a detached worker whose binary's mtime
/// changed (an upgrade replacing fcgi-bin/lswsgi while it serves): no
/// request fails, and afterwards the new binary serves.
#[test]
fn binary_replaced_while_serving_behind_ols_1_9() {
    let Some(prefix) = ols_prefix(Server::V1_9) else {
        return;
    };
    let ols = Ols::start(
        &prefix,
        &[Site {
            name: "up",
            env: &["LSAPI_CHILDREN=4"],
            max_conns: 4,
            app_servers: &[],
            missing_worker: false,
        }],
        false,
    );
    // 0.2 s per request: requests are in flight when the group restarts.
    let url = format!("{}/ols.wsgi/sleep?0.2", ols.base("up"));
    let bin = ols.root.join("fcgi-bin/lswsgi");
    let exe = |pid: &str| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let load = Load::start(&url, 3, "x-pid");
    thread::sleep(Duration::from_secs(2));
    // As a package upgrade does: a new file renamed over the old one (its
    // mtime is now, seconds after the server started the old one).
    let new = ols.root.join("fcgi-bin/lswsgi.new");
    std::fs::copy(worker_binary(), &new).unwrap();
    std::fs::rename(&new, &bin).unwrap();
    let mut served_by = String::new();
    let switched = wait_for(Duration::from_secs(45), || {
        ols.error_log().contains("detected binary change") && {
            let r = curl(&url, &[], 30);
            served_by = r.header("X-Pid").map(|p| exe(&p)).unwrap_or_default();
            r.status == 200 && served_by == bin.display().to_string()
        }
    });
    thread::sleep(Duration::from_secs(2));
    let rows: Vec<(u32, String)> = load.finish().into_iter().flatten().collect();
    let mut f = Failures::default();
    f.check(
        "binary replaced under load: no failed request, the new binary serves",
        switched && not_ok(&rows).is_empty(),
        format!(
            "{} of {} not 200 {:?}; restart seen and a new process serving: {switched} \
             (last served by {served_by:?})",
            not_ok(&rows).len(),
            rows.len(),
            not_ok(&rows)
        ),
    );
    finish(ols, f);
}

/// smoke-lsws.sh --baseline passes on ours with no NOTE row and, when
/// LSWSGI_PEER_LSWSGI_SRC gives LiteSpeed's own lswsgi 2.1 (as in CI), on
/// that too, its PEP 3333 differences (read() without a size, PATH_INFO
/// repeating SCRIPT_NAME) shown as NOTE rows; without --baseline it fails.
fn smoke_lsws_baseline_behind_openlitespeed(server: Server) {
    let Some(prefix) = ols_prefix(server) else {
        return;
    };
    // Ours, and LiteSpeed's lswsgi (when given) behind a server of its own.
    let site = [Site {
        name: "base",
        env: &["LSAPI_CHILDREN=2"],
        max_conns: 2,
        app_servers: &[],
        missing_worker: false,
    }];
    let ours = Ols::start(&prefix, &site, false);
    // Built once for both servers' tests, which run at the same time.
    static LITESPEED: OnceLock<String> = OnceLock::new();
    let litespeed = std::env::var_os("LSWSGI_PEER_LSWSGI_SRC").map(|_| {
        let bin = LITESPEED.get_or_init(peer::litespeed_lswsgi);
        Ols::start_with(&prefix, &site, false, Path::new(bin))
    });
    let mut f = Failures::default();
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(format!("{ROOT}/scripts/smoke-lsws.sh"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/smoke-lsws.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let notes: Vec<String> = stdout
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 3 && w[2] == "NOTE").then(|| w[1].to_string())
            })
            .collect();
        (out.status.code(), stdout, notes)
    };
    let servers = [
        ("ours", Some(&ours), &[][..]),
        (
            "LiteSpeed's",
            litespeed.as_ref(),
            &["environ-path", "echo-read-all"][..],
        ),
    ];
    for (which, ols, want_notes) in servers {
        let Some(ols) = ols else { continue };
        let url = format!("{}/", ols.base("base"));
        let (code, stdout, notes) = run(&["--baseline", &url]);
        f.check(
            &format!("smoke-lsws.sh --baseline, {which} lswsgi"),
            code == Some(0)
                && stdout.contains("PASSED: all")
                && notes
                    .iter()
                    .map(String::as_str)
                    .eq(want_notes.iter().copied()),
            format!("{code:?} NOTE rows {notes:?} (want {want_notes:?})\n{stdout}"),
        );
        if which != "ours" {
            let (code, stdout, _) = run(&[&url]);
            f.check(
                "smoke-lsws.sh without --baseline fails on LiteSpeed's lswsgi",
                code == Some(1),
                format!("{code:?}\n{stdout}"),
            );
        }
    }
    if let Some(mut ls) = litespeed {
        let leaked = ls.stop();
        f.check(
            "every process of LiteSpeed's lswsgi's server stopped by its pid",
            leaked.is_empty(),
            format!("found by marker only: {leaked:?}"),
        );
    }
    finish(ours, f);
}

// ------------------------------------------------------------- ASGI (issue 24)

/// A `'static` env list for a [`Site`] (each test starts its server once).
fn leak_env(vars: Vec<String>) -> &'static [&'static str] {
    let v: Vec<&'static str> = vars
        .into_iter()
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect();
    Box::leak(v.into_boxed_slice())
}

/// FastAPI, Starlette and Django's ASGI handler as script handlers of an
/// External App (Worker and ProcessGroup mode), and a plain ASGI app as an
/// App Server startup file, all through the real server.
fn asgi_behind_openlitespeed(server: Server) {
    let Some(prefix) = ols_prefix(server) else {
        return;
    };
    let python = common::venv_python_with("fastapi, starlette, pydantic, django");
    let bin = format!("LS_PYTHONBIN={python}");
    let ols = Ols::start(
        &prefix,
        &[
            Site {
                name: "asgiw",
                env: leak_env(vec![bin.clone()]),
                max_conns: 4,
                app_servers: &[("/raw/", "asgi/raw.py")],
                missing_worker: false,
            },
            Site {
                name: "asgipg",
                env: leak_env(vec![bin, "LSAPI_CHILDREN=4".into()]),
                max_conns: 4,
                app_servers: &[],
                missing_worker: false,
            },
        ],
        false,
    );
    let mut f = Failures::default();
    let upload = std::env::temp_dir().join(format!("lswsgi-ols-asgi-{}", unique()));
    let data = common::pattern(3 << 20, 17);
    std::fs::write(&upload, &data).unwrap();
    let sha = common::sha256_hex(&data);
    let at_upload = format!("@{}", upload.display());
    // POSTs the 3 MiB file as an octet stream.
    let post_file = |url: &str| {
        curl(
            url,
            &[
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &at_upload,
            ],
            60,
        )
    };
    for site in ["asgiw", "asgipg"] {
        let base = ols.base(site);
        let fa = format!("{base}/asgi/fastapi.wsgi");
        let r = curl(&format!("{fa}/items/7?q=z"), &[], 30);
        f.check(
            &format!("{site}: FastAPI path parameter and query"),
            r.status == 200 && json_field(&r.text(), "item_id").as_deref() == Some("7"),
            format!("{} {}", r.status, r.text()),
        );
        let json_post = ["-H", "Content-Type: application/json", "--data-binary"];
        let r = curl(
            &format!("{fa}/items"),
            &[&json_post[..], &[r#"{"name":"pen","price":2}"#]].concat(),
            30,
        );
        f.check(
            &format!("{site}: FastAPI Pydantic body, lifespan state"),
            r.status == 200
                && r.text()
                    == r#"{"created":{"name":"pen","price":2.0,"tags":[]},"db":"connected"}"#,
            format!("{} {}", r.status, r.text()),
        );
        let r = curl(
            &format!("{fa}/items"),
            &[&json_post[..], &[r#"{"name":""}"#]].concat(),
            30,
        );
        f.check(
            &format!("{site}: FastAPI validation error"),
            r.status == 422,
            format!("{} {}", r.status, r.text()),
        );
        let r = curl(&format!("{fa}/stream?n=5"), &[], 30);
        f.check(
            &format!("{site}: FastAPI streaming response"),
            r.status == 200 && r.text() == "line 0\nline 1\nline 2\nline 3\nline 4\n",
            format!("{} {:?}", r.status, r.text()),
        );
        let r = post_file(&format!("{fa}/upload"));
        f.check(
            &format!("{site}: FastAPI 3 MiB upload read in pieces"),
            r.status == 200
                && json_field(&r.text(), "sha256").as_deref() == Some(sha.as_str())
                && json_field(&r.text(), "max_chunk").as_deref() == Some("65536"),
            format!("{} {}", r.status, r.text()),
        );
        let r = curl(&format!("{fa}/boom"), &[], 30);
        let after = curl(&format!("{fa}/json"), &[], 30);
        f.check(
            &format!("{site}: FastAPI exception, then the next request"),
            r.status == 500 && after.status == 200,
            format!("{} then {} {}", r.status, after.status, after.text()),
        );
        let st = format!("{base}/asgi/starlette.wsgi");
        let r = curl(&format!("{st}/?a=1"), &[], 30);
        f.check(
            &format!("{site}: Starlette lifespan state and root_path"),
            r.status == 200
                && json_field(&r.text(), "greeting").as_deref() == Some("hello from lifespan")
                && json_field(&r.text(), "root_path").as_deref() == Some("/asgi/starlette.wsgi")
                && json_field(&r.text(), "path").as_deref() == Some("/asgi/starlette.wsgi/"),
            format!("{} {}", r.status, r.text()),
        );
        let r = post_file(&format!("{st}/pieces"));
        f.check(
            &format!("{site}: Starlette request.stream() upload"),
            r.status == 200 && json_field(&r.text(), "sha256").as_deref() == Some(sha.as_str()),
            format!(
                "{} {}",
                r.status,
                tail(&r.text(), 1).chars().take(200).collect::<String>()
            ),
        );
        let r = curl(&format!("{st}/stream?n=3"), &[], 30);
        f.check(
            &format!("{site}: Starlette streaming response"),
            r.status == 200 && r.text() == "chunk-0;chunk-1;chunk-2;",
            format!("{} {:?}", r.status, r.text()),
        );
        let dj = format!("{base}/django_site/asgi.wsgi");
        // The project allows the host name `localhost` only.
        let host = ["-H", "Host: localhost"];
        let r = curl(&format!("{dj}/hello/world?q=1"), &host, 30);
        f.check(
            &format!("{site}: Django ASGI handler"),
            r.status == 200
                && r.text()
                    == "hello world|1|/hello/world|http://localhost/django_site/asgi.wsgi/hello/world?q=1",
            format!("{} {}", r.status, r.text()),
        );
        let r = curl(&format!("{dj}/stream?n=3&who=o"), &host, 30);
        f.check(
            &format!("{site}: Django ASGI streaming"),
            r.status == 200 && r.text() == "o-0;o-1;o-2;",
            format!("{} {:?}", r.status, r.text()),
        );
        let raw = format!("{base}/asgi/raw.wsgi");
        let r = curl(&format!("{raw}/raise-before"), &[], 30);
        f.check(
            &format!("{site}: an exception before http.response.start is the 500 page"),
            r.status == 500 && r.text().contains("Internal Server Error"),
            format!("{} {}", r.status, r.text()),
        );
    }
    // The App Server context: `lswsgi -m html/asgi/raw.py`.
    let r = curl(&format!("{}/raw/scope?x=1", ols.base("asgiw")), &[], 30);
    let got = |k: &str| json_field(&r.text(), k).unwrap_or_default();
    f.check(
        "App Server context with an ASGI startup file",
        r.status == 200
            && got("path") == "/raw/scope"
            && got("query_string") == "x=1"
            && got("state").contains("from-lifespan"),
        format!("{} {}", r.status, r.text()),
    );
    let _ = std::fs::remove_file(&upload);
    finish(ols, f);
}

/// A virtualenv of another Python behind the real server, through the one
/// configured worker path: with no build for that Python beside the worker,
/// every request gets a 500 that names both versions at once and the same
/// worker process keeps answering (no exit, no restart loop); with the build
/// for that Python installed beside it as `lswsgiX.Y`, a new worker process
/// is that build and serves the site.
fn wrong_python_virtualenv_behind_openlitespeed(server: Server) {
    let Some(prefix) = ols_prefix(server) else {
        return;
    };
    let (python, other) = common::other_python();
    let own = common::embedded_version();
    // The virtualenv and the app where the server's user (nobody) reads them.
    let dir = std::env::temp_dir().join(format!("lswsgi-ols-venv-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let (venv_python, app) = common::venv_and_app(&python, &dir);
    sh(Command::new("chmod").arg("-R").arg("a+rX").arg(&dir));
    let env = leak_env(vec![format!("LS_PYTHONBIN={}", venv_python.display())]);
    let ols = Ols::start(
        &prefix,
        &[Site {
            name: "wrongpy",
            env,
            max_conns: 1,
            app_servers: &[],
            missing_worker: false,
        }],
        false,
    );
    std::fs::copy(&app, ols.root.join("html/which.wsgi")).unwrap();
    sh(Command::new("chmod")
        .arg("a+r")
        .arg(ols.root.join("html/which.wsgi")));
    let url = format!("{}/which.wsgi", ols.base("wrongpy"));
    let mut f = Failures::default();
    let mut workers = Vec::new();
    for i in 0..4 {
        let t = Instant::now();
        let r = curl(&url, &[], 30);
        let took = t.elapsed();
        let page = r.text();
        f.check(
            &format!("request {i}: a clear 500 at once"),
            r.status == 500
                // The first request also waits for the server to start the
                // worker (Python's start-up, on a loaded machine).
                && took < Duration::from_secs(if i == 0 { 5 } else { 1 })
                && page.contains(&format!("made with Python {other}"))
                && page.contains(&format!("with Python {own}"))
                && !page.contains(dir.to_str().unwrap()),
            format!("{} in {took:?}: {}", r.status, tail(&page, 15)),
        );
        let mut pids = ols.marked_pids();
        pids.sort_unstable();
        workers.push(pids);
    }
    f.check(
        "the same worker answers every request (no restart loop)",
        workers[0].len() == 1 && workers.iter().all(|w| *w == workers[0]),
        format!("worker processes after each request: {workers:?}"),
    );
    // The host installs the build for that Python beside the worker; the
    // next worker the server starts is that build.
    let beside = ols.root.join(format!("fcgi-bin/lswsgi{other}"));
    std::fs::copy(common::other_build(&python, &other), &beside).unwrap();
    sh(Command::new("chmod").arg("755").arg(&beside));
    terminate(&ols.marked_pids(), Duration::from_secs(5));
    let mut served = String::new();
    let mut exe = String::new();
    let dispatched = wait_for(Duration::from_secs(30), || {
        let r = curl(&url, &[], 30);
        served = format!("{} {}", r.status, r.text());
        exe = ols
            .marked_pids()
            .first()
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        r.status == 200 && r.text().starts_with(&format!("{other}|"))
    });
    f.check(
        "the build beside the worker serves the virtualenv",
        dispatched && exe == beside.display().to_string(),
        format!(
            "last response {}; worker exe {exe:?}; logs:\n{}",
            tail(&served, 5),
            tail(&ols.logs(), 30)
        ),
    );
    finish(ols, f);
    let _ = std::fs::remove_dir_all(&dir);
}
