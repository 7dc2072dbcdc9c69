//! Process life: a bounded shutdown that runs every interpreter's exit work
//! (threads, atexit) without tearing sub-interpreters down, Worker mode on a
//! listener shared by several processes, extreme LSAPI_* values and the cap
//! on application groups.

mod common;

use common::*;
use lswsgi::lsapi::build::RequestSpec;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A scratch directory the worker can write in once it drops root.
fn open_scratch(tag: &str) -> PathBuf {
    let d = scratch(tag);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// A script that starts a thread (daemon or not) the first time it is
/// imported and registers an atexit handler that writes `MARK`.
fn threaded_app(dir: &Path, name: &str, daemon: bool, forever: bool) -> String {
    let path = dir.join(name);
    let mark = dir.join(format!("{name}.atexit"));
    let ticks = dir.join(format!("{name}.ticks"));
    let body = if forever {
        "threading.Event().wait()"
    } else {
        "time.sleep(0.3)"
    };
    std::fs::write(
        &path,
        format!(
            "\
import atexit, os, threading, time
MARK = {mark:?}
TICKS = {ticks:?}
def work():
    while True:
        with open(TICKS, 'a') as f:
            f.write('.')
        time.sleep(0.2)
        if {forever}:
            {body}
t = threading.Thread(target=work, daemon={daemon})
t.start()
def done():
    with open(MARK, 'w') as f:
        f.write(str(os.getpid()))
atexit.register(done)
def application(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'ok']
",
            mark = mark.to_str().unwrap(),
            ticks = ticks.to_str().unwrap(),
            forever = if forever { "True" } else { "False" },
            daemon = if daemon { "True" } else { "False" },
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn request(script: &str, group: Option<&str>) -> RequestSpec {
    let mut spec = RequestSpec::new("GET", "/t.wsgi", script, "/t.wsgi");
    if let Some(g) = group {
        spec.set_env("WSGIApplicationGroup", g);
    }
    spec
}

fn serve_ok(w: &Worker, spec: &RequestSpec) {
    let mut c = w.connect();
    let r = call_ok(&mut c, spec, b"");
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&r.stderr),
        w.log_text()
    );
}

/// SIGTERM, then the exit status within `limit` (None: still running).
fn stop_within(w: &mut Worker, limit: Duration) -> Option<std::process::ExitStatus> {
    let pid = w.pid() as libc::pid_t;
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = w.spawned.child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn worker_exit_runs_atexit_everywhere_with_a_daemon_thread_in_a_group() {
    let dir = open_scratch("exit-daemon");
    let main_app = threaded_app(&dir, "main.wsgi", true, false);
    let group_app = threaded_app(&dir, "group.wsgi", true, false);
    let mut w = Worker::start(&[], &[]);
    serve_ok(&w, &request(&main_app, None));
    serve_ok(&w, &request(&group_app, Some("named")));
    let status = stop_within(&mut w, Duration::from_secs(10)).expect("worker exits");
    let log = w.log_text();
    assert!(!log.contains("Fatal Python error"), "{log}");
    assert_eq!(status.code(), Some(0), "{status:?}\n{log}");
    for name in ["main.wsgi", "group.wsgi"] {
        assert!(
            dir.join(format!("{name}.atexit")).exists(),
            "atexit of {name} did not run\n{log}"
        );
    }
}

#[test]
fn worker_exit_is_bounded_by_a_non_daemon_thread_that_never_ends() {
    let dir = open_scratch("exit-stuck");
    let group_app = threaded_app(&dir, "group.wsgi", false, true);
    let mut w = Worker::start(&[], &[("LSAPI_SHUTDOWN_TIMEOUT", "2")]);
    serve_ok(&w, &request(&group_app, Some("stuck")));
    let t0 = Instant::now();
    let status = stop_within(&mut w, Duration::from_secs(8));
    let log = w.log_text();
    assert!(status.is_some(), "still running 8 s after SIGTERM\n{log}");
    assert!(t0.elapsed() >= Duration::from_millis(1800), "{log}");
    assert!(log.contains("LSAPI_SHUTDOWN_TIMEOUT"), "{log}");
    assert!(!log.contains("Fatal Python error"), "{log}");
}

#[test]
fn group_child_exit_runs_atexit_with_a_daemon_thread_in_a_group() {
    let dir = open_scratch("exit-child");
    let main_app = threaded_app(&dir, "main.wsgi", true, false);
    let group_app = threaded_app(&dir, "group.wsgi", true, false);
    let mut w = Worker::start(&[], &[("LSAPI_CHILDREN", "2"), ("LSAPI_KEEP_LISTEN", "2")]);
    // One connection, so both requests reach the same child.
    let mut c = w.connect();
    for spec in [request(&main_app, None), request(&group_app, Some("named"))] {
        let r = call_ok(&mut c, &spec, b"");
        assert_eq!(r.status, 200, "{}", w.log_text());
    }
    drop(c);
    let status = stop_within(&mut w, Duration::from_secs(10)).expect("group exits");
    // The child's exit work finishes before the parent reaps it.
    let log = w.log_text();
    assert!(!log.contains("Fatal Python error"), "{log}");
    assert_eq!(status.code(), Some(0), "{status:?}\n{log}");
    for name in ["main.wsgi", "group.wsgi"] {
        assert!(
            dir.join(format!("{name}.atexit")).exists(),
            "atexit of {name} did not run in the child\n{log}"
        );
    }
}

#[test]
fn group_parent_exit_is_bounded_by_a_preloaded_non_daemon_thread() {
    let dir = open_scratch("exit-parent");
    let app = threaded_app(&dir, "pre.wsgi", false, true);
    let mut w = Worker::start(
        &["-m", &app],
        &[("LSAPI_CHILDREN", "2"), ("LSAPI_SHUTDOWN_TIMEOUT", "2")],
    );
    serve_ok(&w, &request(&app, None));
    let status = stop_within(&mut w, Duration::from_secs(8));
    let log = w.log_text();
    assert!(status.is_some(), "parent still running 8 s after SIGTERM\n{log}");
    assert!(
        log.contains("while waiting for the non-daemon threads of the main interpreter"),
        "{log}"
    );
}
