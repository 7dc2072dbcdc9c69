//! The response path against the real binary: exactly one RESP_END per
//! request, wsgi.file_wrapper sending the bytes the app means, wsgi.input
//! buffering and memory, and the start_response signature (tests/apps/respond.wsgi).

mod common;

use common::*;
use lswsgi::lsapi::build::RequestSpec;
use std::io::Write;

const RESP_END: u8 = 5;

fn rq(path: &str) -> RequestSpec {
    RequestSpec::new(
        "GET",
        &format!("/respond.wsgi{path}"),
        &app("respond.wsgi"),
        "/respond.wsgi",
    )
}

fn post(path: &str, len: usize) -> RequestSpec {
    let mut s = RequestSpec::new(
        "POST",
        &format!("/respond.wsgi{path}"),
        &app("respond.wsgi"),
        "/respond.wsgi",
    );
    s.body(len as u64);
    s
}

/// `syscr` (read-type syscalls) of a process, from /proc/PID/io.
fn syscr(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A close() that raises after an empty 204 body: one 500 response with one
/// RESP_END, and the next request on the connection gets its own answer.
#[test]
fn close_raising_after_an_empty_body_ends_the_response_once() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &rq("/close-raises"), b"");
    let r0 = r.clone();
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(
        r.packets.iter().filter(|&&k| k == RESP_END).count(),
        1,
        "packets {:?}",
        r.packets
    );
    for _ in 0..3 {
        let r = call_ok(&mut c, &rq("/hello"), b"");
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
        assert_eq!(r.packets, vec![7, 3, 4, 5], "stray packets after the 500");
    }
    assert!(
        String::from_utf8_lossy(&r0.stderr).contains("close failed on purpose"),
        "the error is logged to the server"
    );
}

/// Flask: a 204 response whose close() hook raises.
#[test]
fn flask_close_hook_raising_on_204_keeps_the_connection_in_step() {
    let venv = std::env::var("LSWSGI_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test")
        });
    let venv = if venv.is_absolute() {
        venv
    } else {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(venv)
    };
    let script = app("flask_close.wsgi");
    let py = venv.join("bin/python");
    let w = Worker::start(&[], &[("LS_PYTHONBIN", py.to_str().unwrap())]);
    let mut c = w.connect();
    let s = script.as_str();
    let r = call_ok(
        &mut c,
        &RequestSpec::new("GET", "/app.wsgi/empty", s, "/app.wsgi"),
        b"",
    );
    assert_eq!(r.status, 500);
    assert_eq!(r.packets.iter().filter(|&&k| k == RESP_END).count(), 1);
    for _ in 0..3 {
        let r = call_ok(
            &mut c,
            &RequestSpec::new("GET", "/app.wsgi/ok", s, "/app.wsgi"),
            b"",
        );
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

#[test]
fn file_wrapper_sends_what_read_returns_and_honours_content_length() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let dir = scratch("fw2");
    let data = pattern(300_001, 5);
    // gzip.open has a descriptor, but its bytes are the decompressed ones.
    let gz = dir.join("data.gz");
    let mut e = std::fs::File::create(&gz).unwrap();
    {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import gzip,sys; sys.stdout.buffer.write(gzip.compress(sys.stdin.buffer.read()))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = out;
        out.stdin.take().unwrap().write_all(&data).unwrap();
        let o = out.wait_with_output().unwrap();
        e.write_all(&o.stdout).unwrap();
    }
    let r = call_ok(&mut c, &rq(&format!("/fw-gzip?path={}", gz.display())), b"");
    assert_eq!(r.status, 200);
    assert!(
        r.body == data,
        "gzip through file_wrapper: {} bytes",
        r.body.len()
    );
    // A plain file with a Content-Length smaller than the rest of it.
    let plain = dir.join("data.bin");
    std::fs::write(&plain, &data).unwrap();
    for (pos, len) in [(0usize, 1000usize), (5, 70_000), (299_000, 1001)] {
        let r = call_ok(
            &mut c,
            &rq(&format!(
                "/fw-len?path={}&pos={pos}&len={len}",
                plain.display()
            )),
            b"",
        );
        assert_eq!(r.status, 200);
        assert!(
            r.body == data[pos..pos + len],
            "pos {pos} len {len}: got {}",
            r.body.len()
        );
    }
    // An unbuffered FileIO from its position.
    let r = call_ok(
        &mut c,
        &rq(&format!("/fw-raw?path={}&pos=7", plain.display())),
        b"",
    );
    assert!(r.body == data[7..]);
    // Still in step.
    assert_eq!(call_ok(&mut c, &rq("/hello"), b"").text(), "hello");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn small_reads_are_served_from_the_buffer() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    call_ok(&mut c, &rq("/hello"), b"");
    let body = pattern(300_000, 9);
    let before = syscr(w.pid());
    let r = call_ok(&mut c, &post("/read1", body.len()), &body);
    let reads = syscr(w.pid()) - before;
    assert_eq!(r.text(), "300000");
    assert!(
        reads < 2_000,
        "{reads} read syscalls for read(1) over 300 kB"
    );
}

#[test]
fn a_huge_lineless_body_iterated_by_lines_gives_its_memory_back() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    for _ in 0..3 {
        call_ok(&mut c, &rq("/hello"), b"");
    }
    let base = status_kb(w.pid(), "VmRSS");
    let body = vec![b'x'; 50 << 20];
    let r = call_ok(&mut c, &post("/lines", body.len()), &body);
    assert_eq!(r.text(), (50usize << 20).to_string());
    call_ok(&mut c, &rq("/hello"), b"");
    let after = status_kb(w.pid(), "VmRSS");
    assert!(
        after < base + 10 * 1024,
        "RSS {base} kB before, {after} kB after a 50 MiB line"
    );
}

#[test]
fn str_subclasses_and_start_response_keywords() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let r = call_ok(&mut c, &rq("/strsub"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("X-Sub"), Some("yes"));
    assert_eq!(r.header("X-Enum"), Some("enum-value"));
    let r = call_ok(&mut c, &rq("/sr-kw"), b"");
    assert_eq!(
        (r.status, r.header("X-Kw")),
        (200, Some("1")),
        "{}",
        r.text()
    );
    let r = call_ok(&mut c, &rq("/sr-badkw"), b"");
    assert_eq!(r.text(), "TypeError");
    assert_eq!(call_ok(&mut c, &rq("/hello"), b"").text(), "hello");
}

/// The GIL is released while the worker blocks on the request body: an
/// application thread keeps running during a slow upload.
#[test]
fn application_threads_run_while_the_body_is_awaited() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let body = vec![b'a'; 4];
    let r = c
        .call_in_pieces(
            &post("/gil", body.len()),
            &body,
            2,
            std::time::Duration::from_millis(400),
        )
        .unwrap();
    let ticks: u64 = r.text().parse().unwrap_or_else(|_| panic!("{}", r.text()));
    // ~800 ms of waiting at one tick per ms; without the release, a handful.
    assert!(
        ticks > 100,
        "the app thread ticked {ticks} times during the wait"
    );
}
