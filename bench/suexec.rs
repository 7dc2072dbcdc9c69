//! suEXEC daemon-mode figures, on the real binary started as root the way
//! LiteSpeed starts it (listening socket on fd 0, LSAPI_SECRET,
//! LSAPI_CHILDREN=4), each request signed for 4321:4322:
//!
//! 1. connect -> first response header when the parent forks a child for
//!    the connection (which authenticates, switches user, loads the script
//!    and answers), median and p90 of N sequential connections;
//! 2. private memory (USS) of 4 daemon children after 100 requests each;
//! 3. CPU time (user + system, from /proc/PID/stat in clock ticks): of the
//!    group (parent and reaped children) per connection in 1.; time on a
//!    CPU (/proc/PID/schedstat) of the children per request on their
//!    persistent connections in 2. (two tenants, 4321 and 4331, two
//!    connections each: one tenant may hold only its share of a daemon).
//!
//! ```text
//! cargo bench --bench suexec -- [--bin PATH] [--samples N]
//! ```
//! `--bin` measures another build of the worker (e.g. an older commit).
//! Must run as root.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{euid, suexec_identity, suexec_secret};
use lswsgi::client::{Client, Spawned};
use lswsgi::lsapi::build::RequestSpec;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const HELLO: &str = "def application(environ, start_response):\n    \
    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'hello']\n";

fn uss_kb(pid: i32) -> u64 {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kb = |n: &str| -> u64 {
        t.lines()
            .find_map(|l| l.strip_prefix(n)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    kb("Private_Clean") + kb("Private_Dirty")
}

/// utime + stime (and, with `children`, cutime + cstime) of `pid`, in ms.
fn cpu_ms(pid: i32, children: bool) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd,
    // utime the 14th, stime, cutime, cstime follow.
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = if children {
        f.iter().sum()
    } else {
        f[0] + f[1]
    };
    // SAFETY: sysconf with a constant name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 * 1000.0 / hz
}

/// Time `pid` has run on a CPU (/proc/PID/schedstat), in ms.
fn run_ms(pid: i32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    s.split(' ')
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0) as f64
        / 1e6
}

fn main() {
    let mut bin = env!("CARGO_BIN_EXE_lswsgi").to_string();
    let mut samples = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin" => bin = args.next().expect("--bin PATH"),
            "--samples" => {
                samples = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--samples N")
            }
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    assert_eq!(euid(), 0, "run as root");
    let dir = std::env::temp_dir().join(format!("lswsgi-bench-suexec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = dir.join("hello.wsgi");
    std::fs::write(&app, HELLO).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (secret_path, secret) = suexec_secret(&dir);
    let env: Vec<(String, String)> = [
        ("LSAPI_CHILDREN", "4"),
        ("LSAPI_MAX_IDLE_CHILDREN", "4"),
        ("LSAPI_SECRET", secret_path.to_str().unwrap()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let spawned = Spawned::start(&[bin.clone()], &env, None).expect("start");
    let mut spec = RequestSpec::new("GET", "/hello.wsgi", app.to_str().unwrap(), "/hello.wsgi");
    spec.special_env = suexec_identity(4321, 4322, &secret);
    let connect = || {
        let mut c: Client = spawned.connect(Duration::from_secs(20)).expect("connect");
        c.stream()
            .set_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        c
    };
    // Warm-up.
    let r = connect().call(&spec, b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let parent = spawned.child.id() as i32;
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_ms(parent, true);
    let mut t = Vec::with_capacity(samples);
    for _ in 0..samples {
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        let mut c = connect();
        let r = c.call(&spec, b"").unwrap();
        t.push(t0.elapsed());
        assert_eq!(r.status, 200);
    }
    // The last children are reaped (their CPU is in the parent's cutime).
    std::thread::sleep(Duration::from_millis(500));
    let per_conn = (cpu_ms(parent, true) - cpu0) / samples as f64;
    t.sort();
    let ms = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!("suEXEC bench ({bin})");
    println!(
        "  connect -> response, a fork per connection ({samples}): p50 {:.3} ms  p90 {:.3} ms",
        ms(0.5),
        ms(0.9)
    );
    println!("  group CPU per such connection (parent + child): {per_conn:.3} ms");
    let mut conns: Vec<Client> = (0..4).map(|_| connect()).collect();
    let mut other = spec.clone();
    other.special_env = suexec_identity(4331, 4332, &secret);
    let specs = [&spec, &other, &spec, &other];
    let mut pids = Vec::new();
    for (c, spec) in conns.iter_mut().zip(specs) {
        let r = c.call(spec, b"").unwrap();
        pids.push(r.pid.expect("PID notice"));
    }
    let busy0: f64 = pids.iter().map(|&p| run_ms(p)).sum();
    for _ in 1..100 {
        for (c, spec) in conns.iter_mut().zip(specs) {
            assert_eq!(c.call(spec, b"").unwrap().status, 200);
        }
    }
    let busy: f64 = pids.iter().map(|&p| run_ms(p)).sum::<f64>() - busy0;
    println!(
        "  hello CPU per request on a persistent connection: {:.3} ms",
        busy / (99.0 * pids.len() as f64)
    );
    let mut uss: Vec<u64> = pids.iter().map(|&p| uss_kb(p)).collect();
    uss.sort();
    println!("  daemon child USS after 100 requests, KiB: {uss:?}");
    drop(conns);
    let mut spawned = spawned;
    let _ = spawned.stop(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}
