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
