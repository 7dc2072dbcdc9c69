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

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The worker built for this test run (debug profile under `cargo test`).
const TEST_LSWSGI: &str = env!("CARGO_BIN_EXE_lswsgi");
/// The server's dead-lock notice: no packet from the worker within 10 s.
const DEAD_LOCK: &str = "possible dead lock";

// ------------------------------------------------------------------ the build

/// The OpenLiteSpeed installation to run, or why there is none.
fn ols_prefix() -> Option<PathBuf> {
    // A failed build is stored too, so the other tests fail at once rather
    // than build again.
    static PREFIX: OnceLock<Result<PathBuf, Missing>> = OnceLock::new();
    let found = PREFIX.get_or_init(find_or_build);
    match found {
        Ok(p) => Some(p.clone()),
        Err(Missing::Broken(why)) => panic!("{why}"),
        Err(Missing::NotGiven(why)) => {
            let required = std::env::var("LSWSGI_OLS_REQUIRED").is_ok_and(|v| v == "1");
            assert!(!required, "LSWSGI_OLS_REQUIRED=1 but {why}");
            // One line for the whole binary, past the test harness's capture.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(std::io::stderr(), "tests/ols.rs: NOT RUN: {why}");
            });
            None
        }
    }
}

enum Missing {
    /// Neither variable is set.
    NotGiven(String),
    /// Set, but no usable server came of it.
    Broken(String),
}

fn find_or_build() -> Result<PathBuf, Missing> {
    if let Some(prefix) = std::env::var_os("LSWSGI_OLS_PREFIX") {
        let prefix = PathBuf::from(prefix);
        if !prefix.join("bin/openlitespeed").is_file() {
            return Err(Missing::Broken(format!(
                "LSWSGI_OLS_PREFIX={} has no bin/openlitespeed",
                prefix.display()
            )));
        }
        return Ok(prefix);
    }
    let Some(src) = std::env::var_os("LSWSGI_OLS_SRC") else {
        return Err(Missing::NotGiven(
            "neither LSWSGI_OLS_SRC (a directory with build-ols.sh and the \
             OpenLiteSpeed source archive) nor LSWSGI_OLS_PREFIX (an installed \
             OpenLiteSpeed) is set"
                .into(),
        ));
    };
    let script = Path::new(&src).join("build-ols.sh");
    if !script.is_file() {
        return Err(Missing::Broken(format!(
            "LSWSGI_OLS_SRC: no {}",
            script.display()
        )));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target"));
    let prefix = target.join("ols");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(&prefix)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Missing::Broken(format!("bash {}: {e}", script.display())))?;
    if !out.status.success() || !prefix.join("bin/openlitespeed").is_file() {
        return Err(Missing::Broken(format!(
            "{} {} failed ({:?}):\n{}{}",
            script.display(),
            prefix.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    eprintln!(
        "build-ols.sh: {} in {:.1} s",
        String::from_utf8_lossy(&out.stdout).trim(),
        started.elapsed().as_secs_f64()
    );
    Ok(prefix)
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

/// echo.wsgi that loses the last byte of the body.
const SHORT_ECHO: &str = "\
def application(environ, start_response):
    body = environ['wsgi.input'].read()[:-1]
    start_response('200 OK', [('Content-Type', 'application/octet-stream')])
    return [body]
";

/// environ.wsgi that fails (a 500 from the worker).
const FAILING_ENVIRON: &str = "\
def application(environ, start_response):
    raise RuntimeError('deliberately broken for the smoke test')
";

/// One LSAPI external application with its own vhost and listener.
struct Site {
    /// vhost, extProcessor and listener name suffix.
    name: &'static str,
    /// Extra `env` lines of the extProcessor (LSAPI_CHILDREN, ...).
    env: &'static [&'static str],
    max_conns: u32,
    /// App Server contexts: (URI, startup file in the docroot).
    app_servers: &'static [(&'static str, &'static str)],
    /// The extProcessor's worker exits at once without serving (the server
    /// checks at start-up that the path exists and is executable).
    missing_worker: bool,
}

/// A running OpenLiteSpeed with its own root; stopped on drop.
struct Ols {
    root: PathBuf,
    /// Per-site (vhost name, port).
    ports: Vec<(String, u16)>,
    /// Marker put in every worker's environment: finds leftovers.
    marker: String,
    stopped: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn unique() -> String {
    static N: Mutex<u32> = Mutex::new(0);
    let mut n = N.lock().unwrap();
    *n += 1;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}{}x{:x}", std::process::id(), *n, nanos & 0xfff)
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out
}

impl Ols {
    /// `debug`: the server logs every LSAPI packet it receives (debugLevel 10).
    fn start(prefix: &Path, sites: &[Site], debug: bool) -> Ols {
        let id = unique();
        let root = std::env::temp_dir().join(format!("lswsgi-ols-{id}"));
        for d in [
            "bin",
            "conf/vhosts",
            "logs",
            "run",
            "tmp/swap",
            "tmp/stat",
            "fcgi-bin",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // Writable by the worker's user (nobody): /crash records attempts here.
        let state = root.join("state");
        std::fs::create_dir_all(&state).unwrap();
        sh(Command::new("chmod").arg("1777").arg(&state));
        // App Server sockets live at a fixed place the server does not create.
        if !Path::new("/tmp/lshttpd").is_dir() {
            std::fs::create_dir_all("/tmp/lshttpd").unwrap();
            sh(Command::new("chmod").args(["1777", "/tmp/lshttpd"]));
        }
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata("/tmp/lshttpd").unwrap();
            assert!(
                m.mode() & 0o002 != 0 || m.uid() == 65534,
                "/tmp/lshttpd must be writable by nobody (the App Server sockets go there)"
            );
        }
        std::os::unix::fs::symlink(
            prefix.join("bin/openlitespeed"),
            root.join("bin/openlitespeed"),
        )
        .unwrap();
        std::fs::copy(
            prefix.join("conf/mime.properties"),
            root.join("conf/mime.properties"),
        )
        .expect("PREFIX/conf/mime.properties");
        std::fs::copy(worker_binary(), root.join("fcgi-bin/lswsgi")).unwrap();
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

        let marker = format!("LSWSGI_OLS_RUN={id}");
        let r = root.display();
        let (level, debug) = if debug { ("DEBUG", 10) } else { ("INFO", 0) };
        let mut conf = format!(
            "serverName lswsgi-ols-test\nuser nobody\ngroup nogroup\npriority 0\n\
             autoRestart 1\nenableChroot 0\ninMemBufSize 60M\nswappingDir {r}/tmp/swap\n\
             statDir {r}/tmp/stat\nautoFix503 1\ngracefulRestartTimeout 30\n\
             mime conf/mime.properties\nshowVersionNumber 0\nhttpdWorkers 1\n\
             disableWebAdmin 1\nenableIpGeo 0\nuseIpInProxyHeader 0\n\
             errorlog logs/error.log {{\n logLevel {level}\n debugLevel {debug}\n rollingSize 200M\n enableStderrLog 1\n}}\n\
             accessLog logs/access.log {{\n rollingSize 200M\n keepDays 1\n compressArchive 0\n}}\n\
             tuning {{\n maxConnections 2000\n connTimeout 300\n maxKeepAliveReq 10000\n\
              smartKeepAlive 0\n keepAliveTimeout 5\n maxReqBodySize 2047M\n maxDynRespSize 2047M\n\
              maxReqHeaderSize 65536\n enableGzipCompress 0\n enableDynGzipCompress 0\n}}\n\
             fileAccessControl {{\n followSymbolLink 1\n checkSymbolLink 0\n\
              requiredPermissionMask 000\n restrictedPermissionMask 000\n}}\n\
             perClientConnLimit {{\n staticReqPerSec 0\n dynReqPerSec 0\n softLimit 10000\n hardLimit 10000\n}}\n\
             CGIRLimit {{\n maxCGIInstances 20\n minUID 11\n minGID 10\n memSoftLimit 2047M\n\
              memHardLimit 2047M\n procSoftLimit 400\n procHardLimit 450\n}}\n\
             accessControl {{\n allow ALL\n}}\n\
             module cache {{\n ls_enabled 0\n}}\n"
        );
        let mut ports = Vec::new();
        for site in sites {
            let name = format!("l{id}{}", site.name);
            let port = free_port();
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
                     maxConns 2\n env {marker}\n env OLS_STATE={}\n env APP_MARKER=from-context-env\n}}\n",
                    state.display()
                );
            }
            vh.push_str("rewrite {\n enable 0\n}\n");
            std::fs::write(root.join(format!("conf/vhosts/{name}.conf")), vh).unwrap();
            ports.push((name, port));
        }
        std::fs::write(root.join("conf/httpd_config.conf"), conf).unwrap();

        let ols = Ols {
            root,
            ports,
            marker,
            stopped: false,
        };
        let out = Command::new(ols.root.join("bin/openlitespeed"))
            .env("LSWS_HOME", &ols.root)
            .env("OLS_PID_FILE", ols.pid_file())
            .current_dir(&ols.root)
            .stdin(Stdio::null())
            .output()
            .expect("start openlitespeed");
        assert!(
            out.status.success(),
            "openlitespeed: {out:?}\n{}",
            ols.error_log()
        );
        // It daemonizes; ready once every listener accepts.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, port) in &ols.ports {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "listener {name} on {port} never came up:\n{}",
                    ols.error_log()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        ols
    }

    fn pid_file(&self) -> PathBuf {
        self.root.join("run/lshttpd.pid")
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

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.root.join("logs/error.log")).unwrap_or_default()
    }

    fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.root.join("logs/stderr.log")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- error.log (tail)\n{}\n--- stderr.log (tail)\n{}",
            tail(&self.error_log(), 40),
            tail(&self.stderr_log(), 20)
        )
    }

    /// The pids this server told us about: worker processes it added, the
    /// pids in its `<socket>.pid` files.
    fn known_pids(&self) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        for line in self.error_log().lines() {
            if let Some(p) = line.split("add child process pid: ").nth(1) {
                if let Ok(p) = p.trim().trim_end_matches('.').parse() {
                    pids.insert(p);
                }
            }
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for dir in [self.root.join("tmp"), PathBuf::from("/tmp/lshttpd")] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let ours = dir != Path::new("/tmp/lshttpd")
                        || self
                            .ports
                            .iter()
                            .any(|(v, _)| n.starts_with(&format!("{v}:")));
                    if ours && n.ends_with(".sock.pid") {
                        files.push(e.path());
                    }
                }
            }
        }
        for f in files {
            // struct DetachedPidInfo { ino_t inode; long last_modify; pid_t pid; ... }:
            // the pid is the native int32 at offset 16.
            if let Ok(b) = std::fs::read(&f) {
                if b.len() >= 20 {
                    let p = i32::from_ne_bytes(b[16..20].try_into().unwrap());
                    if p > 0 {
                        pids.insert(p);
                    }
                }
            }
        }
        pids
    }

    /// Processes carrying this server's marker in their environment.
    fn marked_pids(&self) -> Vec<i32> {
        let needle = self.marker.as_bytes();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
                if env.split(|&b| b == 0).any(|v| v == needle) && !is_zombie(pid) {
                    out.push(pid);
                }
            }
        }
        out
    }

    fn is_ours(&self, pid: i32) -> bool {
        let needle = self.marker.as_bytes();
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|v| v == needle))
            .unwrap_or(false)
    }

    /// Stops the server and every worker; returns the processes that had to
    /// be found by the marker (none, when the pid files told the truth).
    fn stop(&mut self) -> Vec<i32> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let server: Option<i32> = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let workers = self.known_pids();
        if let Some(pid) = server {
            terminate(&[pid], Duration::from_secs(10));
        }
        // Detached workers outlive the server (LSAPI_PPID_NO_CHECK=1); a
        // pid is signalled only while it still carries our marker.
        let workers: Vec<i32> = workers.into_iter().filter(|&p| self.is_ours(p)).collect();
        terminate(&workers, Duration::from_secs(5));
        // Anything left (a pgroup child whose parent died, ...) is a leak.
        let mut leaked = Vec::new();
        let end = Instant::now() + Duration::from_secs(3);
        loop {
            let left = self.marked_pids();
            if left.is_empty() {
                break;
            }
            if Instant::now() > end {
                leaked = left;
                terminate(&leaked, Duration::from_secs(2));
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        for (vhost, _) in &self.ports {
            for e in std::fs::read_dir("/tmp/lshttpd")
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{vhost}:"))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        leaked
    }
}

impl Drop for Ols {
    fn drop(&mut self) {
        self.stop();
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("kept {} for inspection", self.root.display());
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// SIGTERM each pid, then SIGKILL what is still there after `grace`.
fn terminate(pids: &[i32], grace: Duration) {
    for &p in pids {
        if p > 0 {
            // SAFETY: kill(2) has no memory effects; p > 0 names one process
            // this server started (never 0 or -1, which address groups).
            unsafe { libc::kill(p, libc::SIGTERM) };
        }
    }
    let end = Instant::now() + grace;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < end {
        thread::sleep(Duration::from_millis(50));
    }
    for &p in pids {
        if p > 0 && alive(p) {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120"])
        .args(["-w", "%{http_code} %{num_connects} %header{x-pid}\\n"]);
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

#[test]
fn worker_mode_behind_openlitespeed() {
    let Some(prefix) = ols_prefix() else { return };
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

#[test]
fn process_group_mode_behind_openlitespeed() {
    let Some(prefix) = ols_prefix() else { return };
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
#[test]
fn max_busy_worker_behind_openlitespeed() {
    let Some(prefix) = ols_prefix() else { return };
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

// ------------------------------------------------------------- ASGI (issue 24)

mod common;

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
#[test]
fn asgi_behind_openlitespeed() {
    let Some(prefix) = ols_prefix() else { return };
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
        let r = curl(
            &format!("{fa}/upload"),
            &[
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &at_upload,
            ],
            60,
        );
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
        let r = curl(
            &format!("{st}/pieces"),
            &[
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &at_upload,
            ],
            60,
        );
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
