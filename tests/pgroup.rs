//! ProcessGroup mode and the process lifecycle, with real processes: the
//! built `lswsgi` started the way LiteSpeed starts it (a listening socket on
//! fd 0) with LSAPI_* settings, driven over LSAPI, observed through its
//! answers, its log (SIGUSR2 logs the child table) and /proc.
//!
//! Every worker runs in its own session (started through setsid(1)), so the
//! guard's Drop kills the whole group, orphans included, even when a test
//! fails. Every read has a time-out and every wait a deadline.

mod common;

use common::{app, field, running, scratch, wait_until, Start, Worker, LSWSGI};
use lswsgi::client::{Client, Ending, Response};
use lswsgi::lsapi::build::RequestSpec;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Read/write time-out of every client connection.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// `lswsgi ARGS` with `env`, in a session of its own.
fn group(args: &[&str], env: &[(&str, &str)]) -> Worker {
    in_session(Start::worker(args), env)
}

/// `sh -c SCRIPT` (a starter that runs the worker) with `env`, in a session
/// of its own.
fn group_under_shell(script: &str, env: &[(&str, &str)]) -> Worker {
    in_session(Start::argv(&["sh", "-c", script]), env)
}

fn in_session(start: Start, env: &[(&str, &str)]) -> Worker {
    start
        .env(env)
        .session()
        .tag("pgroup")
        .io_timeout(IO_TIMEOUT)
        .spawn()
}

/// A request to tests/apps/pg_app.wsgi (loaded per request, no -m).
fn req(path_and_query: &str) -> RequestSpec {
    RequestSpec::new(
        "GET",
        &format!("/pg_app.wsgi{path_and_query}"),
        &app("pg_app.wsgi"),
        "/pg_app.wsgi",
    )
}

/// The serving process's pid, from the answer.
fn served_by(r: &Response) -> i32 {
    field(r, "pid").parse().unwrap()
}

/// Calls and asserts a complete 200 response.
fn call_ok(c: &mut Client, spec: &RequestSpec) -> Response {
    let r = c.call(spec, b"").expect("response");
    assert_eq!(r.ending, Ending::End, "response {:?}", r);
    assert_eq!(r.status, 200, "body {:?}", r.text());
    r
}

/// One request on a new connection to `addr` (for threads).
fn call_on_new_connection(addr: &str, spec: &RequestSpec) -> Response {
    let mut c = Client::connect(addr).expect("connect");
    c.stream().set_timeout(Some(IO_TIMEOUT)).unwrap();
    call_ok(&mut c, spec)
}

/// What a connection holds after its last response: the next packet the
/// application sends (CONN_CLOSE when it hands the connection back).
fn next_ending(c: &mut Client) -> Ending {
    c.read_response().map(|r| r.ending).unwrap_or(Ending::Eof)
}

#[test]
fn four_concurrent_connections_get_four_children() {
    let g = group(
        &[],
        &[("LSAPI_CHILDREN", "4"), ("LSAPI_MAX_IDLE_CHILDREN", "4")],
    );
    let addr = g.addr();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| call_on_new_connection(&addr, &req("/sleep?1.5"))))
            .collect();
        // While all four requests are in flight: the table and /proc agree.
        assert!(
            wait_until(Duration::from_secs(10), || g.live_children().len() == 4),
            "children: {:?}",
            g.children()
        );
        assert!(wait_until(Duration::from_secs(5), || g
            .status()
            .contains("status: 4 children (busy 4, idle 0, accepting 0)")));
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut pids: Vec<i32> = results.iter().map(served_by).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four distinct children: {pids:?}");
    for r in &results {
        // The PID notice came first and stood in for REQ_RECEIVED.
        assert_eq!(r.pid, Some(served_by(r)));
        assert_eq!(r.packets[0], 6, "packets {:?}", r.packets);
        assert!(!r.packets.contains(&7), "packets {:?}", r.packets);
        assert_eq!(field(r, "ppid"), g.pid().to_string());
        assert_eq!(field(r, "multiprocess"), "True");
        // Without -m, each child loads the script itself, on demand.
        assert_eq!(field(r, "loaded_by"), field(r, "pid"));
        assert_eq!(field(r, "lsapi_env"), "", "LSAPI_* reached os.environ");
    }
}

#[test]
fn pid_notice_replaces_only_the_first_req_received() {
    let g = group(&[], &[("LSAPI_CHILDREN", "2")]);
    let mut c = g.connect();
    let first = call_ok(&mut c, &req("/"));
    let second = call_ok(&mut c, &req("/"));
    assert_eq!(first.packets, vec![6, 3, 4, 5]);
    assert_eq!(second.packets, vec![7, 3, 4, 5]);
    assert_eq!(second.pid, None);
    assert_eq!(served_by(&first), served_by(&second));
}

#[test]
fn slow_requests_are_acknowledged_before_the_application_runs() {
    // LiteSpeed fails (Worker mode) or duplicates (ProcessGroup) a request
    // that gets no packet within 10 s: REQ_RECEIVED must not wait for the app.
    for env in [vec![], vec![("LSAPI_CHILDREN", "2")]] {
        let g = group(&[], &env);
        let mut c = g.connect();
        call_ok(&mut c, &req("/")); // in a child, this one had the PID notice
        let r = call_ok(&mut c, &req("/sleep?2"));
        assert_eq!(r.packets, vec![7, 3, 4, 5], "{env:?}");
        assert!(
            r.first_byte < Duration::from_secs(1),
            "{env:?}: {:?}",
            r.first_byte
        );
    }
}

#[test]
fn accept_notify_sends_req_received_at_accept() {
    use std::io::Read;
    // Worker mode: REQ_RECEIVED before any request, none per request after.
    let g = group(&[], &[("LSAPI_ACCEPT_NOTIFY", "1")]);
    let mut c = g.connect();
    let mut head = [0u8; 8];
    c.stream().read_exact(&mut head).unwrap();
    assert_eq!((head[0], head[1], head[2]), (b'L', b'S', 7));
    assert_eq!(call_ok(&mut c, &req("/")).packets, vec![3, 4, 5]);
    assert_eq!(call_ok(&mut c, &req("/")).packets, vec![3, 4, 5]);

    // ProcessGroup: the PID notice goes first, and no REQ_RECEIVED follows.
    let g = group(
        &[],
        &[("LSAPI_CHILDREN", "2"), ("LSAPI_ACCEPT_NOTIFY", "1")],
    );
    let mut c = g.connect();
    assert_eq!(call_ok(&mut c, &req("/")).packets, vec![6, 3, 4, 5]);
    assert_eq!(call_ok(&mut c, &req("/")).packets, vec![3, 4, 5]);
}

#[test]
fn preload_imports_in_the_parent_and_freezes_the_heap() {
    let g = group(&["-m", &app("pg_app.wsgi")], &[("LSAPI_CHILDREN", "2")]);
    let mut c = g.connect();
    let r = call_ok(&mut c, &RequestSpec::new("GET", "/", "", ""));
    assert_eq!(field(&r, "loaded_by"), g.pid().to_string());
    assert_ne!(served_by(&r), g.pid() as i32);
    let frozen: i64 = field(&r, "frozen").parse().unwrap();
    assert!(frozen > 1000, "gc.freeze before fork: {frozen}");
    assert!(g.log_text().contains("gc.freeze: "));
}

#[test]
fn max_reqs_replaces_the_child() {
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_MAX_REQS", "3"),
            ("LSAPI_KEEP_LISTEN", "0"),
        ],
    );
    let mut c = g.connect();
    let first = served_by(&call_ok(&mut c, &req("/")));
    for _ in 0..2 {
        assert_eq!(served_by(&call_ok(&mut c, &req("/"))), first);
    }
    // The third response was the last: the child says so and leaves.
    assert_eq!(next_ending(&mut c), Ending::Close);
    assert!(wait_until(Duration::from_secs(5), || !running(first)));
    assert!(g.wait_log(
        &format!("[{first}] [INFO] exiting after 3 requests (LSAPI_MAX_REQS)"),
        Duration::from_secs(2)
    ));
    let mut c = g.connect();
    let second = served_by(&call_ok(&mut c, &req("/")));
    assert_ne!(second, first);
    assert_eq!(g.live_children(), vec![second]);
}

#[test]
fn runaway_request_is_killed_and_the_group_keeps_serving() {
    let g = group(
        &[],
        &[("LSAPI_CHILDREN", "2"), ("LSAPI_MAX_PROCESS_TIME", "1")],
    );
    let addr = g.addr();
    let started = Instant::now();
    let runaway = std::thread::spawn(move || {
        let mut c = Client::connect(&addr).unwrap();
        c.stream().set_timeout(Some(IO_TIMEOUT)).unwrap();
        c.call(&req("/sleep?60"), b"")
    });
    assert!(
        g.wait_log(
            "with SIGTERM: its request has run for",
            Duration::from_secs(5)
        ),
        "{}",
        g.log_text()
    );
    assert!(
        g.wait_log("with SIGKILL", Duration::from_secs(12)),
        "{}",
        g.log_text()
    );
    let r = runaway.join().unwrap().expect("read");
    assert_eq!(r.ending, Ending::Eof, "the runaway's connection just ends");
    let victim = r.pid.expect("pid notice");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let log = g.log_text();
    assert!(log.contains(&format!("killing runaway child {victim} with SIGTERM")));
    assert!(log.contains(&format!("killing runaway child {victim} with SIGKILL")));
    // The parent reaps (and logs) the victim just after its connection ends.
    assert!(
        g.wait_log(
            &format!("child {victim} was killed by signal 9"),
            Duration::from_secs(5)
        ),
        "{}",
        g.log_text()
    );
    // The group still serves, from a new child.
    let mut c = g.connect();
    assert_ne!(served_by(&call_ok(&mut c, &req("/"))), victim);
}

#[test]
fn parent_exits_after_pgrp_max_idle() {
    let mut g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_PGRP_MAX_IDLE", "2"),
            ("LSAPI_KEEP_LISTEN", "0"),
        ],
    );
    // A child keeps the group busy; once it is gone the clock starts.
    let mut c = g.connect();
    call_ok(&mut c, &req("/sleep?1"));
    drop(c);
    let t = Instant::now();
    assert!(g.exits_within(Duration::from_secs(8)), "{}", g.log_text());
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(g
        .log_text()
        .contains("process group stopped: no children for 2 s (LSAPI_PGRP_MAX_IDLE)"));
}

/// Starts `lswsgi` through a shell that stays as its parent (the starter)
/// and returns the group and the worker's pid.
fn start_under_shell(env: &[(&str, &str)]) -> (Worker, i32) {
    // A background job's stdin is /dev/null unless redirected: keep the
    // listener on fd 0 through fd 3.
    let script = format!("exec 3<&0; {LSWSGI} <&3 3<&- & exec 3<&-; wait");
    let g = group_under_shell(&script, env);
    let mut worker = 0;
    assert!(wait_until(Duration::from_secs(10), || {
        match g.children().first() {
            Some(&(pid, _)) => {
                worker = pid;
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "lswsgi")
            }
            None => false,
        }
    }));
    (g, worker)
}

#[test]
fn worker_exits_when_its_starter_dies() {
    let (g, worker) = start_under_shell(&[]);
    let mut c = g.connect();
    call_ok(&mut c, &req("/"));
    g.signal(libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(3), || !running(worker)),
        "worker still running"
    );
    assert_eq!(next_ending(&mut c), Ending::Close);
}

#[test]
fn process_group_exits_when_its_starter_dies() {
    let (g, parent) = start_under_shell(&[("LSAPI_CHILDREN", "2")]);
    let mut c = g.connect();
    let child = served_by(&call_ok(&mut c, &req("/")));
    g.signal(libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(4), || !running(parent)
        && !running(child)));
}

#[test]
fn ppid_no_check_outlives_its_starter() {
    let (g, worker) = start_under_shell(&[("LSAPI_PPID_NO_CHECK", "1")]);
    let mut c = g.connect();
    call_ok(&mut c, &req("/"));
    g.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(3));
    assert!(running(worker));
    call_ok(&mut c, &req("/"));
}

#[test]
fn children_of_a_killed_parent_finish_their_request_then_exit() {
    let g = group(&[], &[("LSAPI_CHILDREN", "2")]);
    let addr = g.addr();
    let t = std::thread::spawn(move || {
        let mut c = Client::connect(&addr).unwrap();
        c.stream().set_timeout(Some(IO_TIMEOUT)).unwrap();
        let r = call_ok(&mut c, &req("/sleep?1.5"));
        (r, c)
    });
    assert!(wait_until(Duration::from_secs(5), || g
        .live_children()
        .len()
        == 1));
    let child = g.live_children()[0];
    std::thread::sleep(Duration::from_millis(300));
    g.signal(libc::SIGKILL);
    let (r, mut c) = t.join().unwrap();
    assert_eq!(served_by(&r), child, "the request in flight finished");
    // Then the orphan leaves at once, handing its connection back.
    let t = Instant::now();
    assert_eq!(next_ending(&mut c), Ending::Close);
    assert!(wait_until(Duration::from_secs(2), || !running(child)));
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

/// RLIMIT_CORE of `pid` (soft limit) as /proc shows it.
fn core_limit(pid: i32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_string();
    line.split_whitespace().nth(4).unwrap().to_string()
}

#[test]
fn core_dumps_are_off_unless_allowed() {
    for (allow, expected) in [(false, "0"), (true, "unlimited")] {
        let script = format!("ulimit -c unlimited; exec {LSWSGI}");
        let mut env = vec![("LSAPI_CHILDREN", "2")];
        if allow {
            env.push(("LSAPI_ALLOW_CORE_DUMP", "1"));
        }
        let g = group_under_shell(&script, &env);
        let mut c = g.connect();
        let child = served_by(&call_ok(&mut c, &req("/")));
        assert_eq!(
            core_limit(g.pid() as i32),
            expected,
            "parent, allow={allow}"
        );
        assert_eq!(core_limit(child), expected, "child, allow={allow}");
    }
}

#[test]
fn crashed_child_is_replaced_and_the_next_request_answered() {
    let g = group(&[], &[("LSAPI_CHILDREN", "2")]);
    let mut c = g.connect();
    let r = c.call(&req("/abort"), b"").expect("read");
    assert_eq!(r.ending, Ending::Eof);
    let crashed = r.pid.expect("pid notice");
    assert!(g.wait_log(
        &format!("child {crashed} was killed by signal 6"),
        Duration::from_secs(5)
    ));
    let mut c = g.connect();
    let r = call_ok(&mut c, &req("/"));
    assert_ne!(served_by(&r), crashed);
    assert!(g.children().iter().all(|&(_, s)| s != 'Z'));
}

#[test]
fn no_zombies_after_a_thousand_connections() {
    let g = group(&[], &[("LSAPI_CHILDREN", "4"), ("LSAPI_MAX_REQS", "1")]);
    let mut pids = std::collections::HashSet::new();
    for _ in 0..1000 {
        let mut c = g.connect();
        pids.insert(served_by(&call_ok(&mut c, &req("/"))));
    }
    assert_eq!(pids.len(), 1000, "one child per connection");
    assert!(
        wait_until(Duration::from_secs(10), || g.children().is_empty()),
        "left over: {:?}",
        g.children()
    );
    assert!(g.status().contains("status: 0 children"));
}

#[test]
fn idle_child_exits_after_max_idle() {
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_MAX_IDLE", "1"),
            ("LSAPI_MAX_IDLE_CHILDREN", "2"),
        ],
    );
    let mut c = g.connect();
    let child = served_by(&call_ok(&mut c, &req("/")));
    let t = Instant::now();
    assert_eq!(next_ending(&mut c), Ending::Close);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(wait_until(Duration::from_secs(3), || !running(child)));
    assert!(g
        .log_text()
        .contains(&format!("[{child}] [INFO] exiting: idle")));
}

#[test]
fn surplus_idle_children_are_told_to_exit() {
    let g = group(
        &[],
        &[("LSAPI_CHILDREN", "4"), ("LSAPI_MAX_IDLE_CHILDREN", "1")],
    );
    let mut conns: Vec<Client> = (0..3).map(|_| g.connect()).collect();
    for c in conns.iter_mut() {
        call_ok(c, &req("/"));
    }
    assert!(
        wait_until(Duration::from_secs(6), || g.live_children().len() == 1),
        "children: {:?}",
        g.children()
    );
    let closed = conns
        .iter_mut()
        .map(|c| {
            c.stream()
                .set_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            next_ending(c)
        })
        .filter(|e| *e == Ending::Close)
        .count();
    assert_eq!(closed, 2);
    assert_eq!(
        g.log_text()
            .matches("surplus idle child (LSAPI_MAX_IDLE_CHILDREN)")
            .count(),
        2
    );
}

/// A group that reaches its child limit again and again within seconds
/// (short bursts on an App Server context of a few children) logs one
/// warning, which says what to do, not one per burst.
#[test]
fn touching_the_child_limit_again_and_again_is_one_warning() {
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_EXTRA_CHILDREN", "0"),
            ("LSAPI_KEEP_LISTEN", "0"),
        ],
    );
    let addr = g.addr();
    for _ in 0..3 {
        // Three connections at once for two children: the limit is reached.
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| call_on_new_connection(&addr, &req("/sleep?0.3")));
            }
        });
        // Every child gone with its connection: the next burst starts below
        // the limit.
        assert!(wait_until(Duration::from_secs(10), || g
            .live_children()
            .is_empty()));
    }
    let log = g.log_text();
    assert_eq!(
        log.matches("reached the limit of 2 children").count(),
        1,
        "{log}"
    );
    assert!(log.contains("raise LSAPI_CHILDREN"), "{log}");
}

#[test]
fn extra_children_cap_the_group_and_the_limit_is_logged() {
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_EXTRA_CHILDREN", "1"),
            ("LSAPI_KEEP_LISTEN", "0"),
        ],
    );
    let addr = g.addr();
    let t = Instant::now();
    let mut most = 0;
    let done = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    call_on_new_connection(&addr, &req("/sleep?1.5"));
                    t.elapsed()
                })
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            most = most.max(g.live_children().len());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut done: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        done.sort();
        done
    });
    assert_eq!(most, 3, "CHILDREN + EXTRA_CHILDREN at most");
    // Three at once; the fourth waited for a free child.
    assert!(done[2] < Duration::from_millis(2900), "{done:?}");
    assert!(done[3] >= Duration::from_millis(2900), "{done:?}");
    assert!(g
        .log_text()
        .contains("reached the limit of 3 children (LSAPI_CHILDREN=2, LSAPI_EXTRA_CHILDREN=1)"));
}

/// Pids that served `n` requests on `n` successive connections. With
/// `settle`, each next connection waits until the last child is back in
/// accept (a connection made while it is still closing the previous one is,
/// rightly, forked for).
fn pids_over_connections(g: &Worker, n: usize, settle: bool) -> Vec<i32> {
    (0..n)
        .map(|_| {
            let mut c = g.connect();
            let pid = served_by(&call_ok(&mut c, &req("/")));
            drop(c);
            if settle {
                assert!(wait_until(Duration::from_secs(5), || g
                    .status()
                    .contains("accepting 1)")));
            }
            pid
        })
        .collect()
}

#[test]
fn avoid_fork_children_take_new_connections_themselves() {
    let g = group(&[], &[("LSAPI_CHILDREN", "3"), ("LSAPI_AVOID_FORK", "1")]);
    let pids = pids_over_connections(&g, 5, true);
    assert!(pids.iter().all(|&p| p == pids[0]), "{pids:?}");
    assert_eq!(g.live_children(), vec![pids[0]]);
    assert!(wait_until(Duration::from_secs(3), || g
        .status()
        .contains("(busy 0, idle 0, accepting 1)")));
    // The parent forks only for connections no accepting child takes.
    let addr = g.addr();
    let pids: Vec<i32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| served_by(&call_on_new_connection(&addr, &req("/sleep?1")))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{pids:?}");
}

#[test]
fn keep_listen_decides_whether_children_take_connections() {
    let env = |k| vec![("LSAPI_CHILDREN", "3"), ("LSAPI_KEEP_LISTEN", k)];
    let g0 = group(&[], &env("0"));
    let g2 = group(&[], &env("2"));
    let pids = pids_over_connections(&g0, 3, false);
    assert!(
        pids[0] != pids[1] && pids[1] != pids[2],
        "KEEP_LISTEN=0: {pids:?}"
    );
    let pids = pids_over_connections(&g2, 3, true);
    assert!(
        pids.iter().all(|&p| p == pids[0]),
        "KEEP_LISTEN=2: {pids:?}"
    );
}

#[test]
fn keep_listen_1_gives_the_listener_up_after_ten_seconds() {
    let g = group(&[], &[("LSAPI_CHILDREN", "3"), ("LSAPI_KEEP_LISTEN", "1")]);
    let pids = pids_over_connections(&g, 2, true);
    assert_eq!(pids[0], pids[1]);
    let t = Instant::now();
    assert!(wait_until(Duration::from_secs(14), || !running(pids[0])));
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(9), "{took:?}");
    let pids2 = pids_over_connections(&g, 1, false);
    assert_ne!(pids2[0], pids[0]);
}

#[test]
fn max_busy_worker_hands_connections_back() {
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "4"),
            ("LSAPI_MAX_BUSY_WORKER", "2"),
            ("LSAPI_MAX_IDLE_CHILDREN", "4"),
            ("LSAPI_KEEP_LISTEN", "0"),
        ],
    );
    let addr = g.addr();
    std::thread::scope(|s| {
        let slow: Vec<_> = (0..2)
            .map(|_| s.spawn(|| call_on_new_connection(&addr, &req("/sleep?4"))))
            .collect();
        assert!(wait_until(Duration::from_secs(5), || g
            .status()
            .contains("(busy 2,")));
        let mut c = g.connect();
        call_ok(&mut c, &req("/"));
        assert_eq!(next_ending(&mut c), Ending::Close, "two busy: handed back");
        for h in slow {
            h.join().unwrap();
        }
    });
    // Nobody busy: the connection stays.
    let mut c = g.connect();
    call_ok(&mut c, &req("/"));
    call_ok(&mut c, &req("/"));
}

/// Requests on `conns` concurrent persistent connections, `per` each, that
/// keep most children busy; returns how many responses carried CONN_CLOSE.
fn conn_closes_under_load(g: &Worker, conns: usize, per: usize) -> usize {
    let addr = g.addr();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..conns)
            .map(|_| {
                let addr = addr.clone();
                s.spawn(move || {
                    let mut closes = 0;
                    let mut c = Client::connect(&addr).expect("connect");
                    c.stream().set_timeout(Some(IO_TIMEOUT)).unwrap();
                    let mut done = 0;
                    while done < per {
                        let r = c.call(&req("/sleep?0.25"), b"").expect("response");
                        // A connection handed back between requests answers
                        // the next one with a lone CONN_CLOSE: ask again.
                        let handed_back = r.status == 0 && r.ending == Ending::Close;
                        if !handed_back {
                            assert_eq!((r.status, r.ending), (200, Ending::End), "{r:?}");
                            done += 1;
                        }
                        // Or CONN_CLOSE followed RESP_END in the same write.
                        if handed_back || c.closing() {
                            closes += 1;
                            c = Client::connect(&addr).expect("reconnect");
                            c.stream().set_timeout(Some(IO_TIMEOUT)).unwrap();
                        }
                    }
                    closes
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

#[test]
fn connections_are_never_shed_unless_max_busy_worker_is_set() {
    // 8 connections × 10 requests of 0.25 s keep every child busy for
    // 2.5 s, long enough for the parent's once-a-second busy count. No
    // idle child is ever surplus here: on a loaded machine a tick can find
    // several children between two requests, and retiring one closes its
    // connection, which is not shedding.
    let g = group(
        &[],
        &[("LSAPI_CHILDREN", "8"), ("LSAPI_MAX_IDLE_CHILDREN", "8")],
    );
    assert_eq!(
        conn_closes_under_load(&g, 8, 10),
        0,
        "no LSAPI_MAX_BUSY_WORKER: no CONN_CLOSE"
    );
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "8"),
            ("LSAPI_MAX_IDLE_CHILDREN", "8"),
            ("LSAPI_MAX_BUSY_WORKER", "2"),
        ],
    );
    assert!(
        conn_closes_under_load(&g, 8, 10) > 0,
        "LSAPI_MAX_BUSY_WORKER=2 sheds"
    );
}

#[test]
fn slow_requests_are_logged() {
    let g = group(
        &[],
        &[("LSAPI_CHILDREN", "2"), ("LSAPI_SLOW_REQ_MSECS", "200")],
    );
    let mut c = g.connect();
    call_ok(&mut c, &req("/"));
    let child = served_by(&call_ok(&mut c, &req("/sleep?0.4")));
    assert!(g.wait_log(
        &format!("[{child}] [WARN] slow request: "),
        Duration::from_secs(2)
    ));
    let log = g.log_text();
    assert_eq!(log.matches("slow request: ").count(), 1, "{log}");
    assert!(log.contains("ms for /pg_app.wsgi/sleep?0.4 (LSAPI_SLOW_REQ_MSECS=200)"));
}

#[test]
fn stop_signals_let_requests_finish_and_the_parent_leaves_last() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
        let mut g = group(&[], &[("LSAPI_CHILDREN", "2")]);
        let addr = g.addr();
        let t = std::thread::spawn(move || call_on_new_connection(&addr, &req("/sleep?1")));
        assert!(wait_until(Duration::from_secs(5), || g
            .status()
            .contains("(busy 1,")));
        let child = g.live_children()[0];
        g.signal(sig);
        let r = t.join().unwrap();
        assert_eq!(served_by(&r), child, "the request in flight finished");
        assert!(g.exits_within(Duration::from_secs(5)));
        assert!(!running(child));
        let log = g.log_text();
        // The parent passes the stop on to its children as SIGTERM.
        let child_done = log
            .find(&format!("[{child}] [INFO] stopping on signal 15"))
            .expect("child stopped");
        let parent_done = log
            .find(&format!("process group stopped: signal {sig}"))
            .expect("parent stopped");
        assert!(child_done < parent_done, "{log}");
    }
}

#[test]
fn stderr_log_is_appended_and_etc_is_refused() {
    let dir = scratch("pg-log");
    let path = dir.join("app.log");
    std::fs::write(&path, "earlier line\n").unwrap();
    let g = group(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LS_STDERR_LOG", path.to_str().unwrap()),
            ("LSAPI_SLOW_REQ_MSECS", "1"),
        ],
    );
    let mut c = g.connect();
    call_ok(&mut c, &req("/sleep?0.1"));
    assert!(wait_until(Duration::from_secs(3), || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("slow request"))
    }));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("earlier line\n"), "appended: {text}");
    assert!(text.contains("process group: up to 2 children"));
    assert!(!g.log_text().contains("slow request"), "stderr redirected");

    let etc = "/etc/lswsgi-pgroup-test.log";
    let g = group(&[], &[("LSAPI_STDERR_LOG", etc)]);
    let mut c = g.connect();
    call_ok(&mut c, &req("/"));
    assert!(g.log_text().contains("log files under /etc are refused"));
    assert!(!std::path::Path::new(etc).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A memory cgroup made for one test (v1 or v2, whichever this process's
/// memory controller uses); removed on drop once its processes are gone.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// A new cgroup limited to `limit` bytes, or `None` where this process
    /// cannot make one (not root, no memory controller).
    fn new(limit: u64) -> Option<Cgroup> {
        let name = format!("lswsgi-test-{}", std::process::id());
        let (dir, file) = if std::path::Path::new("/sys/fs/cgroup/memory/tasks").exists() {
            (
                PathBuf::from("/sys/fs/cgroup/memory").join(name),
                "memory.limit_in_bytes",
            )
        } else {
            (PathBuf::from("/sys/fs/cgroup").join(name), "memory.max")
        };
        std::fs::create_dir(&dir).ok()?;
        let cg = Cgroup { dir };
        std::fs::write(cg.dir.join(file), limit.to_string()).ok()?;
        Some(cg)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.dir).is_ok()
        });
    }
}

/// The `free memory N MiB` figure of a status line.
fn free_mib(status: &str) -> u64 {
    let at = status.find("free memory ").expect("free memory") + "free memory ".len();
    status[at..].split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn avoid_fork_follows_the_cgroup_memory_limit() {
    let Some(cg) = Cgroup::new(400 << 20) else {
        eprintln!("skipped: cannot create a memory cgroup here (needs root)");
        return;
    };
    // The group starts inside the cgroup, so it finds the cgroup at start-up.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {LSWSGI}",
        cg.dir.display()
    );
    let g = group_under_shell(
        &script,
        &[("LSAPI_CHILDREN", "3"), ("LSAPI_AVOID_FORK", "1G")],
    );
    // Free memory is the cgroup's headroom, not the machine's.
    let free = free_mib(&g.status());
    assert!(free > 100 && free < 400, "free memory {free} MiB");
    // Above a tenth of the limit: the child keeps taking connections.
    let pids = pids_over_connections(&g, 2, true);
    assert_eq!(pids[0], pids[1]);
    let child = pids[0];
    // The child now holds nearly all the headroom: below both the 1G
    // threshold and a tenth of the limit, so it stops taking connections.
    let mut c = g.connect();
    call_ok(&mut c, &req(&format!("/alloc?{}", free - 20)));
    drop(c);
    assert!(
        g.wait_log(
            &format!("[{child}] [INFO] exiting after 3 requests: free memory below"),
            Duration::from_secs(5)
        ),
        "{}",
        g.log_text()
    );
    assert!(wait_until(Duration::from_secs(3), || !running(child)));
    // Memory is back; the parent forks for the next connection.
    let mut c = g.connect();
    assert_ne!(served_by(&call_ok(&mut c, &req("/"))), child);
}
