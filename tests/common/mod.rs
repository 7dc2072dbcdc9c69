//! Shared pieces of the integration tests: starting the real `lswsgi` binary
//! the way LiteSpeed does, building requests, reading /proc.
#![allow(dead_code)]

use lswsgi::client::{Client, Response, Spawned};
use lswsgi::lsapi::build::RequestSpec;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The worker binary under test.
pub const LSWSGI: &str = env!("CARGO_BIN_EXE_lswsgi");

/// Absolute path of a test application in tests/apps.
pub fn app(name: &str) -> String {
    format!("{}/tests/apps/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A unique scratch directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "lswsgi-test-{tag}-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b)
}

/// How to start a worker the way LiteSpeed does (a listening socket on fd 0)
/// with its stderr in a log the test reads: the command, its environment,
/// its scratch directory and how it is stopped. Each setting has the value
/// most tests want; [`Start::spawn`] starts it.
pub struct Start {
    /// Launcher words, then the program and its arguments.
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// In a session of its own (setsid(1)): stopped by SIGKILL to the whole
    /// process group, children and orphans included.
    session: bool,
    /// The scratch directory (which holds the log) readable by every user,
    /// for workers that switch to a tenant's user (suEXEC).
    for_all_users: bool,
    /// Names the scratch directory.
    tag: &'static str,
    /// How long `connect` retries while the worker starts.
    connect_wait: Duration,
    /// Read/write time-out of every connection, so no test hangs.
    io_timeout: Duration,
    /// Outside a session: SIGTERM, then SIGKILL after this.
    grace: Duration,
}

impl Start {
    /// `lswsgi ARGS`.
    pub fn worker(args: &[&str]) -> Start {
        let mut argv = vec![LSWSGI];
        argv.extend_from_slice(args);
        Start::argv(&argv)
    }

    /// `ARGV`: a program and its arguments (a starter shell, a copy of the
    /// worker binary elsewhere).
    pub fn argv(argv: &[&str]) -> Start {
        Start {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            session: false,
            for_all_users: false,
            tag: "worker",
            connect_wait: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(2),
        }
    }

    /// Runs the command through `launcher` (a starter that prepares
    /// something and then execs it; the pid is the worker's when it does).
    pub fn via(mut self, launcher: &[&str]) -> Start {
        let tail = std::mem::take(&mut self.argv);
        self.argv = launcher.iter().map(|s| s.to_string()).collect();
        self.argv.extend(tail);
        self
    }

    /// Adds `env` to the worker's environment.
    pub fn env(mut self, env: &[(&str, &str)]) -> Start {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// In a new session (through setsid(1)): dropping the worker kills the
    /// whole group, orphans included, even when a test fails.
    pub fn session(mut self) -> Start {
        self.session = true;
        self.via(&["setsid"])
    }

    /// Scratch directory mode 0755: a tenant's user reaches files put there.
    pub fn for_all_users(mut self) -> Start {
        self.for_all_users = true;
        self
    }

    pub fn tag(mut self, tag: &'static str) -> Start {
        self.tag = tag;
        self
    }

    pub fn connect_wait(mut self, wait: Duration) -> Start {
        self.connect_wait = wait;
        self
    }

    pub fn io_timeout(mut self, timeout: Duration) -> Start {
        self.io_timeout = timeout;
        self
    }

    pub fn grace(mut self, grace: Duration) -> Start {
        self.grace = grace;
        self
    }

    /// Starts it.
    pub fn spawn(self) -> Worker {
        let dir = scratch(self.tag);
        if self.for_all_users {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let log = dir.join("stderr.log");
        let spawned = Spawned::start(&self.argv, &self.env, Some(&log)).expect("spawn lswsgi");
        Worker {
            spawned,
            log,
            dir,
            session: self.session,
            connect_wait: self.connect_wait,
            io_timeout: self.io_timeout,
            grace: self.grace,
        }
    }
}

/// A running worker (or ProcessGroup parent, or the starter that runs it)
/// whose stderr goes to a log file the test can read. Dropping it stops it
/// as its [`Start`] said and removes its scratch directory.
pub struct Worker {
    pub spawned: Spawned,
    pub log: PathBuf,
    /// The scratch directory, for files the test puts beside the log.
    pub dir: PathBuf,
    session: bool,
    connect_wait: Duration,
    io_timeout: Duration,
    grace: Duration,
}

impl Worker {
    /// Starts `lswsgi ARGS` with `env` (see [`Start`] for more settings).
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Worker {
        Start::worker(args).env(env).spawn()
    }

    /// Starts `LAUNCHER... lswsgi ARGS` the same way.
    pub fn start_via(launcher: &[&str], args: &[&str], env: &[(&str, &str)]) -> Worker {
        Start::worker(args).via(launcher).env(env).spawn()
    }

    /// Starts `ARGV` (a program and its arguments) the same way.
    pub fn start_argv(argv: &[&str], env: &[(&str, &str)]) -> Worker {
        Start::argv(argv).env(env).spawn()
    }

    /// A new connection, with the read/write time-out of its [`Start`].
    pub fn connect(&self) -> Client {
        let mut c = self
            .spawned
            .connect(self.connect_wait)
            .expect("connect to lswsgi");
        c.stream().set_timeout(Some(self.io_timeout)).unwrap();
        c
    }

    /// The socket path, for connections made elsewhere (threads).
    pub fn addr(&self) -> String {
        self.spawned.addr()
    }

    /// The started process's pid.
    pub fn pid(&self) -> u32 {
        self.spawned.child.id()
    }

    /// Everything the worker wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for the log to contain `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log_text().contains(needle))
    }

    /// Whether the process is still running (not exited).
    pub fn alive(&mut self) -> bool {
        self.spawned.child.try_wait().unwrap().is_none()
    }

    /// Whether the started process exits within `limit`.
    pub fn exits_within(&mut self, limit: Duration) -> bool {
        wait_until(limit, || !self.alive())
    }

    /// Sends `sig` to the started process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) has no memory effects; the pid is our child's,
        // not yet reaped while `self` lives.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Children of the started process, from /proc (zombies included).
    pub fn children(&self) -> Vec<(i32, char)> {
        children_of(self.pid() as i32)
    }

    /// Live (non-zombie) children.
    pub fn live_children(&self) -> Vec<i32> {
        self.children()
            .into_iter()
            .filter(|&(_, s)| s != 'Z')
            .map(|(p, _)| p)
            .collect()
    }

    /// Asks a ProcessGroup parent for its child table (SIGUSR2) and returns
    /// the new `status:` log line.
    pub fn status(&self) -> String {
        // SIGUSR2 before the handlers are installed would end the process.
        assert!(self.wait_log("process group: up to", Duration::from_secs(10)));
        let before = self.log_text().matches("status: ").count();
        self.signal(libc::SIGUSR2);
        let mut line = String::new();
        wait_until(Duration::from_secs(5), || {
            let log = self.log_text();
            match log.lines().filter(|l| l.contains("status: ")).nth(before) {
                Some(l) => {
                    line = l.to_string();
                    true
                }
                None => false,
            }
        });
        assert!(
            !line.is_empty(),
            "no status line; log:\n{}",
            self.log_text()
        );
        line
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.session {
            // SAFETY: kill(2) has no memory effects; setsid made the child's
            // pid its process group's id, and the child is not yet reaped.
            unsafe { libc::kill(-(self.pid() as i32), libc::SIGKILL) };
            let _ = self.spawned.child.wait();
        } else {
            let _ = self.spawned.stop(self.grace);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// echo.wsgi that loses the last byte of the body (a broken copy for the
/// smoke scripts' failure report).
pub const SHORT_ECHO: &str = "\
def application(environ, start_response):
    body = environ['wsgi.input'].read()[:-1]
    start_response('200 OK', [('Content-Type', 'application/octet-stream')])
    return [body]
";

/// environ.wsgi that fails (a 500 from the worker).
pub const FAILING_ENVIRON: &str = "\
def application(environ, start_response):
    raise RuntimeError('deliberately broken for the smoke test')
";

/// A GET request for `uri` served by `script` mounted at `script_name`.
pub fn get(uri: &str, script: &str, script_name: &str) -> RequestSpec {
    RequestSpec::new("GET", uri, script, script_name)
}

/// A request to the suite app mounted at `/suite.wsgi` with path `path`.
pub fn suite(method: &str, path_and_query: &str) -> RequestSpec {
    RequestSpec::new(
        method,
        &format!("/suite.wsgi{path_and_query}"),
        &app("suite.wsgi"),
        "/suite.wsgi",
    )
}

/// The value of a `key=value` line of an answer (a panic naming the
/// answer when there is none).
pub fn field(r: &Response, key: &str) -> String {
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {text:?} (status {})", r.status))
        .to_string()
}

/// Calls and asserts a complete (RESP_END-terminated) response.
pub fn call_ok(c: &mut Client, spec: &RequestSpec, body: &[u8]) -> Response {
    let r = c.call(spec, body).expect("response");
    assert_eq!(
        r.ending,
        lswsgi::client::Ending::End,
        "response not ended: status {} body {:?}",
        r.status,
        r.text()
    );
    r
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM, …).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// SHA-256 hex digest via the system's sha256sum (keeps the tests free of
/// hashing crates).
pub fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Whether `path` exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Polls `f` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The effective user id of the test process (tests that need root
/// assert it is 0).
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// State and ppid of a process from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` exists and is not a zombie.
pub fn running(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(s, _)| s != 'Z')
}

/// `(pid, state)` of every process whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((state, pp)) = proc_stat(pid) {
            if pp == ppid {
                out.push((pid, state));
            }
        }
    }
    out
}

/// The special env LiteSpeed sends for suEXEC user `uid:gid`, signed with the
/// daemon's `secret` (at least 16 bytes).
pub fn suexec_identity(uid: i32, gid: i32, secret: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    use md5::{Digest, Md5};
    let mut ugid = uid.to_ne_bytes().to_vec();
    ugid.extend_from_slice(&gid.to_ne_bytes());
    let nonce: Vec<u8> = (0u8..16).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    let mut h = Md5::new();
    h.update(&nonce);
    h.update(&secret[..16]);
    h.update(&ugid);
    let mut auth = nonce;
    auth.extend_from_slice(&h.finalize());
    vec![
        (b"\0SUEXEC_UGID".to_vec(), ugid),
        (b"\0SUEXEC_AUTH".to_vec(), auth),
    ]
}

/// The suEXEC daemon's secret (LSAPI_SECRET, 32 bytes) written to
/// `dir/secret` with mode 0600, as the daemon requires: its path and bytes.
pub fn suexec_secret(dir: &Path) -> (PathBuf, Vec<u8>) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("secret");
    let secret = b"a shared secret of 32 bytes here".to_vec();
    std::fs::write(&path, &secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, secret)
}

/// `LS_PYTHONBIN` of the test virtualenv (`LSWSGI_TEST_VENV`, else
/// `<repo>/.venv-test`), checked to import `modules` (comma-separated); a
/// panic naming what is missing otherwise (these tests never skip).
pub fn venv_python_with(modules: &str) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = match std::env::var_os("LSWSGI_TEST_VENV") {
        Some(v) if !v.is_empty() => repo.join(PathBuf::from(v)),
        _ => repo.join(".venv-test"),
    };
    let python = dir.join("bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need a virtualenv where `bin/python -c 'import {modules}'` works: {} \
         does not (LSWSGI_TEST_VENV; `bash scripts/test.sh` creates .venv-test)",
        dir.display()
    );
    python.to_string_lossy().into_owned()
}

/// The embedded Python's `X.Y`, from `lswsgi -v` (`Python X.Y (...)`).
pub fn embedded_version() -> String {
    let out = std::process::Command::new(LSWSGI)
        .arg("-v")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.lines().nth(1).unwrap().split_whitespace().nth(1);
    v.unwrap().to_string()
}

/// A CPython of another minor version than the embedded one:
/// LSWSGI_TEST_OTHER_PYTHON (scripts/test-matrix.sh sets it), else the first
/// `python3.X` (3.9–3.13) that runs, on PATH or in the usual places (pyenv,
/// CloudLinux, cPanel, /usr/local, /usr). Its `X.Y` with it.
pub fn other_python() -> (String, String) {
    let own = embedded_version();
    let mut candidates: Vec<String> = std::env::var("LSWSGI_TEST_OTHER_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .into_iter()
        .collect();
    let pyenv = std::env::var("PYENV_ROOT")
        .unwrap_or_else(|_| format!("{}/.pyenv", std::env::var("HOME").unwrap_or_default()));
    for m in 9..=13 {
        candidates.push(format!("python3.{m}"));
        if let Ok(dirs) = std::fs::read_dir(format!("{pyenv}/versions")) {
            for d in dirs.flatten() {
                if d.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("3.{m}."))
                {
                    candidates.push(format!("{}/bin/python3.{m}", d.path().display()));
                }
            }
        }
        candidates.push(format!("/opt/alt/python3{m}/bin/python3.{m}"));
        candidates.push(format!(
            "/opt/cpanel/ea-python3{m}/root/usr/bin/python3.{m}"
        ));
        candidates.push(format!("/usr/local/bin/python3.{m}"));
        candidates.push(format!("/usr/bin/python3.{m}"));
    }
    for python in candidates {
        let Ok(out) = std::process::Command::new(&python)
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
        else {
            continue;
        };
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !v.is_empty() && v != own {
            return (python, v);
        }
    }
    panic!(
        "no Python other than {own} found: set LSWSGI_TEST_OTHER_PYTHON to one \
         (scripts/test.sh does)"
    );
}

/// A virtualenv made with `python` (no pip) in `dir`, and an app reporting
/// the Python that serves it: `X.Y|sys.prefix`.
pub fn venv_and_app(python: &str, dir: &Path) -> (PathBuf, String) {
    let venv = dir.join("venv");
    let st = std::process::Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(st.success(), "{python} -m venv");
    let app = dir.join("which.wsgi");
    std::fs::write(
        &app,
        "import sys\n\
         def application(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [('%d.%d|%s' % (sys.version_info[:2] + (sys.prefix,))).encode()]\n",
    )
    .unwrap();
    (venv.join("bin/python"), app.to_str().unwrap().to_string())
}

/// An lswsgi built against `python` (version `v`): LSWSGI_TEST_OTHER_LSWSGI
/// when set, else a debug build into target/pyX.Y (as install.sh names the
/// per-version target directories), built once and reused.
pub fn other_build(python: &str, v: &str) -> String {
    if let Ok(p) = std::env::var("LSWSGI_TEST_OTHER_LSWSGI") {
        if !p.is_empty() {
            return p;
        }
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let target = format!("{root}/target/py{v}");
    let st = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--offline", "--bin", "lswsgi"])
        .current_dir(root)
        .env("PYO3_PYTHON", python)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo");
    assert!(st.success(), "building lswsgi against {python}");
    format!("{target}/debug/lswsgi")
}
