//! A running OpenLiteSpeed with a server root of its own (shared by
//! tests/ols.rs and bench/ols_load.rs): laid out from a build
//! (bench/ols_kit.rs), configured by the caller, started, and stopped by
//! pid with every worker it ran.
//!
//! Every process is stopped by pid: the server from its pid file, detached
//! workers from the `<socket>.pid` files the server writes, Worker-mode
//! processes from the "add child process pid" lines of its error log; any
//! process still carrying the server's marker variable afterwards is killed
//! and returned by [`Ols::stop`] as a leak.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// Where the server puts App Server sockets (it does not create it).
pub const SOCKET_DIR: &str = "/tmp/lshttpd";

/// A server root in a temporary directory, and the server running there
/// once [`Ols::launch`] returns; stopped on drop.
pub struct Ols {
    pub root: PathBuf,
    /// Per listener: (vhost, extProcessor and listener name, port).
    pub ports: Vec<(String, u16)>,
    /// `NAME=VALUE` put in every worker's environment: finds leftovers.
    pub marker: String,
    /// Unique to this server: names its root, marker and configuration.
    pub id: String,
    stopped: bool,
}

impl Ols {
    /// A fresh root `<tmp>/<name>-<id>`: the usual directories, the server
    /// binary of `prefix` linked in, its MIME table, and `worker` copied to
    /// fcgi-bin/lswsgi. Nothing runs yet.
    pub fn lay_out(prefix: &Path, worker: &Path, name: &str) -> Ols {
        let id = unique();
        let root = std::env::temp_dir().join(format!("{name}-{id}"));
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
        std::fs::copy(worker, root.join("fcgi-bin/lswsgi")).unwrap();
        Ols {
            marker: format!("LSWSGI_OLS_RUN={id}"),
            root,
            ports: Vec::new(),
            id,
            stopped: false,
        }
    }

    /// The server-wide part of httpd_config.conf: `log_level`/`debug_level`
    /// of the error log, `logs` (more log blocks) after it, `tuning` (more
    /// lines) inside the tuning block.
    pub fn server_conf(
        &self,
        name: &str,
        log_level: &str,
        debug_level: u32,
        logs: &str,
        tuning: &str,
    ) -> String {
        let r = self.root.display();
        format!(
            "serverName {name}\nuser nobody\ngroup nogroup\npriority 0\n\
             autoRestart 1\nenableChroot 0\ninMemBufSize 60M\nswappingDir {r}/tmp/swap\n\
             statDir {r}/tmp/stat\nautoFix503 1\ngracefulRestartTimeout 30\n\
             mime conf/mime.properties\nshowVersionNumber 0\nhttpdWorkers 1\n\
             disableWebAdmin 1\nenableIpGeo 0\nuseIpInProxyHeader 0\n\
             errorlog logs/error.log {{\n logLevel {log_level}\n debugLevel {debug_level}\n rollingSize 200M\n enableStderrLog 1\n}}\n\
             {logs}\
             tuning {{\n maxConnections 2000\n connTimeout 300\n maxKeepAliveReq 10000\n\
              smartKeepAlive 0\n keepAliveTimeout 5\n{tuning} enableGzipCompress 0\n enableDynGzipCompress 0\n}}\n\
             fileAccessControl {{\n followSymbolLink 1\n checkSymbolLink 0\n\
              requiredPermissionMask 000\n restrictedPermissionMask 000\n}}\n\
             perClientConnLimit {{\n staticReqPerSec 0\n dynReqPerSec 0\n softLimit 10000\n hardLimit 10000\n}}\n\
             CGIRLimit {{\n maxCGIInstances 20\n minUID 11\n minGID 10\n memSoftLimit 2047M\n\
              memHardLimit 2047M\n procSoftLimit 400\n procHardLimit 450\n}}\n\
             accessControl {{\n allow ALL\n}}\n\
             module cache {{\n ls_enabled 0\n}}\n"
        )
    }

    /// A listener named `name` on a free loopback port; returns the port.
    pub fn add_listener(&mut self, name: String) -> u16 {
        let port = free_port();
        self.ports.push((name, port));
        port
    }

    /// Starts the server (it daemonizes) on conf/httpd_config.conf and
    /// waits until every listener accepts.
    pub fn launch(&self) {
        // Its output goes to a file, not a pipe: 1.9.1's daemon keeps the
        // descriptors it was started with, so a pipe would never see EOF.
        let start_log = self.root.join("logs/start.out");
        let out = std::fs::File::create(&start_log).unwrap();
        let status = Command::new(self.root.join("bin/openlitespeed"))
            .env("LSWS_HOME", &self.root)
            .env("OLS_PID_FILE", self.pid_file())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .expect("start openlitespeed");
        assert!(
            status.success(),
            "openlitespeed: {status:?}\n{}\n{}",
            std::fs::read_to_string(&start_log).unwrap_or_default(),
            self.error_log()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, port) in &self.ports {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "listener {name} on {port} never came up:\n{}",
                    self.error_log()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("run/lshttpd.pid")
    }

    /// The server's pid, from its pid file.
    pub fn server_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.root.join("logs/error.log")).unwrap_or_default()
    }

    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.root.join("logs/stderr.log")).unwrap_or_default()
    }

    /// The pids this server told us about: worker processes it added, the
    /// pids in its `<socket>.pid` files.
    pub fn known_pids(&self) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        for line in self.error_log().lines() {
            if let Some(p) = line.split("add child process pid: ").nth(1) {
                if let Ok(p) = p.trim().trim_end_matches('.').parse() {
                    pids.insert(p);
                }
            }
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for dir in [self.root.join("tmp"), PathBuf::from(SOCKET_DIR)] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let ours = dir != Path::new(SOCKET_DIR)
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

    /// Live processes carrying this server's marker in their environment.
    pub fn marked_pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if self.is_ours(pid) && !is_zombie(pid) {
                out.push(pid);
            }
        }
        out
    }

    /// Whether `pid` carries this server's marker.
    pub fn is_ours(&self, pid: i32) -> bool {
        let needle = self.marker.as_bytes();
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|v| v == needle))
            .unwrap_or(false)
    }

    /// Stops the server and every worker; returns the processes that had to
    /// be found by the marker (none, when the pid files told the truth).
    pub fn stop(&mut self) -> Vec<i32> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let workers = self.known_pids();
        if let Some(pid) = self.server_pid() {
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
            for e in std::fs::read_dir(SOCKET_DIR)
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

/// Runs `cmd`, which must succeed.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A name no other server of this or another test process uses.
pub fn unique() -> String {
    static N: Mutex<u32> = Mutex::new(0);
    let mut n = N.lock().unwrap();
    *n += 1;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}{}x{:x}", std::process::id(), *n, nanos & 0xfff)
}

pub fn is_zombie(pid: i32) -> bool {
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

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// SIGTERM each pid, then SIGKILL what is still there after `grace`.
pub fn terminate(pids: &[i32], grace: Duration) {
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

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
