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
//!     [--litespeed] [--compare-env K=V] [--scale F] [--only NAME,..] [--soak]
//!     [--explain]
//! ```
//!
//! `--compare-env K=V` (repeatable) sets a variable for the compared binary
//! only: `--compare target/release/lswsgi --compare-env LSAPI_IMMORTALIZE=0`
//! measures one switch against the same binary.
//!
//! `--explain` also prints, once per binary, where the footprint's memory
//! is: the Worker process's resident kB per mapping, and for the preloaded
//! Flask and Django groups the parent's private kB per mapping and a child's
//! pages against the parent's (shared, copied on write, new; see
//! bench/memmap.rs).
//!
//! The Python is the one the bench is built against: PYO3_PYTHON, with its
//! own CARGO_TARGET_DIR (the worker measured is that directory's
//! release/lswsgi, and LiteSpeed's is built there with the same Python), and
//! LSWSGI_TEST_VENV a virtualenv of that Python with Flask and Django.

#[path = "cpu.rs"]
mod cpu;
#[path = "memmap.rs"]
mod memmap;
#[path = "peer.rs"]
mod peer;

use lswsgi::client::{Client, Spawned};
use lswsgi::lsapi::build::RequestSpec;
use peer::litespeed_lswsgi;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One load scenario.
struct Scenario {
    name: &'static str,
    script: &'static str,
    method: &'static str,
    /// Request URIs, used in turn (several: a mix of pages).
    uris: &'static [&'static str],
    body: usize,
    /// Requests per run (before --scale).
    requests: usize,
    /// ProcessGroup mode with 4 children and 4 connections (else Worker mode, 1).
    pgroup: bool,
    /// Expected response body length (a sanity check on every response);
    /// None: any non-empty body.
    expect_len: Option<usize>,
    /// Runs in the Flask virtualenv (LS_PYTHONBIN).
    venv: bool,
    /// The script is preloaded with `-m` (else each request names it in
    /// SCRIPT_FILENAME, the script handler).
    preload: bool,
    /// Only our worker can serve it (a native ASGI application): with a
    /// second binary it runs for ours alone.
    ours_only: bool,
}

/// A scenario with the common defaults (Worker mode, GET, script handler).
const fn scenario(
    name: &'static str,
    script: &'static str,
    uris: &'static [&'static str],
    requests: usize,
    expect_len: Option<usize>,
) -> Scenario {
    Scenario {
        name,
        script,
        method: "GET",
        uris,
        body: 0,
        requests,
        pgroup: false,
        expect_len,
        venv: false,
        preload: false,
        ours_only: false,
    }
}

const fn pg4(s: Scenario) -> Scenario {
    Scenario { pgroup: true, ..s }
}

const fn post(s: Scenario, body: usize) -> Scenario {
    Scenario {
        method: "POST",
        body,
        ..s
    }
}

const fn venv(s: Scenario) -> Scenario {
    Scenario { venv: true, ..s }
}

const fn preload(s: Scenario) -> Scenario {
    Scenario { preload: true, ..s }
}

const HELLO: Scenario = scenario(
    "hello",
    "scripts/apps/hello.wsgi",
    &["/hello.wsgi"],
    20000,
    Some(19),
);
// The apps read the body with read(size) only and return a list: LiteSpeed's
// lswsgi 2.1 answers 500 to wsgi.input.read() without a size and to iterating
// wsgi.input, so every request style here is one both workers serve.
const ECHO: Scenario = post(
    scenario(
        "echo64k",
        "bench/apps/echo.wsgi",
        &["/echo.wsgi"],
        5000,
        Some(64 << 10),
    ),
    64 << 10,
);
const RESP1M: Scenario = scenario(
    "resp1m",
    "bench/apps/big.wsgi",
    &["/big.wsgi"],
    1000,
    Some(1 << 20),
);
const UPLOAD: Scenario = post(
    scenario(
        "upload50m",
        "bench/apps/hash.wsgi",
        &["/hash.wsgi"],
        20,
        Some(64),
    ),
    50 << 20,
);
const FLASK: Scenario = venv(scenario(
    "flask",
    "bench/apps/flask_app.wsgi",
    &["/flask_app.wsgi/?name=lsapi"],
    5000,
    Some(26),
));
/// The template + JSON site, alternating its two pages.
const FLASK_SITE: Scenario = venv(scenario(
    "flask-site",
    "bench/apps/flask_site.wsgi",
    &["/flask_site.wsgi/?q=lsapi", "/flask_site.wsgi/api/42"],
    4000,
    None,
));

/// Its Django twin, always preloaded with `-m`.
const DJANGO_SITE: Scenario = pg4(preload(venv(scenario(
    "django-site-preload-pg4",
    "bench/apps/django_site.wsgi",
    &["/?q=lsapi", "/api/42"],
    4000,
    None,
))));

/// The preloaded sites of the footprint: (name, scenario).
const PRELOADED_SITES: [(&str, Scenario); 2] = [
    (
        "flask",
        pg4(preload(Scenario {
            uris: &["/?q=lsapi", "/api/42"],
            ..FLASK_SITE
        })),
    ),
    ("django", DJANGO_SITE),
];

/// A FastAPI JSON route (47 bytes), preloaded with `-m`: natively as ASGI
/// (ours only), and the same app through a2wsgi's ASGI-to-WSGI adapter
/// (both workers).
const FASTAPI: Scenario = venv(preload(scenario(
    "fastapi-json",
    "bench/apps/fastapi_json.py",
    &["/json"],
    5000,
    Some(47),
)));

const SCENARIOS: &[Scenario] = &[
    HELLO,
    pg4(Scenario {
        name: "hello-pg4",
        ..HELLO
    }),
    ECHO,
    pg4(Scenario {
        name: "echo64k-pg4",
        ..ECHO
    }),
    RESP1M,
    pg4(Scenario {
        name: "resp1m-pg4",
        ..RESP1M
    }),
    UPLOAD,
    pg4(Scenario {
        name: "upload50m-pg4",
        ..UPLOAD
    }),
    FLASK,
    pg4(Scenario {
        name: "flask-pg4",
        ..FLASK
    }),
    pg4(Scenario {
        name: "flask-site-pg4",
        ..FLASK_SITE
    }),
    pg4(preload(Scenario {
        name: "flask-site-preload-pg4",
        uris: &["/?q=lsapi", "/api/42"],
        ..FLASK_SITE
    })),
    DJANGO_SITE,
    Scenario {
        ours_only: true,
        ..FASTAPI
    },
    Scenario {
        name: "fastapi-json-a2wsgi",
        script: "bench/apps/fastapi_a2wsgi.py",
        ..FASTAPI
    },
];

/// The virtualenv with Flask and Django: LSWSGI_TEST_VENV, else .venv-test
/// (made by scripts/test.sh).
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
    cpu::task_cpu_ns(pid) + children(pid).into_iter().map(cpu::task_cpu_ns).sum::<u64>()
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

/// The command that starts a worker as LiteSpeed does: run as root, the
/// bench starts it as `nobody` (through util-linux's setpriv), as the server
/// runs workers outside suEXEC daemon mode. Started as root, LiteSpeed's
/// lswsgi switches user around every request (setgid, setgroups, setuid),
/// which is a daemon-mode cost, not the common one; LSWSGI_BENCH_AS_ROOT=1
/// keeps root to measure that.
fn launcher() -> Vec<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || std::env::var_os("LSWSGI_BENCH_AS_ROOT").is_some() {
        return Vec::new();
    }
    // SAFETY: getpwnam returns NULL or a record read at once.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "no user nobody to run the workers as");
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    [
        "setpriv",
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        "--",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts `worker` as LiteSpeed does (see [`launcher`]), with the same
/// environment whatever the binary: no LSAPI_MAX_BUSY_WORKER, so neither
/// sheds connections (the default of both this worker and lsapilib).
fn spawn_with(worker: &str, args: &[String], pgroup: bool, extra: &[(String, String)]) -> Spawned {
    let mut env = vec![("LSAPI_MAX_REQS".to_string(), "100000000".to_string())];
    env.extend_from_slice(extra);
    if pgroup {
        env.push(("LSAPI_CHILDREN".into(), "4".into()));
    }
    let log = std::env::temp_dir().join(format!("lswsgi-bench-{}.log", std::process::id()));
    let argv: Vec<String> = launcher()
        .into_iter()
        .chain(std::iter::once(worker.to_string()))
        .chain(args.iter().cloned())
        .collect();
    Spawned::start(&argv, &env, Some(&log)).expect("start worker")
}

/// Stops the worker and then, by pid, any child of it still alive (a
/// ProcessGroup parent normally takes its children with it).
fn stop(mut w: Spawned) {
    let kids = children(w.child.id());
    let _ = w.stop(Duration::from_secs(5));
    for k in kids {
        if std::fs::metadata(format!("/proc/{k}")).is_ok() {
            // SAFETY: kill(2) on a pid that was this worker's child a moment
            // ago; at worst the signal misses (ESRCH).
            unsafe { libc::kill(k as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// LS_PYTHONBIN for the Flask virtualenv, when the scenario wants it.
fn venv_env(want: bool) -> Vec<(String, String)> {
    match (want, flask_venv()) {
        (true, Some(v)) => vec![(
            "LS_PYTHONBIN".into(),
            v.join("bin/python").to_string_lossy().into_owned(),
        )],
        _ => Vec::new(),
    }
}

/// Command-line arguments of the worker for `s` (`-m SCRIPT` when preloaded).
fn worker_args(s: &Scenario) -> Vec<String> {
    if s.preload {
        vec![
            "-m".into(),
            root().join(s.script).to_string_lossy().into_owned(),
        ]
    } else {
        Vec::new()
    }
}

fn request(s: &Scenario, uri: &str) -> RequestSpec {
    let mut spec = if s.preload {
        // The whole path is PATH_INFO; no script is named.
        RequestSpec::new(s.method, uri, "", "")
    } else {
        let script = root().join(s.script);
        // The script is mounted at its own name; the rest of the path is PATH_INFO.
        let script_name = format!(
            "/{}",
            uri.trim_start_matches('/')
                .split(['/', '?'])
                .next()
                .unwrap()
        );
        RequestSpec::new(s.method, uri, script.to_str().unwrap(), &script_name)
    };
    if s.body > 0 {
        spec.body(s.body as u64);
    }
    spec
}

fn packets(s: &Scenario) -> Vec<Vec<u8>> {
    s.uris
        .iter()
        .map(|u| request(s, u).encode().unwrap())
        .collect()
}

/// Sends `n` requests on `c`, the packets in turn, returning each latency in
/// nanoseconds. Like LiteSpeed, it opens a new connection when the worker
/// closes one.
fn drive(
    w: &Spawned,
    c: &mut Client,
    packets: &[Vec<u8>],
    body: &[u8],
    n: usize,
    expect_len: Option<usize>,
) -> Vec<u64> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        if c.closing() {
            *c = w.connect(Duration::from_secs(10)).expect("reconnect");
        }
        let t = Instant::now();
        let r = c
            .call_raw(&packets[i % packets.len()], body)
            .expect("response");
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(
            r.status == 200 && expect_len.map_or(!r.body.is_empty(), |n| r.body.len() == n),
            "bad response: status {} length {} ({:?})",
            r.status,
            r.body.len(),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    lat
}

/// A worker binary and the variables set for it alone (`--compare-env`).
struct Binary {
    path: String,
    env: Vec<(String, String)>,
}

/// `venv_env(want)` plus the binary's own variables.
fn env_for(b: &Binary, want_venv: bool) -> Vec<(String, String)> {
    let mut env = venv_env(want_venv);
    env.extend_from_slice(&b.env);
    env
}

fn run(b: &Binary, s: &Scenario, scale: f64) -> Figures {
    let conns = if s.pgroup { 4 } else { 1 };
    let total = ((s.requests as f64 * scale) as usize).max(conns * 10);
    let w = spawn_with(&b.path, &worker_args(s), s.pgroup, &env_for(b, s.venv));
    let pid = w.child.id();
    let packets = Arc::new(packets(s));
    let body = Arc::new(vec![b'b'; s.body]);
    let mut clients: Vec<Client> = (0..conns)
        .map(|_| w.connect(Duration::from_secs(10)).expect("connect"))
        .collect();
    let warm = (total / 10).clamp(2, 200);
    for c in &mut clients {
        drive(&w, c, &packets, &body, warm, s.expect_len);
    }
    let cpu0 = group_cpu_ns(pid);
    let started = Instant::now();
    let per = total / conns;
    let mut lat: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter_mut()
            .map(|c| {
                let (packets, body, w) = (packets.clone(), body.clone(), &w);
                scope.spawn(move || drive(w, c, &packets, &body, per, s.expect_len))
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
    stop(w);
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    Figures {
        rps: lat.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us: (cpu1 - cpu0) as f64 / 1e3 / lat.len() as f64,
    }
}

/// Requests each of the 4 children of a preloaded group's footprint serves
/// (issue 22 measures "4 children after 1 000 requests each").
const REQUESTS_PER_CHILD: usize = 1000;

/// Footprint of one round, kB: a Worker-mode process after warm-up and its
/// RSS after 10 000 (and with `soak` 100 000) hello requests (growth means a
/// leak); the private memory of each hello ProcessGroup child after 100
/// requests; and the whole group (parent + 4 children) of the Flask and the
/// Django site preloaded with `-m` after REQUESTS_PER_CHILD requests each, with the
/// kB each child copied from the parent (median; needs root). An idle
/// neighbour worker runs meanwhile, as on a host with many accounts, so
/// shared libraries count as shared.
fn footprint(b: &Binary, soak: bool, explain: bool) -> BTreeMap<String, f64> {
    let worker = b.path.as_str();
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let s = &HELLO;
    let packet = packets(s);
    let neighbour = spawn_with(worker, &[], false, &b.env);
    {
        let mut c = neighbour.connect(Duration::from_secs(10)).unwrap();
        drive(&neighbour, &mut c, &packet, b"", 10, s.expect_len);
    }

    let w = spawn_with(worker, &[], false, &b.env);
    let pid = w.child.id();
    let mut c = w.connect(Duration::from_secs(10)).unwrap();
    drive(&w, &mut c, &packet, b"", 200, s.expect_len);
    let (rss, pss, uss) = memory_kb(pid);
    out.insert("worker RSS kB (warm)".into(), rss as f64);
    out.insert("worker PSS kB (warm)".into(), pss as f64);
    out.insert("worker USS kB (warm)".into(), uss as f64);
    if explain {
        println!("\nwhere the memory is: {worker}");
        let by_rss = top(memmap::per_mapping(pid).into_iter().map(|(k, v)| (k, v.0)));
        println!("  Worker process, warm, resident kB by mapping: {by_rss}");
    }
    drive(&w, &mut c, &packet, b"", 10_000 - 200, s.expect_len);
    out.insert("worker RSS kB @10k".into(), memory_kb(pid).0 as f64);
    if soak {
        drive(&w, &mut c, &packet, b"", 90_000, s.expect_len);
        out.insert("worker RSS kB @100k".into(), memory_kb(pid).0 as f64);
    }
    drop(c);
    stop(w);

    // ProcessGroup: 4 connections, 4 children, 100 requests each.
    let g = spawn_with(worker, &[], true, &b.env);
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
        out.insert(
            "pg child USS kB (median, 100 req)".into(),
            median(&mut child_uss),
        );
    }
    out.insert("pg parent USS kB".into(), memory_kb(gpid).2 as f64);
    drop(conns);
    stop(g);

    if flask_venv().is_some() {
        for (site, f) in &PRELOADED_SITES {
            let g = spawn_with(worker, &worker_args(f), true, &env_for(b, true));
            let gpid = g.child.id();
            let packets = packets(f);
            let mut conns: Vec<Client> = (0..4)
                .map(|_| g.connect(Duration::from_secs(20)).unwrap())
                .collect();
            // Round-robin, so every child stays busy: one left waiting on its
            // connection for a second or more counts as idle in both workers
            // and may be retired as a surplus idle child.
            for i in 0..REQUESTS_PER_CHILD {
                let packet = std::slice::from_ref(&packets[i % packets.len()]);
                for c in &mut conns {
                    drive(&g, c, packet, b"", 1, f.expect_len);
                }
            }
            let kids = children(gpid);
            let group: u64 = memory_kb(gpid).2 + kids.iter().map(|&p| memory_kb(p).2).sum::<u64>();
            out.insert(format!("{site} preloaded group USS kB"), group as f64);
            // All the group's memory, shared pages divided among their users.
            let pss: u64 = memory_kb(gpid).1 + kids.iter().map(|&p| memory_kb(p).1).sum::<u64>();
            out.insert(format!("{site} preloaded group PSS kB"), pss as f64);
            // The same without file-backed pages: library text only this
            // group touched counts as its private memory unless another
            // process on the machine maps it too, which varies from run to run.
            let writable: u64 = std::iter::once(gpid)
                .chain(kids.iter().copied())
                .flat_map(memmap::per_mapping)
                .filter(|(name, _)| name.ends_with(" rw-p"))
                .map(|(_, (_, private))| private)
                .sum();
            out.insert(
                format!("{site} preloaded group USS kB, writable mappings"),
                writable as f64,
            );
            out.insert(
                format!("{site} preloaded group children"),
                kids.len() as f64,
            );
            let mut copied: Vec<f64> = kids
                .iter()
                .filter_map(|&k| memmap::sharing(gpid, k))
                .map(|(by_map, _)| by_map.values().map(|s| s.copied).sum::<u64>() as f64)
                .collect();
            if !copied.is_empty() {
                out.insert(
                    format!("{site} preloaded child copied kB (median)"),
                    median(&mut copied),
                );
            }
            if explain {
                explain_group(site, gpid, &kids);
            }
            drop(conns);
            stop(g);
        }
    }
    stop(neighbour);
    out
}

/// The largest entries of `kb` (name, kB), as one line.
fn top(kb: impl Iterator<Item = (String, u64)>) -> String {
    let mut v: Vec<(String, u64)> = kb.filter(|e| e.1 > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter()
        .take(8)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints where the preloaded group's private memory is (see `--explain`).
fn explain_group(site: &str, parent: u32, kids: &[u32]) {
    let private = top(memmap::per_mapping(parent)
        .into_iter()
        .map(|(k, v)| (k, v.1)));
    println!("  preloaded {site} group, parent private kB by mapping: {private}");
    let Some(&child) = kids.first() else { return };
    let Some((by_map, changes)) = memmap::sharing(parent, child) else {
        println!("  (a child's pages against the parent's need root)");
        return;
    };
    let sum = |f: fn(&memmap::Sharing) -> u64| by_map.values().map(f).sum::<u64>();
    println!(
        "  a child against the parent, kB: shared {}, copied on write {}, new {}",
        sum(|s| s.shared),
        sum(|s| s.copied),
        sum(|s| s.new)
    );
    let copied = top(by_map.iter().map(|(k, s)| (k.clone(), s.copied)));
    println!("  copied kB by mapping: {copied}");
    println!(
        "  copied heap pages by 8-byte words changed: 0-1 {}, 2-8 {}, 9-64 {}, more {}",
        changes[0], changes[1], changes[2], changes[3]
    );
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

/// The issue's targets, ours/theirs: (scenario or footprint key, figure,
/// bound, at most (else at least)).
const TARGETS: &[(&str, &str, f64, bool)] = &[
    ("hello-pg4", "CPU", 0.45, true),
    ("echo64k-pg4", "CPU", 0.60, true),
    ("resp1m-pg4", "CPU", 0.60, true),
    ("upload50m-pg4", "req/s", 1.2, false),
    ("flask-site-pg4", "CPU", 0.95, true),
    ("worker RSS kB (warm)", "kB", 1.00, true),
    ("worker USS kB (warm)", "kB", 0.95, true),
    ("flask preloaded group USS kB", "kB", 0.70, true),
    ("django preloaded group USS kB", "kB", 0.35, true),
];

fn main() {
    let mut worker = peer::target_dir()
        .join("release/lswsgi")
        .to_string_lossy()
        .into_owned();
    let mut compare: Option<String> = None;
    let mut compare_env: Vec<(String, String)> = Vec::new();
    let mut rounds = 3usize;
    let mut scale = 1.0f64;
    let mut only: Option<Vec<String>> = None;
    let mut soak = false;
    let mut explain = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--worker" => worker = args.next().expect("--worker PATH"),
            "--compare" => compare = args.next(),
            "--litespeed" => compare = Some(litespeed_lswsgi()),
            "--compare-env" => {
                let kv = args.next().expect("--compare-env K=V");
                let (k, v) = kv.split_once('=').expect("--compare-env K=V");
                compare_env.push((k.to_string(), v.to_string()));
            }
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
            "--explain" => explain = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    let binaries: Vec<Binary> = std::iter::once(Binary {
        path: worker,
        env: Vec::new(),
    })
    .chain(compare.map(|path| Binary {
        path,
        env: compare_env,
    }))
    .collect();
    let two = binaries.len() > 1;
    let names: Vec<String> = binaries
        .iter()
        .map(|b| {
            let env: Vec<String> = b.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
            format!("{}{}", env.concat(), b.path)
        })
        .collect();
    println!(
        "workers: {} (run as {}; {})",
        names.join(" vs "),
        if launcher().is_empty() {
            "this user"
        } else {
            "nobody"
        },
        env!("LSWSGI_PYTHON_EXECUTABLE")
    );
    println!(
        "rounds: {rounds} (binaries alternate within each round; medians shown{})",
        if two { "; ratios are ours/theirs" } else { "" }
    );
    if two {
        println!("| scenario | req/s ours | req/s theirs | req/s ratio | CPU µs/req ours | CPU µs/req theirs | CPU ratio | p99 ms ours | p99 ms theirs |");
        println!("|---|---|---|---|---|---|---|---|---|");
    } else {
        println!("| scenario | req/s | p50 ms | p99 ms | CPU µs/req |");
        println!("|---|---|---|---|---|");
    }
    // (name, figure) -> ours/theirs
    let mut ratios: BTreeMap<(String, &str), f64> = BTreeMap::new();
    // Scenario -> median CPU µs/req per binary run.
    let mut cpu_us: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in SCENARIOS {
        if !wanted(s.name) {
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
        let runs = if s.ours_only {
            &binaries[..1]
        } else {
            &binaries[..]
        };
        let mut results: Vec<Vec<Figures>> = vec![Vec::new(); runs.len()];
        for _ in 0..rounds {
            for (i, b) in runs.iter().enumerate() {
                results[i].push(run(b, s, scale));
            }
        }
        let med: Vec<Figures> = results
            .iter()
            .map(|r| {
                let m = |f: fn(&Figures) -> f64| median(&mut r.iter().map(f).collect::<Vec<_>>());
                Figures {
                    rps: m(|f| f.rps),
                    p50_ms: m(|f| f.p50_ms),
                    p99_ms: m(|f| f.p99_ms),
                    cpu_us: m(|f| f.cpu_us),
                }
            })
            .collect();
        cpu_us.insert(s.name, med.iter().map(|f| f.cpu_us).collect());
        if two && s.ours_only {
            let a = &med[0];
            println!(
                "| {} | {:.0} | - | - | {:.1} | - | - | {:.3} | - |",
                s.name, a.rps, a.cpu_us, a.p99_ms
            );
        } else if two {
            let (a, b) = (&med[0], &med[1]);
            ratios.insert((s.name.into(), "req/s"), a.rps / b.rps);
            ratios.insert((s.name.into(), "CPU"), a.cpu_us / b.cpu_us);
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.2} | {:.3} | {:.3} |",
                s.name,
                a.rps,
                b.rps,
                a.rps / b.rps,
                a.cpu_us,
                b.cpu_us,
                a.cpu_us / b.cpu_us,
                a.p99_ms,
                b.p99_ms
            );
        } else {
            let a = &med[0];
            println!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.1} |",
                s.name, a.rps, a.p50_ms, a.p99_ms, a.cpu_us
            );
        }
    }
    if let (Some(native), Some(adapted)) = (
        cpu_us.get("fastapi-json"),
        cpu_us.get("fastapi-json-a2wsgi"),
    ) {
        println!("\nFastAPI JSON route, CPU µs/req: native ASGI (ours) {:.1}; through a2wsgi: ours {:.1} (native/a2wsgi {:.2}){}",
            native[0],
            adapted[0],
            native[0] / adapted[0],
            match adapted.get(1) {
                Some(t) => format!(", LiteSpeed's lswsgi {t:.1} (native ours/a2wsgi theirs {:.2})", native[0] / t),
                None => String::new(),
            }
        );
    }
    if wanted("footprint") {
        let mut rounds_out: Vec<Vec<BTreeMap<String, f64>>> = vec![Vec::new(); binaries.len()];
        for round in 0..rounds {
            for (i, b) in binaries.iter().enumerate() {
                rounds_out[i].push(footprint(b, soak, explain && round == 0));
            }
        }
        let med: Vec<BTreeMap<String, f64>> = rounds_out
            .iter()
            .map(|r| {
                r[0].keys()
                    .map(|k| {
                        let mut v: Vec<f64> = r.iter().filter_map(|m| m.get(k).copied()).collect();
                        (k.clone(), median(&mut v))
                    })
                    .collect()
            })
            .collect();
        println!();
        if two {
            println!("| footprint (median of {rounds}) | ours | theirs | ratio |");
            println!("|---|---|---|---|");
        } else {
            println!("| footprint (median of {rounds}) | figure |");
            println!("|---|---|");
        }
        for (k, v) in &med[0] {
            match med.get(1).and_then(|m| m.get(k)) {
                Some(t) => {
                    ratios.insert((k.clone(), "kB"), v / t);
                    println!("| {k} | {v:.0} | {t:.0} | {:.2} |", v / t);
                }
                None if two => println!("| {k} | {v:.0} | - | - |"),
                None => println!("| {k} | {v:.0} |"),
            }
        }
        if let Some((rss, uss)) = bare_python(&binaries[0].path) {
            println!("| bare interpreter, idle (baseline): RSS {rss} kB, USS {uss} kB |");
        }
        if let Ok(m) = std::fs::metadata(&binaries[0].path) {
            let kib = m.len() as f64 / 1024.0;
            println!(
                "\nour binary: {kib:.0} KiB (target ≤ 512 KiB stripped: {})",
                if kib <= 512.0 { "met" } else { "MISSED" }
            );
        }
    }
    if two {
        println!("\n| target (ours/theirs) | ratio | bound | |");
        println!("|---|---|---|---|");
        for &(key, fig, bound, at_most) in TARGETS {
            let Some(&r) = ratios.get(&(key.to_string(), fig)) else {
                continue;
            };
            let met = if at_most { r <= bound } else { r >= bound };
            println!(
                "| {key} {fig} | {r:.2} | {} {bound:.2} | {} |",
                if at_most { "≤" } else { "≥" },
                if met { "met" } else { "MISSED" }
            );
        }
    }
}
