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
    eprintln!("worker stopped {:?} after SIGTERM", t0.elapsed());
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
    assert!(
        status.is_some(),
        "parent still running 8 s after SIGTERM\n{log}"
    );
    assert!(
        log.contains("while waiting for the non-daemon threads of the main interpreter"),
        "{log}"
    );
}

/// Starts `n` Worker-mode processes sharing one listening socket as their
/// fd 0, the way LiteSpeed runs several Worker-mode processes of one app.
fn shared_listener(
    n: usize,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> (Vec<std::process::Child>, PathBuf, PathBuf) {
    use std::os::unix::net::UnixListener;
    let socket = dir.join("shared.sock");
    let log = dir.join("stderr.log");
    let listener = UnixListener::bind(&socket).unwrap();
    let children = (0..n)
        .map(|_| {
            let mut cmd = std::process::Command::new(LSWSGI);
            cmd.args(args)
                .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                    listener.try_clone().unwrap(),
                )))
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .unwrap(),
                );
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    (children, socket, log)
}

/// A preloaded app whose thread appends to `ticks.PID` every 100 ms.
fn ticking_app(dir: &Path) -> String {
    let path = dir.join("tick.wsgi");
    std::fs::write(
        &path,
        format!(
            "\
import os, threading, time
def tick():
    path = os.path.join({dir:?}, 'ticks.%d' % os.getpid())
    while True:
        with open(path, 'a') as f:
            f.write('.')
        time.sleep(0.1)
threading.Thread(target=tick, daemon=True).start()
def application(environ, start_response):
    start_response('200 OK', [])
    return [b'ok']
",
            dir = dir.to_str().unwrap()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// A client of a socket the test bound, retrying while the worker starts.
fn connect_to(socket: &Path) -> lswsgi::client::Client {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match lswsgi::client::Client::connect(&socket.to_string_lossy()) {
            Ok(mut c) => {
                c.stream()
                    .set_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                return c;
            }
            Err(e) if Instant::now() >= end => panic!("connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn ticks(dir: &Path, pid: u32) -> u64 {
    std::fs::metadata(dir.join(format!("ticks.{pid}")))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn worker_processes_on_a_shared_listener_keep_threads_running_and_leave_when_idle() {
    let dir = open_scratch("shared");
    let app = ticking_app(&dir);
    let (mut kids, socket, log) =
        shared_listener(3, &["-m", &app], &[("LSAPI_MAX_IDLE", "3")], &dir);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // Every connection wakes both processes; one of them loses the accept.
    let spec = request(&app, None);
    let t0 = Instant::now();
    let pids: Vec<u32> = kids.iter().map(|k| k.id()).collect();
    // Whether some process sits in accept4 (syscall 288 on x86_64, 242 on
    // aarch64) once the connection was taken.
    let in_accept = |pid: u32| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let nr = s.split_whitespace().next().unwrap_or("").to_string();
        nr == if cfg!(target_arch = "aarch64") {
            "242"
        } else {
            "288"
        }
    };
    let mut rounds = 0;
    for _ in 0..100 {
        rounds += 1;
        let mut c = connect_to(&socket);
        let r = call_ok(&mut c, &spec, b"");
        assert_eq!(r.status, 200, "{}", read_log());
        drop(c);
        std::thread::sleep(Duration::from_millis(30));
        if pids.iter().any(|&p| in_accept(p)) {
            break;
        }
    }
    eprintln!("rounds until a process sat in accept4: {rounds}");
    let last = Instant::now();
    let before: Vec<u64> = pids.iter().map(|&p| ticks(&dir, p)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    for (i, &p) in pids.iter().enumerate() {
        let now = ticks(&dir, p);
        assert!(
            now >= before[i] + 5,
            "the app thread of {p} stopped while the process waited ({} -> {now})\n{}",
            before[i],
            read_log()
        );
    }
    // LSAPI_MAX_IDLE=3 counts from each process's last request.
    let end = last + Duration::from_secs(6);
    for k in kids.iter_mut() {
        let mut exited = None;
        while Instant::now() < end {
            if let Some(s) = k.try_wait().unwrap() {
                exited = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if exited.is_none() {
            let _ = k.kill();
            let _ = k.wait();
            panic!(
                "{} still running {:?} after its last request\n{}",
                k.id(),
                last.elapsed(),
                read_log()
            );
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(
        read_log().matches("idle for LSAPI_MAX_IDLE").count(),
        3,
        "{}",
        read_log()
    );
}

#[test]
fn worker_mode_backs_off_when_out_of_descriptors() {
    let dir = open_scratch("emfile");
    let app = dir.join("hog.wsgi");
    // Takes every free descriptor at import, so accept fails with EMFILE.
    std::fs::write(
        &app,
        "\
import os
held = []
try:
    while True:
        held.append(os.open('/dev/null', os.O_RDONLY))
except OSError:
    pass
def application(environ, start_response):
    start_response('200 OK', [])
    return [b'ok']
",
    )
    .unwrap();
    let app = app.to_str().unwrap().to_string();
    let mut w = Worker::start_via(&["prlimit", "--nofile=64:64"], &["-m", &app], &[]);
    // A pending connection keeps the listener readable.
    let _c = w.connect();
    std::thread::sleep(Duration::from_secs(3));
    let text = w.log_text();
    let lines = text.matches("Too many open files").count();
    assert!(lines >= 1, "{text}");
    assert!(lines <= 2, "{lines} lines in 3 s\n{text}");
    let status = w.spawned.stop(Duration::from_secs(3)).unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", w.log_text());
}

/// A script that answers with its process id.
fn pid_app(dir: &Path) -> String {
    let path = dir.join("pid.wsgi");
    std::fs::write(
        &path,
        "\
import os
def application(environ, start_response):
    start_response('200 OK', [])
    return [str(os.getpid()).encode()]
",
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn max_int_values_are_clamped_and_the_group_keeps_serving() {
    let dir = open_scratch("maxint");
    let app = pid_app(&dir);
    let max = "18446744073709551615";
    let vars = [
        "LSAPI_MAX_REQS",
        "LSAPI_MAX_IDLE",
        "LSAPI_MAX_PROCESS_TIME",
        "LSAPI_PGRP_MAX_IDLE",
        "LSAPI_SLOW_REQ_MSECS",
        "LSAPI_EXTRA_CHILDREN",
        "LSAPI_MAX_IDLE_CHILDREN",
        "LSAPI_MAX_BUSY_WORKER",
        "LSAPI_KEEP_LISTEN",
        "LSAPI_SHUTDOWN_TIMEOUT",
    ];
    let mut env: Vec<(&str, &str)> = vars.iter().map(|k| (*k, max)).collect();
    env.push(("LSAPI_CHILDREN", "2"));
    let mut w = Worker::start(&[], &env);
    let spec = request(&app, None);
    let ask = |w: &Worker| {
        let mut c = w.connect();
        let r = call_ok(&mut c, &spec, b"");
        assert_eq!(r.status, 200, "{}", w.log_text());
        r.text()
    };
    let first = ask(&w);
    std::thread::sleep(Duration::from_secs(6));
    assert!(w.alive(), "{}", w.log_text());
    let second = ask(&w);
    let log = w.log_text();
    assert_eq!(first, second, "the idle child was retired early\n{log}");
    for k in vars {
        assert!(log.contains(&format!("{k}={max} is above")), "{k}\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn worker_signals_do_not_interrupt_the_apps_blocking_calls() {
    let dir = open_scratch("restart");
    let app = dir.join("eintr.wsgi");
    // A raw read(2) through ctypes (no Python EINTR retry) while a child
    // exits: the worker's SIGCHLD handler must not make it fail.
    std::fs::write(
        &app,
        "\
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def application(environ, start_response):
    r, w = os.pipe()
    quick = subprocess.Popen(['/bin/sleep', '0.2'])
    writer = subprocess.Popen(['/bin/sh', '-c', 'sleep 0.6; echo x'], stdout=w)
    os.close(w)
    buf = ctypes.create_string_buffer(8)
    n = libc.read(r, buf, 8)
    err = ctypes.get_errno()
    os.close(r)
    quick.wait(); writer.wait()
    start_response('200 OK', [])
    return [('read %d errno %d' % (n, err if n < 0 else 0)).encode()]
",
    )
    .unwrap();
    let app = app.to_str().unwrap().to_string();
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &request(&app, None), b"");
    assert_eq!(r.text(), "read 2 errno 0", "{}", w.log_text());
}

#[test]
fn application_groups_are_capped_per_process() {
    let dir = open_scratch("groupcap");
    let app = pid_app(&dir);
    let w = Worker::start(&[], &[("LSAPI_MAX_APP_GROUPS", "2")]);
    let mut c = w.connect();
    let status =
        |c: &mut lswsgi::client::Client, g: Option<&str>| call_ok(c, &request(&app, g), b"").status;
    assert_eq!(status(&mut c, Some("a")), 200, "{}", w.log_text());
    assert_eq!(status(&mut c, Some("b")), 200, "{}", w.log_text());
    assert_eq!(status(&mut c, Some("c")), 500, "{}", w.log_text());
    assert!(
        w.wait_log("LSAPI_MAX_APP_GROUPS=2", Duration::from_secs(2)),
        "{}",
        w.log_text()
    );
    // The existing groups and the main interpreter keep serving.
    assert_eq!(status(&mut c, Some("a")), 200);
    assert_eq!(status(&mut c, Some("b")), 200);
    assert_eq!(status(&mut c, None), 200);
    assert_eq!(status(&mut c, Some("%{GLOBAL}")), 200);
    assert_eq!(w.log_text().matches("created the interpreter").count(), 2);
}

#[test]
fn group_child_exit_is_bounded_by_a_non_daemon_thread_in_a_group() {
    let dir = open_scratch("exit-child-stuck");
    let group_app = threaded_app(&dir, "group.wsgi", false, true);
    let mut w = Worker::start(
        &[],
        &[("LSAPI_CHILDREN", "2"), ("LSAPI_SHUTDOWN_TIMEOUT", "2")],
    );
    serve_ok(&w, &request(&group_app, Some("stuck")));
    let t0 = Instant::now();
    let status = stop_within(&mut w, Duration::from_secs(8));
    let took = t0.elapsed();
    let log = w.log_text();
    assert!(
        status.is_some(),
        "group still running 8 s after SIGTERM\n{log}"
    );
    eprintln!("group stopped {took:?} after SIGTERM");
    assert!(
        log.contains("(LSAPI_SHUTDOWN_TIMEOUT), while waiting for the non-daemon threads of application group \"stuck\""),
        "{log}"
    );
}
