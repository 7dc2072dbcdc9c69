//! Load driver: plays LiteSpeed against one or two LSAPI worker binaries and
//! reports throughput, latency, worker CPU time per request and memory.
//!
//! It only speaks the wire protocol and starts the worker the way LiteSpeed
//! does (listening socket on fd 0, LSAPI_* environment), so `--compare` can run
//! any LSAPI worker binary (for example LiteSpeed's own lswsgi) in the same
//! invocation, alternating runs, and print the ratio per figure.
//!
//! Worker CPU time is the on-CPU time of the worker's processes and threads
//! (/proc/PID/task/*/schedstat, nanoseconds), summed over the parent and its
//! live children; it is the figure that survives a noisy 2-core machine.
//!
//! ```text
//! cargo bench --bench load -- [--worker PATH] [--compare PATH] [--rounds R]
//!     [--scale F] [--only NAME,..] [--soak]
//! ```

use lswsgi::client::{Client, Spawned};
use lswsgi::lsapi::build::RequestSpec;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One load scenario.
struct Scenario {
    name: &'static str,
    script: &'static str,
    method: &'static str,
    uri: &'static str,
    body: usize,
    /// Requests per run (before --scale).
    requests: usize,
    /// ProcessGroup mode with 4 children and 4 connections (else Worker mode, 1).
    pgroup: bool,
    /// Expected response body length (a sanity check on every response).
    expect_len: usize,
    /// Runs in the Flask virtualenv (LS_PYTHONBIN).
    venv: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "hello",
        script: "scripts/apps/hello.wsgi",
        method: "GET",
        uri: "/hello.wsgi",
        body: 0,
        requests: 20000,
        pgroup: false,
        expect_len: 19,
        venv: false,
    },
    Scenario {
        name: "hello-pg4",
        script: "scripts/apps/hello.wsgi",
        method: "GET",
        uri: "/hello.wsgi",
        body: 0,
        requests: 20000,
        pgroup: true,
        expect_len: 19,
        venv: false,
    },
    Scenario {
        name: "echo64k",
        script: "bench/apps/echo.wsgi",
        method: "POST",
        uri: "/echo.wsgi",
        body: 64 << 10,
        requests: 5000,
        pgroup: false,
        expect_len: 64 << 10,
        venv: false,
    },
    Scenario {
        name: "echo64k-pg4",
        script: "bench/apps/echo.wsgi",
        method: "POST",
        uri: "/echo.wsgi",
        body: 64 << 10,
        requests: 5000,
        pgroup: true,
        expect_len: 64 << 10,
        venv: false,
    },
    Scenario {
        name: "resp1m",
        script: "bench/apps/big.wsgi",
        method: "GET",
        uri: "/big.wsgi",
        body: 0,
        requests: 1000,
        pgroup: false,
        expect_len: 1 << 20,
        venv: false,
    },
    Scenario {
        name: "resp1m-pg4",
        script: "bench/apps/big.wsgi",
        method: "GET",
        uri: "/big.wsgi",
        body: 0,
        requests: 1000,
        pgroup: true,
        expect_len: 1 << 20,
        venv: false,
    },
    Scenario {
        name: "upload50m",
        script: "bench/apps/hash.wsgi",
        method: "POST",
        uri: "/hash.wsgi",
        body: 50 << 20,
        requests: 20,
        pgroup: false,
        expect_len: 64,
        venv: false,
    },
    Scenario {
        name: "upload50m-pg4",
        script: "bench/apps/hash.wsgi",
        method: "POST",
        uri: "/hash.wsgi",
        body: 50 << 20,
        requests: 20,
        pgroup: true,
        expect_len: 64,
        venv: false,
    },
    Scenario {
        name: "flask",
        script: "bench/apps/flask_app.wsgi",
        method: "GET",
        uri: "/flask_app.wsgi/?name=lsapi",
        body: 0,
        requests: 5000,
        pgroup: false,
        expect_len: 26,
        venv: true,
    },
    Scenario {
        name: "flask-pg4",
        script: "bench/apps/flask_app.wsgi",
        method: "GET",
        uri: "/flask_app.wsgi/?name=lsapi",
        body: 0,
        requests: 5000,
        pgroup: true,
        expect_len: 26,
        venv: true,
    },
];

/// The virtualenv with Flask: LSWSGI_TEST_VENV, else .venv-test (made by
/// scripts/test.sh).
fn flask_venv() -> Option<PathBuf> {
    let v = std::env::var_os("LSWSGI_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-test"));
    v.join("bin/python").exists().then_some(v)
}

/// Figures of one run.
#[derive(Clone, Debug, Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// On-CPU nanoseconds of every thread of `pid`.
fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Field 4 (ppid) follows the parenthesised command name.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        if after
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(p);
        }
    }
    out
}

/// CPU time of the worker group rooted at `pid`, in nanoseconds.
fn group_cpu_ns(pid: u32) -> u64 {
    task_cpu_ns(pid) + children(pid).into_iter().map(task_cpu_ns).sum::<u64>()
}

/// `(Rss, Pss, USS)` in kB from /proc/PID/smaps_rollup.
fn memory_kb(pid: u32) -> (u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        field("Rss:"),
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

fn spawn(worker: &str, pgroup: bool) -> Spawned {
    spawn_with(worker, pgroup, &[])
}

fn spawn_with(worker: &str, pgroup: bool, extra: &[(String, String)]) -> Spawned {
    let mut env = vec![("LSAPI_MAX_REQS".to_string(), "100000000".to_string())];
    env.extend_from_slice(extra);
    if pgroup {
        env.push(("LSAPI_CHILDREN".into(), "4".into()));
        // Connections are never handed back while 4 are busy: LiteSpeed's
        // lsapilib only does that when LSAPI_MAX_BUSY_WORKER is set, so this
        // keeps the figures comparable with its workers.
        env.push(("LSAPI_MAX_BUSY_WORKER".into(), "5".into()));
    }
    let log = std::env::temp_dir().join(format!("lswsgi-bench-{}.log", std::process::id()));
    Spawned::start(&[worker.to_string()], &env, Some(&log)).expect("start worker")
}

fn request(s: &Scenario) -> RequestSpec {
    let script = root().join(s.script);
    // The script is mounted at its own name; the rest of the path is PATH_INFO.
    let script_name = format!(
        "/{}",
        s.uri
            .trim_start_matches('/')
            .split(['/', '?'])
            .next()
            .unwrap()
    );
    let mut spec = RequestSpec::new(s.method, s.uri, script.to_str().unwrap(), &script_name);
    if s.body > 0 {
        spec.body(s.body as u64);
    }
    spec
}

/// Sends `n` requests on `c`, returning each latency in nanoseconds. Like
/// LiteSpeed, it opens a new connection when the worker closes one.
fn drive(
    w: &Spawned,
    c: &mut Client,
    packet: &[u8],
    body: &[u8],
    n: usize,
    expect_len: usize,
) -> Vec<u64> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        if c.closing() {
            *c = w.connect(Duration::from_secs(10)).expect("reconnect");
        }
        let t = Instant::now();
        let r = c.call_raw(packet, body).expect("response");
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(
            r.status == 200 && r.body.len() == expect_len,
            "bad response: status {} length {} ({:?})",
            r.status,
            r.body.len(),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    lat
}

fn run(worker: &str, s: &Scenario, scale: f64) -> Figures {
    let conns = if s.pgroup { 4 } else { 1 };
    let total = ((s.requests as f64 * scale) as usize).max(conns * 10);
    let extra: Vec<(String, String)> = match (s.venv, flask_venv()) {
        (true, Some(v)) => vec![(
            "LS_PYTHONBIN".into(),
            v.join("bin/python").to_string_lossy().into_owned(),
        )],
        _ => Vec::new(),
    };
    let mut w = spawn_with(worker, s.pgroup, &extra);
    let pid = w.child.id();
    let packet = Arc::new(request(s).encode().unwrap());
    let body = Arc::new(vec![b'b'; s.body]);
    let mut clients: Vec<Client> = (0..conns)
        .map(|_| w.connect(Duration::from_secs(10)).expect("connect"))
        .collect();
    let warm = (total / 10).clamp(2, 200);
    for c in &mut clients {
        drive(&w, c, &packet, &body, warm, s.expect_len);
    }
    let cpu0 = group_cpu_ns(pid);
    let started = Instant::now();
    let per = total / conns;
    let mut lat: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter_mut()
            .map(|c| {
                let (packet, body, w) = (packet.clone(), body.clone(), &w);
                scope.spawn(move || drive(w, c, &packet, &body, per, s.expect_len))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = group_cpu_ns(pid);
    drop(clients);
    let _ = w.stop(Duration::from_secs(5));
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    Figures {
        rps: lat.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us: (cpu1 - cpu0) as f64 / 1e3 / lat.len() as f64,
    }
}

/// Footprint of a Worker-mode process after warm-up, RSS after 10 000 and
/// 100 000 hello requests (growth means a leak), and the private memory of
/// each ProcessGroup child after 100 requests. An idle neighbour worker runs
/// meanwhile, as on a host with many accounts, so shared libraries count as
/// shared.
fn footprint(worker: &str, soak: bool) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    let s = &SCENARIOS[0];
    let packet = request(s).encode().unwrap();
    let mut neighbour = spawn(worker, false);
    {
        let mut c = neighbour.connect(Duration::from_secs(10)).unwrap();
        drive(&neighbour, &mut c, &packet, b"", 10, s.expect_len);
    }

    let mut w = spawn(worker, false);
    let pid = w.child.id();
    let mut c = w.connect(Duration::from_secs(10)).unwrap();
    drive(&w, &mut c, &packet, b"", 200, s.expect_len);
    let (rss, pss, uss) = memory_kb(pid);
    out.insert("worker RSS kB (warm)", rss as f64);
    out.insert("worker PSS kB (warm)", pss as f64);
    out.insert("worker USS kB (warm)", uss as f64);
    drive(&w, &mut c, &packet, b"", 10_000 - 200, s.expect_len);
    out.insert("worker RSS kB @10k", memory_kb(pid).0 as f64);
    if soak {
        drive(&w, &mut c, &packet, b"", 90_000, s.expect_len);
        out.insert("worker RSS kB @100k", memory_kb(pid).0 as f64);
    }
    drop(c);
    let _ = w.stop(Duration::from_secs(5));

    // ProcessGroup: 4 connections, 4 children, 100 requests each.
    let mut g = spawn(worker, true);
    let gpid = g.child.id();
    let mut conns: Vec<Client> = (0..4)
        .map(|_| g.connect(Duration::from_secs(10)).unwrap())
        .collect();
    for c in &mut conns {
        drive(&g, c, &packet, b"", 100, s.expect_len);
    }
    let mut child_uss: Vec<f64> = children(gpid)
        .into_iter()
        .map(|p| memory_kb(p).2 as f64)
        .collect();
    if !child_uss.is_empty() {
        out.insert("pg child USS kB (median, 100 req)", median(&mut child_uss));
        out.insert("pg children", child_uss.len() as f64);
    }
    out.insert("pg parent USS kB", memory_kb(gpid).2 as f64);
    drop(conns);
    let _ = g.stop(Duration::from_secs(5));
    if let Some((rss, uss)) = bare_python(worker) {
        out.insert("bare interpreter RSS kB (idle, baseline)", rss as f64);
        out.insert("bare interpreter USS kB (idle, baseline)", uss as f64);
    }
    let _ = neighbour.stop(Duration::from_secs(5));
    if let Ok(m) = std::fs::metadata(worker) {
        out.insert("binary size KiB", m.len() as f64 / 1024.0);
    }
    out
}

/// RSS and USS (kB) of the interpreter `worker -v` names, idle after start-up
/// with a second copy running: the floor any worker embedding it starts from.
fn bare_python(worker: &str) -> Option<(u64, u64)> {
    use std::process::{Command, Stdio};
    let out = Command::new(worker).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let exe = text
        .lines()
        .nth(1)?
        .split('(')
        .nth(1)?
        .trim_end_matches(')')
        .to_string();
    let start = || {
        Command::new(&exe)
            .args(["-c", "import time; time.sleep(30)"])
            .stdout(Stdio::null())
            .spawn()
            .ok()
    };
    let (mut a, mut b) = (start()?, start()?);
    std::thread::sleep(Duration::from_millis(1500));
    let (rss, _, uss) = memory_kb(a.id());
    let _ = (a.kill(), b.kill(), a.wait(), b.wait());
    Some((rss, uss))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut worker = root()
        .join("target/release/lswsgi")
        .to_string_lossy()
        .into_owned();
    let mut compare: Option<String> = None;
    let mut rounds = 3usize;
    let mut scale = 1.0f64;
    let mut only: Option<Vec<String>> = None;
    let mut soak = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--worker" => worker = args.next().expect("--worker PATH"),
            "--compare" => compare = args.next(),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--scale" => scale = args.next().and_then(|v| v.parse().ok()).expect("--scale F"),
            "--only" => {
                only = args
                    .next()
                    .map(|v| v.split(',').map(String::from).collect())
            }
            "--soak" => soak = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let binaries: Vec<String> = std::iter::once(worker).chain(compare).collect();
    println!("workers: {}", binaries.join(" vs "));
    println!(
        "| scenario | worker | req/s | p50 ms | p99 ms | CPU µs/req |{}",
        if binaries.len() > 1 {
            " CPU ratio |"
        } else {
            ""
        }
    );
    println!(
        "|---|---|---|---|---|---|{}",
        if binaries.len() > 1 { "---|" } else { "" }
    );
    for s in SCENARIOS {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == s.name))
        {
            continue;
        }
        if s.venv && flask_venv().is_none() {
            println!(
                "| {} | (no Flask virtualenv: run scripts/test.sh once) |",
                s.name
            );
            continue;
        }
        // Alternate binaries within each round so drift hits both alike.
        let mut results: Vec<Vec<Figures>> = vec![Vec::new(); binaries.len()];
        for _ in 0..rounds {
            for (i, b) in binaries.iter().enumerate() {
                results[i].push(run(b, s, scale));
            }
        }
        let mut cpu0 = 0.0;
        for (i, b) in binaries.iter().enumerate() {
            let r = &results[i];
            let m = |f: fn(&Figures) -> f64| median(&mut r.iter().map(f).collect::<Vec<_>>());
            let cpu = m(|f| f.cpu_us);
            if i == 0 {
                cpu0 = cpu;
            }
            let name = std::path::Path::new(b)
                .file_name()
                .unwrap()
                .to_string_lossy();
            let ratio = if binaries.len() > 1 {
                format!(" {:.2} |", cpu / cpu0)
            } else {
                String::new()
            };
            println!(
                "| {} | {} {} | {:.0} | {:.3} | {:.3} | {:.1} |{}",
                s.name,
                name,
                i,
                m(|f| f.rps),
                m(|f| f.p50_ms),
                m(|f| f.p99_ms),
                cpu,
                ratio
            );
        }
    }
    if only
        .as_ref()
        .is_none_or(|o| o.iter().any(|n| n == "footprint"))
    {
        for (i, b) in binaries.iter().enumerate() {
            for (k, v) in footprint(b, soak) {
                println!("footprint {i} {k}: {v:.0}");
            }
        }
    }
}
