//! ProcessGroup figures, on the real binary started as LiteSpeed starts it:
//!
//! 1. Private memory (USS, from /proc/PID/smaps_rollup) of each child after
//!    it served 100 requests of a Flask site preloaded with `-m`, with the
//!    worker's gc.freeze before fork and without it.
//! 2. Time from connect to the first byte when the parent must fork for the
//!    connection (the child's `\0PID` notice, then its first response
//!    header), against a child already waiting in accept (AVOID_FORK).
//!
//! ```text
//! cargo bench --bench pgroup -- [--venv PATH] [--requests N] [--samples N]
//! ```
//! The Flask parts need a virtualenv with Flask (default `.venv-test`, as
//! scripts/test.sh creates); without one they are skipped.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Start, Worker, LSWSGI};
use lswsgi::client::Client;
use lswsgi::lsapi::build::RequestSpec;
use lswsgi::lsapi::{PacketHeader, HEADER_LEN};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Children (and concurrent connections) in the memory runs.
const CHILDREN: usize = 4;

struct Opts {
    venv: PathBuf,
    requests: usize,
    samples: usize,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        venv: Path::new(ROOT).join(".venv-test"),
        requests: 100,
        samples: 300,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--venv" => o.venv = PathBuf::from(value()),
            "--requests" => o.requests = value().parse().expect("--requests N"),
            "--samples" => o.samples = value().parse().expect("--samples N"),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// A worker started as the tests start one (tests/common), with the
/// bench's patience: 20 s to come up, 10 s to stop.
fn start(args: &[&str], env: &[(&str, &str)]) -> Worker {
    Start::worker(args)
        .env(env)
        .tag("bench-pgroup")
        .connect_wait(Duration::from_secs(20))
        .grace(Duration::from_secs(10))
        .spawn()
}

/// Memory of one process, KiB, from /proc/PID/smaps_rollup.
#[derive(Clone, Copy, Default)]
struct Mem {
    rss: u64,
    pss: u64,
    uss: u64,
}

fn mem(pid: i32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kb = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: kb("Rss"),
        pss: kb("Pss"),
        uss: kb("Private_Clean") + kb("Private_Dirty"),
    }
}

fn flask_request(i: usize) -> RequestSpec {
    let uri = if i % 2 == 0 {
        format!("/?q=r{i}")
    } else {
        format!("/api/{i}")
    };
    RequestSpec::new("GET", &uri, "", "")
}

/// Child memory at the stages of part 1, KiB.
struct ChildMem {
    forked: Mem,
    first: Mem,
    served: Mem,
    collected: Mem,
}

/// Part 1: memory of CHILDREN children at once, right after fork, after
/// their first request, after `requests` requests, and after a full
/// gc.collect() (which a long-lived child eventually runs by itself).
fn flask_children_memory(o: &Opts, freeze: bool) -> (Mem, Vec<ChildMem>, String) {
    let python = o.venv.join("bin/python");
    let script = format!("{ROOT}/bench/apps/pgroup_flask.py:app");
    let children = CHILDREN.to_string();
    let w = start(
        &["-m", &script],
        &[
            ("LSAPI_CHILDREN", &children),
            ("LSAPI_MAX_IDLE_CHILDREN", &children),
            ("LSAPI_KEEP_LISTEN", "0"),
            ("LS_PYTHONBIN", python.to_str().unwrap()),
            ("PGROUP_BENCH_NO_FREEZE", if freeze { "0" } else { "1" }),
        ],
    );
    let mut conns: Vec<Client> = (0..CHILDREN).map(|_| w.connect()).collect();
    // The PID notice arrives as soon as the child exists.
    let pids: Vec<i32> = conns
        .iter_mut()
        .map(|c| {
            let mut notice = [0u8; 16];
            c.stream().read_exact(&mut notice).expect("PID notice");
            assert_eq!(&notice[8..12], b"\0PID");
            i32::from_ne_bytes(notice[12..16].try_into().unwrap())
        })
        .collect();
    let snapshot = |pids: &[i32]| pids.iter().map(|&p| mem(p)).collect::<Vec<_>>();
    let call = |c: &mut Client, spec: &RequestSpec| {
        let r = c.call(spec, b"").expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
    };
    let forked = snapshot(&pids);
    for c in conns.iter_mut() {
        call(c, &flask_request(0));
    }
    let first = snapshot(&pids);
    for i in 1..o.requests {
        for c in conns.iter_mut() {
            call(c, &flask_request(i));
        }
    }
    let served = snapshot(&pids);
    for c in conns.iter_mut() {
        call(c, &RequestSpec::new("GET", "/gc", "", ""));
    }
    let collected = snapshot(&pids);
    let parent = mem(w.spawned.child.id() as i32);
    let kids = (0..pids.len())
        .map(|i| ChildMem {
            forked: forked[i],
            first: first[i],
            served: served[i],
            collected: collected[i],
        })
        .collect();
    let frozen = w
        .log_text()
        .lines()
        .find(|l| l.contains("gc.freeze: "))
        .map(|l| l[l.find("gc.freeze").unwrap()..].to_string())
        .unwrap_or_default();
    (parent, kids, frozen)
}

/// Times of one connection, from just before connect: the first byte (the
/// PID notice, when a child was forked for it) and the response header.
struct Timing {
    notice: Option<Duration>,
    header: Duration,
}

/// Connects, sends `packet` at once, and reads until RESP_END, timing packets.
fn timed_call(addr: &str, packet: &[u8]) -> Timing {
    let t0 = Instant::now();
    let mut c = Client::connect(addr).expect("connect");
    c.stream()
        .set_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let s = c.stream();
    s.write_all(packet).unwrap();
    let mut notice = None;
    let mut payload = vec![0u8; 1 << 16];
    loop {
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).expect("packet");
        let at = t0.elapsed();
        let h = PacketHeader::decode(&head).expect("header");
        s.read_exact(&mut payload[..h.len - HEADER_LEN]).unwrap();
        match h.kind {
            6 if h.len == 16 && notice.is_none() => notice = Some(at),
            3 => return finish(s, &mut payload, notice, at),
            _ => {}
        }
    }
}

fn finish(
    s: &mut lswsgi::client::Stream,
    payload: &mut [u8],
    notice: Option<Duration>,
    header: Duration,
) -> Timing {
    loop {
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).expect("packet");
        let h = PacketHeader::decode(&head).expect("header");
        s.read_exact(&mut payload[..h.len - HEADER_LEN]).unwrap();
        if h.kind == 5 || h.kind == 8 {
            return Timing { notice, header };
        }
    }
}

/// Part 2: `samples` sequential connections; `fork` selects KEEP_LISTEN=0
/// (the parent forks for each) or AVOID_FORK=1 (one child takes them all).
fn first_byte(
    o: &Opts,
    args: &[&str],
    uri: &str,
    extra_env: &[(&str, &str)],
    fork: bool,
) -> Vec<Timing> {
    let mut env = vec![("LSAPI_CHILDREN", "4")];
    env.push(if fork {
        ("LSAPI_KEEP_LISTEN", "0")
    } else {
        ("LSAPI_AVOID_FORK", "1")
    });
    env.extend_from_slice(extra_env);
    let w = start(args, &env);
    let packet = RequestSpec::new("GET", uri, "", "").encode().unwrap();
    let addr = w.spawned.addr();
    // Warm-up: the parent is up and (AVOID_FORK) a child is waiting in accept.
    let mut c = w.connect();
    c.call_raw(&packet, b"").unwrap();
    drop(c);
    let mut out = Vec::with_capacity(o.samples);
    for _ in 0..o.samples {
        // Time for the last child to exit (fork) or get back into accept.
        std::thread::sleep(Duration::from_millis(5));
        out.push(timed_call(&addr, &packet));
    }
    out
}

fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!(
        "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
        p(0.5),
        p(0.9),
        p(0.99)
    )
}

fn report_first_byte(name: &str, t: Vec<Timing>) {
    let forked = t.iter().filter(|t| t.notice.is_some()).count();
    println!("  {name} ({forked}/{} connections forked for)", t.len());
    let notices: Vec<Duration> = t.iter().filter_map(|t| t.notice).collect();
    if !notices.is_empty() {
        println!("    connect -> PID notice      {}", percentiles(notices));
    }
    println!(
        "    connect -> response header {}",
        percentiles(t.iter().map(|t| t.header).collect())
    );
}

fn main() {
    let o = parse_opts();
    let flask = o.venv.join("bin/python").exists()
        && std::process::Command::new(o.venv.join("bin/python"))
            .args(["-c", "import flask"])
            .status()
            .is_ok_and(|s| s.success());

    println!("ProcessGroup bench ({})", LSWSGI);
    if flask {
        println!(
            "\n1. Flask preloaded with -m, {CHILDREN} children, {} requests each; KiB from smaps_rollup",
            o.requests
        );
        for freeze in [true, false] {
            let (parent, kids, frozen) = flask_children_memory(&o, freeze);
            println!(
                "  gc.freeze {}: {frozen}",
                if freeze { "on " } else { "off" }
            );
            println!(
                "    parent RSS {} PSS {} USS {}",
                parent.rss, parent.pss, parent.uss
            );
            println!("    child USS: after fork | 1st request | {} requests | + gc.collect()   (RSS, PSS at the end)", o.requests);
            for (i, m) in kids.iter().enumerate() {
                println!(
                    "    child {i}: {:6} | {:6} | {:6} | {:6}   ({}, {})",
                    m.forked.uss,
                    m.first.uss,
                    m.served.uss,
                    m.collected.uss,
                    m.collected.rss,
                    m.collected.pss
                );
            }
            let mean =
                |f: fn(&ChildMem) -> u64| kids.iter().map(f).sum::<u64>() / kids.len() as u64;
            println!(
                "    mean:    {:6} | {:6} | {:6} | {:6}",
                mean(|m| m.forked.uss),
                mean(|m| m.first.uss),
                mean(|m| m.served.uss),
                mean(|m| m.collected.uss)
            );
        }
    } else {
        println!(
            "\n1. skipped: no virtualenv with Flask at {}",
            o.venv.display()
        );
    }

    println!(
        "\n2. connect -> first byte, {} sequential connections each",
        o.samples
    );
    let hello = format!("{ROOT}/scripts/apps/hello.wsgi");
    for fork in [true, false] {
        let t = first_byte(&o, &["-m", &hello], "/", &[], fork);
        report_first_byte(
            &format!(
                "hello.wsgi, {}",
                if fork {
                    "parent forks (KEEP_LISTEN=0)"
                } else {
                    "child in accept (AVOID_FORK=1)"
                }
            ),
            t,
        );
    }
    if flask {
        let python = o.venv.join("bin/python");
        let script = format!("{ROOT}/bench/apps/pgroup_flask.py:app");
        for fork in [true, false] {
            let t = first_byte(
                &o,
                &["-m", &script],
                "/api/7",
                &[("LS_PYTHONBIN", python.to_str().unwrap())],
                fork,
            );
            report_first_byte(
                &format!(
                    "Flask, {}",
                    if fork {
                        "parent forks (KEEP_LISTEN=0)"
                    } else {
                        "child in accept (AVOID_FORK=1)"
                    }
                ),
                t,
            );
        }
    }
}
