//! A bounded soak in CI (the long run is `cargo bench --bench soak`): 50 000
//! requests mixing good ones, malformed packets, application crashes and
//! stuck children over
//! 8 connections to a ProcessGroup worker.

mod common;
#[path = "../bench/soak_driver.rs"]
mod soak_driver;

#[test]
fn soak_mixed_traffic_in_process_group_mode() {
    let dir = std::env::temp_dir().join(format!("lswsgi-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/suite.wsgi");
    let r = soak_driver::run(
        env!("CARGO_BIN_EXE_lswsgi"),
        &app,
        50_000,
        &dir.join("soak.log"),
    );
    eprintln!("{r:?}");
    let log = std::fs::read_to_string(dir.join("soak.log")).unwrap_or_default();
    assert_eq!(r.good_failed, 0, "good requests failed: {r:?}\n{log}");
    assert_eq!(
        r.good_ok + r.malformed + r.crashes + r.stuck,
        r.requests,
        "{r:?}"
    );
    assert!(r.stuck >= 4 && r.stuck_killed >= r.stuck, "{r:?}\n{log}");
    assert_eq!(r.leaked, 0, "processes left after stop: {r:?}");
    assert!(r.malformed >= 4000 && r.crashes >= 5, "{r:?}");
    assert_eq!(r.zombies, 0, "{r:?}");
    assert_eq!(r.fds.0, r.fds.1, "parent descriptors leaked: {r:?}");
    assert!(r.rss_kb.1 <= r.rss_kb.0 + 1024, "parent RSS grew: {r:?}");
    assert!(
        log.contains("dropping connection: protocol error"),
        "malformed input not logged"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
