//! The long soak: `cargo bench --bench soak -- [--requests N]` (default
//! 1 000 000) against target/release/lswsgi; prints the report.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "soak_driver.rs"]
mod soak_driver;

fn main() {
    let mut requests = 1_000_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--requests" => {
                requests = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--requests N")
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = std::env::temp_dir().join(format!("lswsgi-soak-{}.log", std::process::id()));
    let worker = root.join("target/release/lswsgi");
    let r = soak_driver::run(
        worker.to_str().unwrap(),
        &root.join("tests/apps/suite.wsgi"),
        requests,
        &log,
    );
    println!("soak: {} requests in {:.1} s", r.requests, r.seconds);
    println!(
        "  good answered correctly: {}   good failed: {}",
        r.good_ok, r.good_failed
    );
    println!(
        "  malformed packets: {}   application crashes: {}",
        r.malformed, r.crashes
    );
    println!("  resent after the worker closed first: {}", r.retried);
    println!("  parent fds before/after: {}/{}", r.fds.0, r.fds.1);
    println!(
        "  parent RSS kB before/after: {}/{}",
        r.rss_kb.0, r.rss_kb.1
    );
    println!(
        "  stuck children: {}   killed by the parent: {}",
        r.stuck, r.stuck_killed
    );
    println!(
        "  parent pidfds at the end (live children): {}   processes left after stop: {}",
        r.pidfds, r.leaked
    );
    println!("  zombies: {}   log: {}", r.zombies, log.display());
}
