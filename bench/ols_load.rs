//! Requests per second through a real OpenLiteSpeed: `clients` keep-alive
//! HTTP/1.1 connections asking for hello.wsgi, with this worker and another
//! LSAPI worker binary (for example LiteSpeed's own lswsgi) behind the same
//! server build and configuration, alternating runs; medians and the ratio.
//!
//! ```text
//! LSWSGI_OLS_SRC=<dir with build-ols.sh> cargo bench --bench ols_load -- \
//!     [--worker PATH] [--compare PATH | --litespeed] [--rounds R] [--secs S] [--clients N] \
//!     [--ols 1.9]
//! ```
//! The server is the one tests/ols.rs runs (bench/ols_kit.rs): 1.5.12 from
//! LSWSGI_OLS_PREFIX or LSWSGI_OLS_SRC, or with `--ols 1.9` 1.9.1 from
//! LSWSGI_OLS19_PREFIX or LSWSGI_OLS19_SRC, built once and cached.
//! The extProcessor is ProcessGroup mode, LSAPI_CHILDREN=4 with maxConns 4
//! (the sample configuration); workers run as nobody, so the worker binary,
//! its Python and the docroot must be readable by that user.
//!
//! Each run also prints the on-CPU time per request of the three parties
//! (/proc/PID/task/*/schedstat): the server's processes, the worker's, and
//! this bench's client threads. On a machine whose cores are all busy,
//! requests/s is about cores / (server + worker + client), so the worker's
//! share bounds what a faster worker can gain.

#[path = "cpu.rs"]
mod cpu;
#[path = "ols_kit.rs"]
mod ols_kit;
#[path = "ols_server.rs"]
mod ols_server;
#[path = "peer.rs"]
mod peer;

use ols_server::{sh, Ols};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The installed server, or the one built from its kit.
fn ols_prefix(server: ols_kit::Server) -> PathBuf {
    match ols_kit::find_or_build(server) {
        Ok(prefix) => prefix,
        Err(ols_kit::Missing::NotGiven(why) | ols_kit::Missing::Broken(why)) => {
            panic!("{}: {why}", server.label())
        }
    }
}

/// A server with its own root serving hello.wsgi through `worker` in
/// ProcessGroup mode; stopped (with its workers) on drop.
fn start_server(prefix: &Path, worker: &str) -> Ols {
    let mut ols = Ols::lay_out(prefix, Path::new(worker), "lswsgi-ols-bench");
    let root = ols.root.clone();
    std::fs::create_dir_all(root.join("html")).unwrap();
    std::fs::copy(
        format!("{ROOT}/scripts/apps/hello.wsgi"),
        root.join("html/hello.wsgi"),
    )
    .unwrap();
    sh(Command::new("chmod").arg("-R").arg("a+rX").arg(&root));
    let (id, marker) = (ols.id.clone(), ols.marker.clone());
    let port = ols.add_listener(format!("v{id}"));
    let r = root.display();
    let mut conf = ols.server_conf("lswsgi-ols-bench", "WARN", 0, "", "");
    conf.push_str(&format!(
        "extProcessor w{id} {{\n type lsapi\n address uds:/{r}/tmp/w.sock\n maxConns 4\n\
          env {marker}\n env LSAPI_CHILDREN=4\n initTimeout 60\n retryTimeout 0\n persistConn 1\n\
          pcKeepAliveTimeout 60\n respBuffer 0\n autoStart 1\n path {r}/fcgi-bin/lswsgi\n\
          backlog 100\n instances 1\n}}\n\
         virtualHost v{id} {{\n vhRoot {r}/\n configFile {r}/conf/vhosts/v.conf\n\
          allowSymbolLink 1\n enableScript 1\n restrained 0\n setUIDMode 0\n}}\n\
         listener l{id} {{\n address 127.0.0.1:{port}\n secure 0\n map v{id} *\n}}\n"
    ));
    std::fs::write(root.join("conf/httpd_config.conf"), conf).unwrap();
    std::fs::write(
        root.join("conf/vhosts/v.conf"),
        format!(
            "docRoot {r}/html/\nenableGzip 0\nscriptHandler {{\n add lsapi:w{id} wsgi\n}}\n\
             rewrite {{\n enable 0\n}}\n"
        ),
    )
    .unwrap();
    ols.launch();
    ols
}

/// One keep-alive client: GET /hello.wsgi until `stop`, counting 200s. Like
/// `ab -k`, it opens a new connection when the server closes one (after
/// maxKeepAliveReq requests).
fn client(port: u16, stop: &AtomicBool, done: &AtomicU64) {
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).unwrap();
        (s.try_clone().unwrap(), BufReader::new(s))
    };
    let (mut w, mut r) = connect();
    let req = b"GET /hello.wsgi HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut line = String::new();
    let mut body = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        if w.write_all(req).is_err() || r.read_line(&mut line).unwrap_or(0) == 0 {
            // Closed between requests: a fresh connection, nothing counted.
            (w, r) = connect();
            continue;
        }
        assert!(line.starts_with("HTTP/1.1 200"), "response {line:?}");
        let mut len = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body).unwrap();
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// On-CPU nanoseconds of every thread of `pid`, plus those of its children
/// it has reaped (cutime + cstime, in clock ticks): a ProcessGroup child
/// retired after LSAPI_MAX_REQS still counts. 0 once `pid` is gone.
fn cpu_ns(pid: i32) -> u64 {
    let live = cpu::task_cpu_ns(pid as u32);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" closing the command name: state is field 3, so
    // cutime (16) and cstime (17) are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let ticks: u64 = after
        .split_whitespace()
        .skip(13)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    live + ticks * 1_000_000_000 / hz
}

/// `pid` and all its descendants.
fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
        i += 1;
    }
    out
}

/// On-CPU nanoseconds so far of (server, worker, this bench's client): the
/// server's process tree minus the workers, the processes carrying the
/// marker, and this process.
fn cpu_by_party(ols: &Ols) -> BTreeMap<i32, (u8, u64)> {
    let workers = ols.marked_pids();
    let server = ols.server_pid();
    let mut out = BTreeMap::new();
    for p in server.map(tree).unwrap_or_default() {
        out.insert(p, (0, cpu_ns(p)));
    }
    for p in workers {
        out.insert(p, (1, cpu_ns(p)));
    }
    let me = std::process::id() as i32;
    out.insert(me, (2, cpu_ns(me)));
    out
}

/// One run: requests per second over `secs` after a 1 s warm-up, and the
/// on-CPU µs per request of the server, the worker and the client.
fn measure(ols: &Ols, clients: usize, secs: f64) -> (f64, [f64; 3]) {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| client(ols.ports[0].1, &stop, &done));
        }
        std::thread::sleep(Duration::from_secs(1));
        let (n0, t0, cpu0) = (
            done.load(Ordering::Relaxed),
            Instant::now(),
            cpu_by_party(ols),
        );
        std::thread::sleep(Duration::from_secs_f64(secs));
        let n = done.load(Ordering::Relaxed) - n0;
        let cpu1 = cpu_by_party(ols);
        let rps = n as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        // A process that appeared during the run counts from zero.
        let mut us = [0.0; 3];
        for (p, (party, ns)) in &cpu1 {
            let before = cpu0.get(p).map_or(0, |c| c.1);
            us[*party as usize] += ns.saturating_sub(before) as f64 / 1e3 / n.max(1) as f64;
        }
        (rps, us)
    })
}

fn main() {
    let mut worker = format!("{ROOT}/target/release/lswsgi");
    let mut compare = None;
    let (mut rounds, mut secs, mut clients) = (3usize, 5.0f64, 8usize);
    let mut server = ols_kit::Server::V1_5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--worker" => worker = value(),
            "--compare" => compare = Some(value()),
            "--litespeed" => compare = Some(peer::litespeed_lswsgi()),
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--secs" => secs = value().parse().expect("--secs S"),
            "--clients" => clients = value().parse().expect("--clients N"),
            "--ols" => {
                server = match value().as_str() {
                    "1.5" => ols_kit::Server::V1_5,
                    "1.9" => ols_kit::Server::V1_9,
                    v => panic!("--ols 1.5 or 1.9, not {v}"),
                }
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let prefix = ols_prefix(server);
    let binaries: Vec<String> = std::iter::once(worker).chain(compare).collect();
    println!(
        "{} ({}); {clients} keep-alive clients, hello.wsgi, {secs} s per run, {rounds} rounds",
        server.label(),
        prefix.display()
    );
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); binaries.len()];
    let mut cpu: Vec<Vec<[f64; 3]>> = vec![Vec::new(); binaries.len()];
    for round in 0..rounds {
        for (i, b) in binaries.iter().enumerate() {
            let ols = start_server(&prefix, b);
            let r = std::panic::catch_unwind(|| measure(&ols, clients, secs));
            let Ok((r, us)) = r else {
                for log in ["logs/error.log", "logs/stderr.log"] {
                    let text = std::fs::read_to_string(ols.root.join(log)).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!("--- {log} (last lines, newest first)\n{}", tail.join("\n"));
                }
                panic!("the load run through OpenLiteSpeed failed with {b}");
            };
            drop(ols);
            println!(
                "round {round} {b}: {r:.0} req/s; CPU µs/req: server {:.1}, worker {:.1}, client {:.1}",
                us[0], us[1], us[2]
            );
            rps[i].push(r);
            cpu[i].push(us);
        }
    }
    let med: Vec<f64> = rps
        .iter_mut()
        .map(|v| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        })
        .collect();
    for ((b, m), c) in binaries.iter().zip(&med).zip(&mut cpu) {
        let party = |k: usize| {
            let mut v: Vec<f64> = c.iter().map(|u| u[k]).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let (s, w, cl) = (party(0), party(1), party(2));
        println!(
            "median {b}: {m:.0} req/s; CPU µs/req: server {s:.1}, worker {w:.1}, client {cl:.1} (all {:.1})",
            s + w + cl
        );
    }
    if med.len() > 1 {
        println!(
            "req/s ratio (ours/theirs): {:.2} (target ≥ 1.40)",
            med[0] / med[1]
        );
    }
}
