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

/// A running worker whose stderr goes to a log file the test can read.
pub struct Worker {
    pub spawned: Spawned,
    pub log: PathBuf,
    _dir: PathBuf,
}

impl Worker {
    /// Starts `lswsgi ARGS` with a listening socket on fd 0 and `env`.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Worker {
        Worker::start_via(&[], args, env)
    }

    /// Starts `LAUNCHER... lswsgi ARGS` the same way: a starter program that
    /// prepares something and then execs the worker (its pid is the
    /// worker's when it execs directly).
    pub fn start_via(launcher: &[&str], args: &[&str], env: &[(&str, &str)]) -> Worker {
        let mut argv: Vec<&str> = launcher.to_vec();
        argv.push(LSWSGI);
        argv.extend_from_slice(args);
        Worker::start_argv(&argv, env)
    }

    /// Starts `ARGV` (a program and its arguments, e.g. a copy of the worker
    /// binary elsewhere) the same way.
    pub fn start_argv(argv: &[&str], env: &[(&str, &str)]) -> Worker {
        let dir = scratch("worker");
        let log = dir.join("stderr.log");
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let spawned = Spawned::start(&argv, &env, Some(&log)).expect("spawn lswsgi");
        Worker {
            spawned,
            log,
            _dir: dir,
        }
    }

    /// A new connection, with a 30 s read/write time-out so no test hangs.
    pub fn connect(&self) -> Client {
        let mut c = self
            .spawned
            .connect(Duration::from_secs(10))
            .expect("connect to lswsgi");
        c.stream()
            .set_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        c
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.spawned.child.id()
    }

    /// Everything the worker wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for the log to contain `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the process is still running (not exited).
    pub fn alive(&mut self) -> bool {
        self.spawned.child.try_wait().unwrap().is_none()
    }
}

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
