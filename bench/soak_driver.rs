//! Soak driver shared by `tests/soak.rs` (bounded, in CI) and `bench/soak.rs`
//! (the long run): a ProcessGroup worker gets a mix of good requests,
//! malformed packets, application crashes (os.abort) and stuck children
//! (a request that hangs, or one that hangs while its child says Idle, both
//! abandoned by the client) over 8 connections. Every good request must be
//! answered correctly; the parent must kill every stuck child; afterwards
//! there must be no zombie, no descriptor leak in the parent, a stable parent
//! RSS, and no process left once the group is stopped.

// Shared by a test and a bench, each of which reads only part of the report.
#![allow(dead_code)]

use crate::common::status_kb;
use lswsgi::client::{Client, Ending, Spawned};
use lswsgi::lsapi::build::RequestSpec;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Figures of one soak run.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests sent, of every kind.
    pub requests: u64,
    /// Good requests answered correctly.
    pub good_ok: u64,
    /// Good requests answered wrongly or not at all.
    pub good_failed: u64,
    /// Malformed packets sent (each drops its connection).
    pub malformed: u64,
    /// Application crashes provoked.
    pub crashes: u64,
    /// Good requests resent because the worker had closed the connection
    /// before taking them (none of its packets came back).
    pub retried: u64,
    /// Parent's open descriptors before and after.
    pub fds: (usize, usize),
    /// Parent's RSS in kB after warm-up and at the end.
    pub rss_kb: (u64, u64),
    /// Zombie children of the parent at the end.
    pub zombies: usize,
    /// Stuck children provoked (each must be killed by the parent).
    pub stuck: u64,
    /// SIGKILLs the parent logged for stuck children.
    pub stuck_killed: u64,
    /// pidfds the parent holds at the end (one per live child).
    pub pidfds: usize,
    /// Processes that served a request (or got stuck) still running after
    /// the group was stopped.
    pub leaked: usize,
    /// Seconds the run took.
    pub seconds: f64,
}

const CONNECTIONS: usize = 8;

/// Open descriptors of `pid`, less its pidfds (the parent holds one per
/// live child, which is not a leak; [`pidfd_count`] counts those).
fn fd_count(pid: u32) -> usize {
    fds(pid).filter(|t| t != "anon_inode:[pidfd]").count()
}

/// pidfds `pid` holds.
fn pidfd_count(pid: u32) -> usize {
    fds(pid).filter(|t| t == "anon_inode:[pidfd]").count()
}

fn fds(pid: u32) -> impl Iterator<Item = String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
}

/// Children of `pid` in state Z.
fn zombies(pid: u32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut f = stat[close + 2..].split_whitespace();
        let state = f.next();
        let ppid = f.next().and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) && state == Some("Z") {
            n += 1;
        }
    }
    n
}

/// A malformed packet of kind `k` (all drop the connection).
fn malformed(k: u64, good: &[u8]) -> Vec<u8> {
    let mut p = good.to_vec();
    match k % 5 {
        0 => p[0] = b'X',
        1 => p[2] = 9,
        2 => p[4..8].copy_from_slice(&70000i32.to_le_bytes()),
        3 => p[36..40].copy_from_slice(&8193i32.to_le_bytes()),
        _ => {
            let h = i32::from_le_bytes(p[8..12].try_into().unwrap());
            p[8..12].copy_from_slice(&(h - 1).to_le_bytes());
        }
    }
    p
}

/// Runs `total` requests against `lswsgi` serving `app` (tests/apps/suite.wsgi).
pub fn run(lswsgi: &str, app: &Path, total: u64, log: &Path) -> Report {
    let env = vec![
        ("LSAPI_CHILDREN".to_string(), CONNECTIONS.to_string()),
        ("LSAPI_MAX_REQS".to_string(), "20000".to_string()),
        // Stuck children are killed within seconds, not the default hour.
        ("LSAPI_MAX_PROCESS_TIME".to_string(), "2".to_string()),
        ("LSAPI_MAX_IDLE".to_string(), "3".to_string()),
    ];
    let hostile = app.with_file_name("hostile_slot.wsgi");
    let hostile = hostile.to_str().unwrap().to_string();
    let seen = std::sync::Mutex::new(std::collections::HashSet::<i32>::new());
    let stuck = AtomicU64::new(0);
    let mut w = Spawned::start(&[lswsgi.to_string()], &env, Some(log)).expect("start lswsgi");
    let pid = w.child.id();
    let app = app.to_str().unwrap().to_string();
    let connect = |w: &Spawned| -> Client {
        let mut c = w.connect(Duration::from_secs(10)).expect("connect");
        c.stream()
            .set_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        c
    };
    // Warm up, then take the baseline.
    {
        let mut c = connect(&w);
        let spec = RequestSpec::new("GET", "/suite.wsgi/warm", &app, "/suite.wsgi");
        for _ in 0..100 {
            c.call(&spec, b"").expect("warm-up");
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = fd_count(pid);
    let rss_before = status_kb(pid, "VmRSS");

    let next = AtomicU64::new(0);
    let (good_ok, good_failed, bad, crashes, retried) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    // A handful of crashes and stuck children spread over the run.
    let crash_every = (total / 5).max(1000);
    let stuck_every = (total / 4).max(1000);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..CONNECTIONS {
            let (w, app, next, hostile, seen, stuck) = (&w, &app, &next, &hostile, &seen, &stuck);
            let (good_ok, good_failed, bad, crashes, retried) =
                (&good_ok, &good_failed, &bad, &crashes, &retried);
            scope.spawn(move || {
                let mut c = connect(w);
                let mut body = Vec::with_capacity(256);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if i % stuck_every == stuck_every / 3 {
                        // A child that hangs (honestly busy, or saying Idle),
                        // abandoned by the client once it took the request.
                        let path = if (i / stuck_every) % 2 == 0 {
                            "/h.wsgi/hang"
                        } else {
                            "/h.wsgi/idle?3600"
                        };
                        let spec = RequestSpec::new("GET", path, hostile, "/h.wsgi");
                        let mut s = connect(w);
                        s.stream()
                            .set_timeout(Some(Duration::from_millis(500)))
                            .unwrap();
                        let r = s.call(&spec, b"");
                        if let Some(pid) = r.ok().and_then(|r| r.pid) {
                            seen.lock().unwrap().insert(pid);
                        }
                        stuck.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if i % crash_every == crash_every / 2 {
                        let spec = RequestSpec::new("GET", "/suite.wsgi/abort", app, "/suite.wsgi");
                        let _ = c.call(&spec, b"");
                        crashes.fetch_add(1, Ordering::Relaxed);
                        c = connect(w);
                        continue;
                    }
                    if i % 10 == 3 {
                        let spec = RequestSpec::new("GET", "/suite.wsgi/x", app, "/suite.wsgi");
                        let packet = malformed(i / 10, &spec.encode().unwrap());
                        let r = c.call_raw(&packet, b"");
                        assert!(
                            r.as_ref().map_or(true, |r| r.status == 0),
                            "a malformed packet was answered"
                        );
                        bad.fetch_add(1, Ordering::Relaxed);
                        c = connect(w);
                        continue;
                    }
                    // A good request: an echo whose body names the request.
                    body.clear();
                    body.extend_from_slice(format!("{t}:{i}:").as_bytes());
                    body.resize(body.len() + (i % 200) as usize, b'a' + (i % 26) as u8);
                    let mut spec = RequestSpec::new("POST", "/suite.wsgi/echo", app, "/suite.wsgi");
                    spec.body(body.len() as u64);
                    // As LiteSpeed does: never reuse a connection the worker
                    // is closing, and resend a request it never took (no
                    // packet came back) on a fresh connection.
                    let mut attempts = 0;
                    loop {
                        if c.closing() {
                            c = connect(w);
                        }
                        let undelivered = match c.call(&spec, &body) {
                            Ok(r) if r.status == 200 && r.body == body => {
                                good_ok.fetch_add(1, Ordering::Relaxed);
                                if let Some(pid) = r.pid {
                                    seen.lock().unwrap().insert(pid);
                                }
                                if r.ending != Ending::End {
                                    c = connect(w);
                                }
                                break;
                            }
                            Ok(r) => r.status == 0 && r.packets.iter().all(|&t| t == 8),
                            Err(e) => matches!(
                                e.kind(),
                                std::io::ErrorKind::BrokenPipe
                                    | std::io::ErrorKind::ConnectionReset
                            ),
                        };
                        c = connect(w);
                        attempts += 1;
                        if !undelivered || attempts > 3 {
                            good_failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    // Every stuck child must be killed by the parent (within MAX_IDLE or
    // MAX_PROCESS_TIME, plus the grace period).
    let stuck = stuck.into_inner();
    let kills = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("with SIGKILL")
            .count() as u64
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while kills() < stuck && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let crashed and retired children be reaped (the parent reaps on its tick).
    std::thread::sleep(Duration::from_millis(1500));
    let mut report = Report {
        requests: total,
        good_ok: good_ok.into_inner(),
        good_failed: good_failed.into_inner(),
        malformed: bad.into_inner(),
        crashes: crashes.into_inner(),
        retried: retried.into_inner(),
        fds: (fds_before, fd_count(pid)),
        rss_kb: (rss_before, status_kb(pid, "VmRSS")),
        zombies: zombies(pid),
        stuck,
        stuck_killed: kills(),
        pidfds: pidfd_count(pid),
        leaked: 0,
        seconds,
    };
    let _ = w.stop(Duration::from_secs(40));
    report.leaked = seen
        .into_inner()
        .unwrap()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(lswsgi))
        })
        .count();
    report
}
