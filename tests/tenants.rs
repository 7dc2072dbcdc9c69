//! suEXEC daemon mode with hostile tenants (LSAPI.md section 7): tenant A
//! runs an application that attacks what its child shares with the root
//! parent (tests/apps/tenant_attacks.wsgi); tenant B, the victim, must be
//! served normally and promptly throughout, and root's log must stay root's.
//! These tests must run as root, as CI does.

mod common;

use common::*;
use lswsgi::client::Client;
use lswsgi::lsapi::build::RequestSpec;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const A: (i32, i32) = (4321, 4321);
const B: (i32, i32) = (4331, 4331);

fn require_root() {
    assert_eq!(euid(), 0, "the tenant tests must run as root (as CI does)");
}

/// A root suEXEC daemon and the tenants' application.
struct Daemon {
    w: Worker,
    dir: PathBuf,
    app: String,
    secret: Vec<u8>,
}

impl Daemon {
    /// Starts a daemon with `env` on top of LSAPI_SECRET (and, with `log`,
    /// LSAPI_STDERR_LOG pointing at the returned directory's `root.log`).
    fn start(tag: &str, env: &[(&str, &str)], log: bool) -> Daemon {
        require_root();
        let dir = scratch(tag);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let app = dir.join("t.wsgi");
        std::fs::copy(app_path(), &app).unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (secret_path, secret) = suexec_secret(&dir);
        let sp = secret_path.to_str().unwrap().to_string();
        let lp = dir.join("root.log").to_str().unwrap().to_string();
        let mut all: Vec<(&str, &str)> = vec![("LSAPI_SECRET", &sp)];
        if log {
            all.push(("LSAPI_STDERR_LOG", &lp));
        }
        all.extend_from_slice(env);
        let w = Worker::start(&[], &all);
        let d = Daemon {
            w,
            dir,
            app: app.to_str().unwrap().to_string(),
            secret,
        };
        assert!(
            d.wait_log("suEXEC daemon mode", Duration::from_secs(15)),
            "{}",
            d.log()
        );
        d
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("root.log")
    }

    /// Root's log: the file, when there is one, else the worker's stderr.
    fn log(&self) -> String {
        let file = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        file + &self.w.log_text()
    }

    fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log().contains(needle))
    }

    /// A request of tenant `who` for `path_and_query`.
    fn req(&self, who: (i32, i32), path_and_query: &str) -> RequestSpec {
        let mut spec = RequestSpec::new(
            "GET",
            &format!("/t.wsgi{path_and_query}"),
            &self.app,
            "/t.wsgi",
        );
        spec.special_env = suexec_identity(who.0, who.1, &self.secret);
        spec
    }

    fn connect(&self) -> Client {
        self.w.connect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn app_path() -> String {
    app("tenant_attacks.wsgi")
}

/// `(pid, uid, rest)` of a tenant_attacks.wsgi answer.
fn answer(text: &str) -> (i32, u32, String) {
    let mut f = text.splitn(3, ' ');
    let pid = f.next().unwrap().parse().expect(text);
    let uid = f.next().unwrap_or("x").parse().expect(text);
    (pid, uid, f.next().unwrap_or("").to_string())
}

/// Tenant B, the victim: one connection, a request every `every` for
/// `during`. Every request must be answered by the same child (never
/// retired, killed or handed back) as B, each within `prompt`.
fn victim_serves(d: &Daemon, during: Duration, every: Duration, prompt: Duration) {
    let mut c = d.connect();
    let end = Instant::now() + during;
    let mut first = None;
    let mut n = 0;
    while Instant::now() < end {
        let t = Instant::now();
        let r = c
            .call(&d.req(B, "/"), b"")
            .unwrap_or_else(|e| panic!("victim request {n} failed: {e}\n{}", d.log()));
        assert_eq!(
            r.status,
            200,
            "victim request {n}: {}\n{}",
            r.text(),
            d.log()
        );
        let took = t.elapsed();
        assert!(
            took < prompt,
            "victim request {n} took {took:?}\n{}",
            d.log()
        );
        let (pid, uid, _) = answer(&r.text());
        assert_eq!(uid, B.0 as u32);
        let first = *first.get_or_insert(pid);
        assert_eq!(
            pid,
            first,
            "the victim's child {first} was replaced after {n} requests \
             (reconnects {}):\n{}",
            c.reconnects(),
            d.log()
        );
        n += 1;
        std::thread::sleep(every);
    }
    let log = d.log();
    let pid = first.unwrap();
    for bad in [format!("child {pid} "), format!("child {pid}:")] {
        for line in log.lines().filter(|l| l.contains(&bad)) {
            assert!(
                !line.contains("killing") && !line.contains("retiring"),
                "the parent acted on the victim's child {pid}: {line}\n{log}"
            );
        }
    }
}

/// Item 1: a grandchild of tenant A escapes into a session of its own,
/// keeps A's status page and writes "leaving" and a huge request count into
/// it for 10 s. The next child (tenant B's) must not be given that page.
#[test]
fn an_escaped_grandchild_with_its_status_page_cannot_hurt_the_next_tenant() {
    let d = Daemon::start(
        "tenant-escape",
        &[("LSAPI_CHILDREN", "2"), ("LSAPI_MAX_IDLE_CHILDREN", "2")],
        false,
    );
    {
        let mut c = d.connect();
        let r = call_ok(&mut c, &d.req(A, "/escape?12"), b"");
        assert!(r.text().ends_with("escaped"), "{}", r.text());
    }
    // A's child leaves with its connection and is reaped.
    assert!(
        wait_until(Duration::from_secs(10), || children_of(d.w.pid() as i32)
            .iter()
            .all(|(_, s)| *s == 'Z')),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    victim_serves(
        &d,
        Duration::from_secs(8),
        Duration::from_millis(400),
        Duration::from_secs(3),
    );
}

/// Item 1: tenant A grows its own status page's mapping in place over what
/// follows it and writes "leaving" there, while tenant B (forked after A)
/// is served.
#[test]
fn a_grown_status_mapping_reaches_no_other_tenant() {
    let d = Daemon::start(
        "tenant-grow",
        &[("LSAPI_CHILDREN", "3"), ("LSAPI_MAX_IDLE_CHILDREN", "3")],
        false,
    );
    std::thread::scope(|s| {
        let attacker = s.spawn(|| {
            let mut c = d.connect();
            c.call(&d.req(A, "/grow?9"), b"").map(|r| r.text())
        });
        std::thread::sleep(Duration::from_millis(1000));
        victim_serves(
            &d,
            Duration::from_secs(8),
            Duration::from_millis(400),
            Duration::from_secs(3),
        );
        // Whatever happened to the attacker (SIGBUS is its own business).
        let _ = attacker.join().unwrap();
    });
}

/// Item 2: tenant A's children zero their status page and die before
/// answering, several in a row. Tenant B's next connection must not wait
/// for a fork back-off.
#[test]
fn a_tenants_crash_loop_does_not_delay_another_tenant() {
    let d = Daemon::start(
        "tenant-crash",
        &[("LSAPI_CHILDREN", "4"), ("LSAPI_MAX_IDLE_CHILDREN", "4")],
        false,
    );
    for _ in 0..7 {
        let mut c = d.connect();
        let r = c.call(&d.req(A, "/crash"), b"");
        assert!(
            r.as_ref().map_or(true, |r| r.status != 200),
            "the crash answered: {r:?}"
        );
    }
    // Each of B's next connections is answered promptly (a back-off after
    // seven crashes would be 6.4 s).
    for i in 0..3 {
        let t = Instant::now();
        let mut c = d.connect();
        let r = call_ok(&mut c, &d.req(B, "/"), b"");
        assert_eq!(answer(&r.text()).1, B.0 as u32);
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "B's connection {i} waited {:?}:\n{}",
            t.elapsed(),
            d.log()
        );
    }
}

/// The O_APPEND flag of `fd` of process `pid`, from /proc.
fn appends(pid: u32, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| i32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    flags & libc::O_APPEND != 0
}

/// Item 3: tenant A truncates what its fd 2 is and clears O_APPEND on it.
/// Root's log keeps its lines and the parent's descriptor its flags; what
/// the tenants write still reaches the log, marked with pid and uid.
#[test]
fn a_tenant_holds_no_descriptor_of_roots_log() {
    let d = Daemon::start(
        "tenant-log",
        &[("LSAPI_CHILDREN", "2"), ("LSAPI_MAX_IDLE_CHILDREN", "2")],
        true,
    );
    let parent = d.w.pid();
    assert!(appends(parent, 2));
    let before = std::fs::read_to_string(d.log_path()).unwrap();
    assert!(before.contains("suEXEC daemon mode"), "{before}");
    let mut c = d.connect();
    let r = call_ok(&mut c, &d.req(A, "/log"), b"");
    let (pid_a, _, what) = answer(&r.text());
    assert!(!what.contains("truncated"), "the tenant truncated: {what}");
    let mut c = d.connect();
    let r = call_ok(&mut c, &d.req(B, "/say?victim-line"), b"");
    let (pid_b, _, _) = answer(&r.text());
    let marked_a = format!("child {pid_a} (uid {}): tenant-log-marker {pid_a}", A.0);
    let marked_b = format!("child {pid_b} (uid {}): victim-line", B.0);
    assert!(
        d.wait_log(&marked_a, Duration::from_secs(10)),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log(&marked_b, Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let after = std::fs::read_to_string(d.log_path()).unwrap();
    assert!(
        after.starts_with(&before[..before.len().min(200)]),
        "root's lines are gone:\n{after}"
    );
    assert!(appends(parent, 2), "the parent's log lost O_APPEND");
}

/// Item 8: tenant A's request sleeps 30 s while a thread says "idle" and
/// raises its request counter every 0.5 s. The parent must end it by its
/// own clock; an honest long-lived connection of tenant B across the same
/// lease loses no request.
#[test]
fn faked_progress_does_not_keep_a_child_past_its_lease() {
    let d = Daemon::start(
        "tenant-lease",
        &[
            ("LSAPI_CHILDREN", "4"),
            ("LSAPI_MAX_IDLE_CHILDREN", "4"),
            ("LSAPI_MAX_PROCESS_TIME", "2"),
            ("LSAPI_MAX_IDLE", "6"),
        ],
        false,
    );
    let parent = d.w.pid() as i32;
    std::thread::scope(|s| {
        let started = Instant::now();
        let attacker = s.spawn(|| {
            let mut c = d.connect();
            c.call(&d.req(A, "/fake?30"), b"").map(|r| r.text())
        });
        let mut pid = None;
        assert!(wait_until(Duration::from_secs(10), || {
            pid = children_of(parent)
                .into_iter()
                .find(|(p, _)| effective_uid(*p) == Some(A.0 as u32))
                .map(|(p, _)| p);
            pid.is_some()
        }));
        let pid = pid.unwrap();
        // B: requests every 0.5 s on one connection, across its own lease.
        let mut c = d.connect();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(14) {
            let r = c
                .call(&d.req(B, "/"), b"")
                .unwrap_or_else(|e| panic!("B's request {n} failed: {e}\n{}", d.log()));
            assert_eq!(r.status, 200, "B's request {n}:\n{}", d.log());
            n += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            wait_until(Duration::from_secs(10), || !running(pid)),
            "the faking child {pid} still runs {:?} after its request began:\n{}",
            started.elapsed(),
            d.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(24),
            "{:?}",
            started.elapsed()
        );
        assert!(
            d.log().contains(&format!("killing child {pid} ")),
            "{}",
            d.log()
        );
        // B's honest child left at a request boundary when its lease ended
        // (every one of B's requests above was answered).
        assert!(
            d.log().contains(&format!("(uid {}): ", B.0)) && d.log().contains("its lease ended"),
            "{}",
            d.log()
        );
        let _ = attacker.join().unwrap();
    });
}

/// The effective uid of `pid`, from /proc.
fn effective_uid(pid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Item 8: tenant A opens as many long requests as the group has children;
/// it gets its share (half of LSAPI_CHILDREN + LSAPI_EXTRA_CHILDREN), its
/// connections beyond are answered 508 at once, and tenant B is served
/// promptly meanwhile instead of queueing behind A.
#[test]
fn one_tenant_cannot_hold_the_groups_children() {
    let d = Daemon::start(
        "tenant-share",
        &[
            ("LSAPI_CHILDREN", "4"),
            ("LSAPI_EXTRA_CHILDREN", "0"),
            ("LSAPI_MAX_IDLE_CHILDREN", "4"),
        ],
        false,
    );
    std::thread::scope(|s| {
        let hogs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut c = d.connect();
                    let r = c.call(&d.req(A, "/sleep?6"), b"").unwrap();
                    (r.status, Instant::now())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        let t = Instant::now();
        let mut c = d.connect();
        let r = call_ok(&mut c, &d.req(B, "/"), b"");
        let took = t.elapsed();
        assert_eq!(answer(&r.text()).1, B.0 as u32);
        let statuses: Vec<i32> = hogs.into_iter().map(|h| h.join().unwrap().0).collect();
        eprintln!("B's request while A holds its share: {took:?}; A got {statuses:?}");
        assert!(
            took < Duration::from_secs(3),
            "B waited {took:?} behind A (A got {statuses:?}):\n{}",
            d.log()
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            2,
            "A's share is 2 of 4: {statuses:?}\n{}",
            d.log()
        );
        assert_eq!(statuses.iter().filter(|s| **s == 508).count(), 2);
        assert!(
            d.log().contains("holds its share of 2 children"),
            "{}",
            d.log()
        );
    });
}

/// Item 3: tenant A floods its stderr for 4 s (an over-long line first).
/// Tenant B is served promptly meanwhile, the log grows by at most the
/// relay's rate (256 KiB per child per second), and the over-long line is
/// cut, saying so.
#[test]
fn a_tenant_flooding_its_output_cannot_flood_roots_log() {
    let d = Daemon::start(
        "tenant-flood",
        &[("LSAPI_CHILDREN", "4"), ("LSAPI_MAX_IDLE_CHILDREN", "4")],
        true,
    );
    let before = std::fs::metadata(d.log_path()).unwrap().len();
    std::thread::scope(|s| {
        let flooder = s.spawn(|| {
            let mut c = d.connect();
            c.call(&d.req(A, "/flood?4"), b"").map(|r| r.text())
        });
        std::thread::sleep(Duration::from_millis(500));
        victim_serves(
            &d,
            Duration::from_secs(3),
            Duration::from_millis(300),
            Duration::from_secs(2),
        );
        let text = flooder.join().unwrap().expect("the flooder's answer");
        let wrote: u64 = answer(&text)
            .2
            .trim_start_matches("flooded ")
            .parse()
            .unwrap();
        let grew = std::fs::metadata(d.log_path()).unwrap().len() - before;
        assert!(
            grew < 12 * 256 * 1024,
            "the log grew by {grew} bytes while the tenant wrote {wrote}"
        );
        let log = std::fs::read_to_string(d.log_path()).unwrap();
        assert!(
            log.contains(&format!("(uid {}): long-line xxx", A.0)) && log.contains("[line cut]"),
            "{}",
            &log[..log.len().min(4000)]
        );
    });
}
