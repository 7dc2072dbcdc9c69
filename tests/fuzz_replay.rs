//! Replays the fuzz targets' saved inputs on stable Rust, so CI runs every
//! input the fuzzers found interesting: fuzz/seeds (hand-made valid streams)
//! and fuzz/corpus-ci (the minimised corpus of a fuzzing run). Each input must
//! neither panic nor hang.

use lswsgi::harness::serve_bytes;
use lswsgi::lsapi::Request;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "corpus-ci"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            out.extend(entries.flatten().map(|e| e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn connection_handler_replays_its_corpus() {
    let files = inputs("conn_stream");
    assert!(files.len() >= 4, "no conn_stream inputs found");
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let started = Instant::now();
        let summary = serve_bytes(&data);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} took {:?}",
            path.display(),
            started.elapsed()
        );
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("three-requests") {
            assert_eq!((summary.served, summary.error), (3, None), "{name}");
        } else if name.starts_with("one-get") {
            assert_eq!((summary.served, summary.error), (1, None), "{name}");
        }
    }
}

#[test]
fn parser_replays_its_corpus() {
    let files = inputs("parse_request");
    assert!(files.len() >= 6, "no parse_request inputs found");
    let mut valid = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap();
        if let Ok(req) = Request::parse(&data) {
            valid += 1;
            let _ = req.env_iter().count() + req.special_env_iter().count();
            let _ = req.known_headers().count() + req.unknown_headers().count();
        }
    }
    // The hand-made seeds are valid packets.
    assert!(valid >= 6);
}

#[test]
fn broken_streams_end_with_a_reason() {
    let good = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/conn_stream/three-requests-0"),
    )
    .unwrap();
    // Cut anywhere: served requests before the cut, then a clean end or a
    // reason, never a panic.
    for cut in (0..good.len()).step_by(7) {
        let s = serve_bytes(&good[..cut]);
        assert!(s.served <= 3);
        if s.error.is_none() {
            assert!(cut == 0 || s.served >= 1, "cut {cut}: {s:?}");
        }
    }
    let s = serve_bytes(b"LS\x01\x00\xff\xff\xff\x7f");
    assert_eq!(s.served, 0);
    assert!(s.error.unwrap().contains("exceeds 65535"));
}
