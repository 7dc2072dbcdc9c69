//! The ProcessGroup supervisor against hostile and broken children, with
//! real processes: tenant apps that write the shared status (foreign pids,
//! pid -1, a zeroed pid, Idle during a long request), in plain ProcessGroup
//! mode and in suEXEC daemon mode (root parent, tenant children); children
//! stuck in a thread join, in an at-fork hook, or crashing at start-up;
//! helper subprocesses of the application. Run as root (as CI does).
//!
//! `LSWSGI_UNDER_TEST` may name another worker binary (to show that a test
//! fails on an older build); by default the one cargo built.

mod common;

use common::{
    children_of, euid, field, proc_stat, running, scratch, suexec_identity, suexec_secret,
    wait_until, Start, Worker, LSWSGI,
};
use lswsgi::client::{Client, Ending};
use lswsgi::lsapi::build::RequestSpec;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(40);

fn binary() -> String {
    std::env::var("LSWSGI_UNDER_TEST").unwrap_or_else(|_| LSWSGI.to_string())
}

fn require_root() {
    assert_eq!(euid(), 0, "these tests must run as root (as CI does)");
}

/// `lswsgi ARGS` (the one under test) with `env`, in a session of its own.
fn group(args: &[&str], env: &[(&str, &str)]) -> Worker {
    let bin = binary();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    in_session(&argv, env)
}

/// `ARGV` with `env`, in a session of its own that Drop kills; its scratch
/// directory readable by the tenants.
fn in_session(argv: &[&str], env: &[(&str, &str)]) -> Worker {
    Start::argv(argv)
        .env(env)
        .session()
        .for_all_users()
        .tag("supervision")
        .io_timeout(IO_TIMEOUT)
        .spawn()
}

/// The hostile app copied where any user can read it.
fn hostile_app(dir: &Path) -> String {
    let path = dir.join("hostile_slot.wsgi");
    std::fs::copy(common::app("hostile_slot.wsgi"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path.to_str().unwrap().to_string()
}

fn hostile(app: &str, path_and_query: &str) -> RequestSpec {
    RequestSpec::new("GET", &format!("/h.wsgi{path_and_query}"), app, "/h.wsgi")
}

/// A root process the test owns, as the target of a forged pid.
struct Victim(std::process::Child);

impl Victim {
    fn start() -> Victim {
        Victim(
            std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The forged-pid attack: the tenant writes a root process's pid and Busy
/// over what it finds of the table, then holds its request past
/// LSAPI_MAX_PROCESS_TIME. The root process must survive, and the group
/// must go on serving.
fn foreign_pid_survives(daemon: bool) {
    require_root();
    let mut victim = Victim::start();
    let probe = scratch("victim-dir");
    let (secret_path, secret) = suexec_secret(&probe);
    let mut env = vec![
        ("LSAPI_CHILDREN", "2"),
        ("LSAPI_MAX_PROCESS_TIME", "1"),
        ("LSAPI_KEEP_LISTEN", "0"),
    ];
    let sp = secret_path.to_str().unwrap().to_string();
    if daemon {
        env.push(("LSAPI_SECRET", &sp));
        env.push(("LSAPI_DEFAULT_UID", "4444"));
        env.push(("LSAPI_DEFAULT_GID", "4444"));
    }
    let g = group(&[], &env);
    let app = hostile_app(&g.dir);
    let mut spec = hostile(&app, &format!("/plant?{},3,4", victim.pid()));
    if daemon {
        spec.special_env = suexec_identity(4321, 4321, &secret);
    }
    let mut c = g.connect();
    let r = c.call(&spec, b"").expect("answer");
    // Whatever the group did to the attacker, the victim lives.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        victim.alive(),
        "the group killed a root process it never forked:\n{}",
        g.log_text()
    );
    if r.status == 200 {
        assert_ne!(
            field(&r, "planted"),
            "0",
            "the attack found nothing to write"
        );
    }
    let log = g.log_text();
    assert!(!log.contains(&format!("child {} ", victim.pid())), "{log}");
    // The group still serves.
    let mut c = g.connect();
    let mut spec = hostile(&app, "/");
    if daemon {
        spec.special_env = suexec_identity(4321, 4321, &secret);
    }
    let r = c.call(&spec, b"").expect("served after the attack");
    assert_eq!(r.status, 200, "{}", g.log_text());
    drop(g);
    assert!(victim.alive());
    let _ = std::fs::remove_dir_all(probe);
}

#[test]
fn forged_foreign_pid_is_never_signalled() {
    foreign_pid_survives(false);
}

#[test]
fn forged_foreign_pid_is_never_signalled_by_a_root_daemon() {
    foreign_pid_survives(true);
}

#[test]
fn forged_pid_minus_one_signals_nobody() {
    require_root();
    let probe = scratch("minus-one");
    let (secret_path, secret) = suexec_secret(&probe);
    // A root suEXEC daemon, in a PID namespace of its own, so an old build's kill(-1) as root
    // reaches only the namespace: there the group is pid 1 and a sentinel
    // `sleep` it did not fork shares the namespace.
    let script = format!("sleep 300 & exec {}", binary());
    let g = in_session(
        &["unshare", "--pid", "--fork", "sh", "-c", &script],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_MAX_PROCESS_TIME", "1"),
            ("LSAPI_KEEP_LISTEN", "0"),
            ("LSAPI_SECRET", secret_path.to_str().unwrap()),
        ],
    );
    // The namespace's pid 1 (the group) is unshare's child; the sentinel is its child.
    let mut group = 0;
    assert!(wait_until(Duration::from_secs(10), || {
        group = g.children().first().map_or(0, |c| c.0);
        group != 0
            && std::fs::read_to_string(format!("/proc/{group}/comm"))
                .is_ok_and(|c| c.trim() == "lswsgi")
    }));
    let sentinel = children_of(group)
        .into_iter()
        .find(|&(p, _)| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .expect("sentinel")
        .0;
    let app = hostile_app(&g.dir);
    let mut c = g.connect();
    let mut spec = hostile(&app, "/plant?-1,3,4");
    spec.special_env = suexec_identity(4321, 4321, &secret);
    let _ = c.call(&spec, b"");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        running(sentinel),
        "kill(-1) reached the sentinel:\n{}",
        g.log_text()
    );
    assert!(running(group), "{}", g.log_text());
    let mut c = g.connect();
    let mut spec = hostile(&app, "/");
    spec.special_env = suexec_identity(4321, 4321, &secret);
    let r = c.call(&spec, b"").expect("served");
    assert_eq!(r.status, 200);
    let _ = std::fs::remove_dir_all(probe);
}

#[test]
fn zeroed_own_pid_cannot_stop_the_group() {
    require_root();
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_EXTRA_CHILDREN", "0"),
            ("LSAPI_KEEP_LISTEN", "0"),
        ],
    );
    let app = hostile_app(&g.dir);
    // Three children in turn zero their slot's first words and leave.
    for _ in 0..3 {
        let mut c = g.connect();
        let r = c.call(&hostile(&app, "/plant?0,0"), b"").expect("answer");
        assert_eq!(r.status, 200, "{}", g.log_text());
        let child = field(&r, "pid").parse::<i32>().unwrap();
        drop(c);
        assert!(wait_until(Duration::from_secs(5), || !running(child)));
    }
    // A fourth connection is still served, and soon.
    let mut c = g.connect();
    c.stream()
        .set_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let r = c.call(&hostile(&app, "/"), b"");
    assert!(
        r.as_ref().is_ok_and(|r| r.status == 200),
        "the group stopped serving: {r:?}\n{}",
        g.log_text()
    );
}

#[test]
fn saying_idle_during_a_long_request_does_not_escape_the_limits() {
    require_root();
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_MAX_PROCESS_TIME", "1"),
            ("LSAPI_MAX_IDLE", "2"),
        ],
    );
    let app = hostile_app(&g.dir);
    let mut c = g.connect();
    let t = Instant::now();
    let r = c.call(&hostile(&app, "/idle?60"), b"");
    let took = t.elapsed();
    let log = g.log_text();
    assert!(
        r.as_ref()
            .is_ok_and(|r| r.ending == Ending::Eof && r.status == 0),
        "the lying request was not cut: {r:?}\n{log}"
    );
    assert!(took < Duration::from_secs(25), "{took:?}\n{log}");
    assert!(log.contains("with SIGKILL"), "{log}");
}

#[test]
fn child_stuck_in_a_thread_join_after_max_reqs_is_killed() {
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_EXTRA_CHILDREN", "0"),
            ("LSAPI_MAX_REQS", "1"),
            ("LSAPI_KEEP_LISTEN", "0"),
            // The child's own exit bound would end it first; this tests the
            // parent's, which holds whatever the child does.
            ("LSAPI_SHUTDOWN_TIMEOUT", "60"),
        ],
    );
    let app = hostile_app(&g.dir);
    let mut stuck = Vec::new();
    for _ in 0..3 {
        let mut c = g.connect();
        let r = c.call(&hostile(&app, "/thread"), b"");
        let r =
            r.unwrap_or_else(|e| panic!("no answer ({e}); the group is full:\n{}", g.log_text()));
        assert_eq!(r.status, 200);
        stuck.push(field(&r, "pid").parse::<i32>().unwrap());
    }
    for pid in &stuck {
        assert!(
            wait_until(Duration::from_secs(10), || !running(*pid)),
            "child {pid} lives on:\n{}",
            g.log_text()
        );
    }
    let log = g.log_text();
    assert!(
        log.contains(&format!(
            "killing child {} with SIGKILL: still not gone after serving",
            stuck[0]
        )),
        "{log}"
    );
    assert!(log.contains(&format!("child {} was killed by signal 9", stuck[0])));
}

#[test]
fn stuck_exiting_child_dies_with_its_parent() {
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_MAX_REQS", "1"),
            ("LSAPI_KEEP_LISTEN", "0"),
        ],
    );
    let app = hostile_app(&g.dir);
    let mut c = g.connect();
    let r = c.call(&hostile(&app, "/thread"), b"").expect("answer");
    let child = field(&r, "pid").parse::<i32>().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(running(child));
    g.signal(libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(3), || !running(child)),
        "the stuck child outlived its parent"
    );
}

fn forking_group(hook: &str) -> Worker {
    group(
        &["-m", &common::app("forking.py")],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_KEEP_LISTEN", "0"),
            ("FORK_HOOK", hook),
        ],
    )
}

#[test]
fn the_applications_own_subprocesses_are_left_to_it() {
    let g = forking_group("");
    let mut c = g.connect();
    let r = c
        .call(&RequestSpec::new("GET", "/spawn", "", ""), b"")
        .expect("answer");
    assert_eq!(r.status, 200, "{}", g.log_text());
    // A helper the child started is the child's: its status reaches the app.
    assert_eq!(field(&r, "rc"), "7");
    // The helper the preloaded app started in the parent is never reaped as
    // a child of the group: it stays the app's (a zombie it may wait for).
    let helper: i32 = field(&r, "helper").parse().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let log = g.log_text();
    assert!(!log.contains(&format!("child {helper} ")), "{log}");
    assert_eq!(proc_stat(helper), Some(('Z', g.pid() as i32)), "{log}");
}

#[test]
fn start_up_crash_loop_backs_off() {
    let g = forking_group("exit");
    assert!(g.wait_log("process group: up to", Duration::from_secs(10)));
    let t = Instant::now();
    let mut attempts = 0;
    while t.elapsed() < Duration::from_secs(4) {
        let mut c = g.connect();
        c.stream()
            .set_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let _ = c.call(&RequestSpec::new("GET", "/", "", ""), b"");
        attempts += 1;
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = g.log_text();
    let forks = log.matches("exited with status 1").count();
    assert!(
        (2..=12).contains(&forks),
        "{forks} forks in 4 s for {attempts} connections:\n{log}"
    );
    let reports = log.matches("children die before serving").count();
    assert!((1..=2).contains(&reports), "{log}");
}

#[test]
fn child_stuck_before_its_pid_notice_is_killed() {
    let g = forking_group("hang");
    let mut c = g.connect();
    let t = Instant::now();
    let r = c.call(&RequestSpec::new("GET", "/", "", ""), b"");
    let took = t.elapsed();
    let log = g.log_text();
    assert!(
        match &r {
            Ok(r) => r.ending == Ending::Eof && r.pid.is_none(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        },
        "{r:?}\n{log}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(log.contains("sent no PID notice within 10 s"), "{log}");
}

#[test]
fn accept_failures_back_off_and_recover() {
    require_root();
    // A root daemon, so that prlimit(1) as root may change its limits
    // without CAP_SYS_RESOURCE.
    let probe = scratch("emfile");
    let (secret, _) = suexec_secret(&probe);
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
        ],
    );
    assert!(g.wait_log("process group: up to", Duration::from_secs(10)));
    // The lowest free descriptor number becomes the limit: accept gets EMFILE.
    let used: std::collections::HashSet<i32> = std::fs::read_dir(format!("/proc/{}/fd", g.pid()))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let free = (0..).find(|n| !used.contains(n)).unwrap();
    let prlimit = |n: &str| {
        let ok = std::process::Command::new("prlimit")
            .args(["--pid", &g.pid().to_string(), &format!("--nofile={n}:")])
            .output()
            .unwrap();
        assert!(ok.status.success(), "prlimit {n}: {:?}", ok);
    };
    prlimit(&free.to_string());
    let addr = g.spawned.addr();
    let app = hostile_app(&g.dir);
    let client = std::thread::spawn(move || {
        let mut c = Client::connect(&addr).unwrap();
        c.stream().set_timeout(Some(IO_TIMEOUT)).unwrap();
        c.call(&hostile(&app, "/"), b"")
    });
    std::thread::sleep(Duration::from_secs(3));
    let failures = g.log_text().matches("accept failed").count();
    prlimit("1024");
    let r = client
        .join()
        .unwrap()
        .expect("served once descriptors are back");
    assert_eq!(r.status, 200);
    assert!(
        (1..=2).contains(&failures),
        "{failures} lines:\n{}",
        g.log_text()
    );
}

#[test]
fn max_reqs_recycling_is_spread_by_the_jitter() {
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_MAX_REQS", "20"),
            ("LSAPI_MAX_REQS_JITTER", "50"),
            ("LSAPI_KEEP_LISTEN", "0"),
        ],
    );
    let app = hostile_app(&g.dir);
    let mut served = Vec::new();
    for _ in 0..6 {
        let mut c = g.connect();
        let mut n = 0;
        loop {
            let r = c.call(&hostile(&app, "/"), b"").expect("answer");
            assert_eq!(r.status, 200);
            n += 1;
            if r.ending != Ending::End || c.closing() || n == 20 {
                break;
            }
        }
        served.push(n);
    }
    // Each child served between 10 and 20 requests, and not all the same.
    assert!(served.iter().all(|n| (10..=20).contains(n)), "{served:?}");
    assert!(served.iter().any(|&n| n != served[0]), "{served:?}");
}
