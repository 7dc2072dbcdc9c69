//! Hostile and broken input against the real worker: every malformed request
//! drops its connection with a logged reason, never crashes or hangs the
//! worker, and the next connection is served correctly.

mod common;

use common::*;
use lswsgi::client::Ending;
use lswsgi::lsapi::build::RequestSpec;
use lswsgi::lsapi::ByteOrder;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Offset of the first env entry (after the fixed fields and the empty
/// special env list's terminator).
const ENV_AT: usize = 48;

fn base(order: ByteOrder) -> RequestSpec {
    let mut spec = suite("GET", "/ok");
    spec.order = order;
    spec.header("X-Extra", "1").header("Accept", "*/*");
    spec
}

fn put_i32(p: &mut [u8], at: usize, order: ByteOrder, v: i32) {
    p[at..at + 4].copy_from_slice(&order.put_i32(v));
}

fn get_i32(p: &[u8], at: usize, order: ByteOrder) -> i32 {
    order.i32(p[at..at + 4].try_into().unwrap())
}

/// Where the known-header index starts in a packet built by `base`.
fn index_at(p: &[u8], order: ByteOrder) -> usize {
    let header_len = get_i32(p, 8, order) as usize;
    let unknown = get_i32(p, 32, order) as usize;
    p.len() - header_len - unknown * 16 - 152
}

/// Sends `bytes` (then half-closes if `close`), and expects the worker to drop
/// the connection without answering a complete response, within 10 s.
fn expect_dropped(w: &Worker, bytes: &[u8], close: bool, reason: &str) {
    let mut c = w.connect();
    c.stream()
        .set_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    // The worker may drop the connection before reading everything.
    let _ = c.stream().write_all(bytes);
    if close {
        let _ = c.stream().shutdown_write();
    }
    let mut sink = Vec::new();
    let r = c.stream().read_to_end(&mut sink);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{reason}: read failed with {r:?} (a time-out means the worker hung)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{reason}: took too long"
    );
    assert!(
        !sink.windows(8).any(|w| w == [b'L', b'S', 5, 0, 8, 0, 0, 0]),
        "{reason}: a response was completed"
    );
    assert!(
        w.wait_log(reason, Duration::from_secs(5)),
        "{reason}: not in the log:\n{}",
        w.log_text()
    );
}

/// The worker is alive and serves a fresh connection correctly.
fn still_serving(w: &mut Worker) {
    assert!(w.alive(), "worker died:\n{}", w.log_text());
    let mut c = w.connect();
    let r = call_ok(&mut c, &suite("GET", "/after"), b"");
    assert_eq!(r.text(), "path=/after");
}

#[test]
fn malformed_packets_are_dropped_with_a_reason() {
    let mut w = Worker::start(&[], &[]);
    for order in [ByteOrder::Little, ByteOrder::Big] {
        let good = base(order).encode().unwrap();
        let len = good.len() as i32;
        let mut cases: Vec<(Vec<u8>, bool, &str)> = Vec::new();
        let mut m = |f: &dyn Fn(&mut Vec<u8>), close: bool, reason: &'static str| {
            let mut p = good.clone();
            f(&mut p);
            cases.push((p, close, reason));
        };
        m(&|p| p[0] = b'X', false, "bad packet magic");
        m(&|p| p[2] = 3, false, "unexpected packet type 3");
        m(&|p| p[2] = 42, false, "unexpected packet type 42");
        m(
            &|p| put_i32(p, 4, order, 7),
            false,
            "packet length 7 is below 8",
        );
        m(
            &|p| put_i32(p, 4, order, -1),
            false,
            "packet length -1 is below 8",
        );
        m(
            &|p| put_i32(p, 4, order, 70000),
            false,
            "request packet of 70000 bytes exceeds 65535",
        );
        m(
            &|p| put_i32(p, 4, order, len + 500),
            true,
            "in the middle of a request packet",
        );
        m(&|p| put_i32(p, 36, order, 100), false, "env entry");
        m(
            &|p| put_i32(p, 36, order, 8193),
            false,
            "invalid cntEnv 8193",
        );
        m(&|p| put_i32(p, 36, order, -3), false, "invalid cntEnv -3");
        m(
            &|p| put_i32(p, 40, order, 8193),
            false,
            "invalid cntSpecialEnv 8193",
        );
        m(&|p| put_i32(p, 40, order, 1), false, "special env entry 0");
        m(
            &|p| p[ENV_AT..ENV_AT + 2].copy_from_slice(&[0, 0]),
            false,
            "env entry 0 has a zero length",
        );
        m(
            &|p| p[ENV_AT + 2..ENV_AT + 4].copy_from_slice(&[0, 0]),
            false,
            "env entry 0 has a zero length",
        );
        m(
            &|p| p[ENV_AT..ENV_AT + 2].copy_from_slice(&[0xff, 0xff]),
            false,
            "env entry 0 runs past",
        );
        m(
            // Key length one short: the byte before the value is not NUL.
            &|p| {
                let k = u16::from_be_bytes([p[ENV_AT], p[ENV_AT + 1]]);
                p[ENV_AT..ENV_AT + 2].copy_from_slice(&(k - 1).to_be_bytes());
                let v = u16::from_be_bytes([p[ENV_AT + 2], p[ENV_AT + 3]]);
                p[ENV_AT + 2..ENV_AT + 4].copy_from_slice(&(v + 1).to_be_bytes());
            },
            false,
            "key or value lacks its NUL",
        );
        m(
            // One entry fewer than present: the list terminator is missing.
            &|p| {
                let n = get_i32(p, 36, order);
                put_i32(p, 36, order, n - 1);
            },
            false,
            "env list lacks its 4-byte zero terminator",
        );
        m(
            &|p| put_i32(p, 16, order, len),
            false,
            "scriptFileOff points outside",
        );
        m(
            &|p| put_i32(p, 28, order, 3),
            false,
            "requestMethodOff points outside",
        );
        m(
            &|p| {
                let at = index_at(p, order) + 52; // slot 0 offset
                put_i32(p, at, order, 100_000);
            },
            false,
            "known header slot 0 points outside",
        );
        m(
            &|p| {
                let at = index_at(p, order) + 52 + 4 * 7;
                put_i32(p, at, order, -5);
            },
            false,
            "known header slot 7 points outside",
        );
        m(
            &|p| {
                let at = index_at(p, order) + 152; // first unknown entry
                put_i32(p, at + 12, order, 1_000_000);
            },
            false,
            "unknown header 0 points outside",
        );
        m(
            &|p| {
                let h = get_i32(p, 8, order);
                put_i32(p, 8, order, h - 1);
            },
            false,
            "header block ends at",
        );
        m(
            &|p| put_i32(p, 8, order, -1),
            false,
            "negative httpHeaderLen -1",
        );
        m(
            &|p| put_i32(p, 12, order, -7),
            false,
            "invalid reqBodyLen -7",
        );
        m(
            // -2 without a Content-Length header.
            &|p| put_i32(p, 12, order, -2),
            false,
            "body length -2 without a valid Content-Length",
        );
        for (bytes, close, reason) in cases {
            expect_dropped(&w, &bytes, close, reason);
            still_serving(&mut w);
        }
    }
}

#[test]
fn truncated_streams_are_dropped() {
    let mut w = Worker::start(&[], &[]);
    let good = base(ByteOrder::NATIVE).encode().unwrap();
    // Fewer than 8 bytes, then close.
    expect_dropped(&w, &good[..5], true, "in the middle of a packet header");
    still_serving(&mut w);
    // Half a packet, then close.
    expect_dropped(
        &w,
        &good[..good.len() / 2],
        true,
        "in the middle of a request packet",
    );
    still_serving(&mut w);

    // A body shorter than announced, then close: the app's read fails.
    let mut spec = suite("POST", "/echo");
    spec.body(1000);
    let mut bytes = spec.encode().unwrap();
    bytes.extend_from_slice(&[b'b'; 100]);
    expect_dropped(&w, &bytes, true, "in the middle of a request body");
    still_serving(&mut w);
    // The same for a body the app never reads (it is drained).
    let mut spec = suite("POST", "/ignore");
    spec.body(100_000);
    let mut bytes = spec.encode().unwrap();
    bytes.extend_from_slice(&[b'b'; 10]);
    let mut c = w.connect();
    c.stream().write_all(&bytes).unwrap();
    c.stream().shutdown_write().unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(
        (r.status, r.ending),
        (200, Ending::End),
        "answered before draining"
    );
    assert!(
        c.read_response().unwrap().packets.is_empty(),
        "then dropped"
    );
    assert!(w.wait_log("in the middle of a request body", Duration::from_secs(5)));
    still_serving(&mut w);

    // ABORT_REQUEST in the middle of a body, then the server closes.
    let mut spec = suite("POST", "/echo");
    spec.body(1000);
    let mut bytes = spec.encode().unwrap();
    bytes.extend_from_slice(&[b'b'; 10]);
    bytes.extend_from_slice(&[b'L', b'S', 2, 0, 8, 0, 0, 0]);
    expect_dropped(&w, &bytes, true, "in the middle of a request body");
    still_serving(&mut w);
    // ABORT_REQUEST between requests is ignored.
    let mut c = w.connect();
    c.stream()
        .write_all(&[b'L', b'S', 2, 0, 8, 0, 0, 0])
        .unwrap();
    let r = call_ok(&mut c, &suite("GET", "/after-abort"), b"");
    assert_eq!(r.text(), "path=/after-abort");
}

#[test]
fn a_second_request_inside_a_body_desynchronises_and_is_dropped() {
    let mut w = Worker::start(&[], &[]);
    let mut spec = suite("POST", "/echo");
    spec.body(100);
    let mut bytes = spec.encode().unwrap();
    bytes.extend_from_slice(b"0123456789");
    // The next BEGIN_REQUEST arrives while 90 body bytes are still due: the
    // worker takes them as body, then the rest of that packet is garbage.
    bytes.extend_from_slice(&suite("GET", "/second").encode().unwrap());
    let mut c = w.connect();
    c.stream()
        .set_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.stream().write_all(&bytes).unwrap();
    let first = c.read_response().unwrap();
    assert_eq!(first.body.len(), 100);
    assert_eq!(&first.body[..10], b"0123456789");
    let next = c.read_response().unwrap();
    assert!(next.packets.is_empty(), "connection dropped");
    assert!(w.wait_log(
        "dropping connection: protocol error",
        Duration::from_secs(5)
    ));
    still_serving(&mut w);
}

#[test]
fn server_closing_mid_response_and_slow_readers() {
    let mut w = Worker::start(&[], &[]);
    // The server reads a little of a 32 MiB response and goes away.
    let mut c = w.connect();
    c.stream()
        .write_all(&suite("GET", "/big?size=33554432").encode().unwrap())
        .unwrap();
    let mut some = [0u8; 1000];
    c.stream().read_exact(&mut some).unwrap();
    drop(c);
    assert!(w.wait_log("dropping connection", Duration::from_secs(10)));
    still_serving(&mut w);

    // A server that reads the response one byte at a time gets it intact.
    let mut c = w.connect();
    c.stream()
        .write_all(&suite("GET", "/big?size=70000").encode().unwrap())
        .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = c.stream().try_clone().unwrap();
    while !got.ends_with(&[b'L', b'S', 5, 0, 8, 0, 0, 0]) {
        assert!(got.len() < 200_000, "no RESP_END");
        reader.read_exact(&mut byte).unwrap();
        got.push(byte[0]);
    }
    // Walk the packets that arrived and keep the RESP_STREAM payloads.
    let mut body = Vec::new();
    let mut at = 0;
    while at + 8 <= got.len() {
        let len = i32::from_ne_bytes(got[at + 4..at + 8].try_into().unwrap()) as usize;
        if got[at + 2] == 4 {
            body.extend_from_slice(&got[at + 8..at + len]);
        }
        at += len;
    }
    assert_eq!(body.len(), 70000);
    let expect: Vec<u8> = (0..70000)
        .map(|i| {
            if i < 70000 / 251 * 251 {
                (i % 251) as u8
            } else {
                b'x'
            }
        })
        .collect();
    assert!(body == expect);
    drop(reader);
    drop(c);
    still_serving(&mut w);
}

#[test]
fn two_gib_body_streams_in_bounded_memory() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    call_ok(&mut c, &suite("GET", "/warm"), b"");
    let idle = status_kb(w.pid(), "VmRSS");
    let size: u64 = 2 << 30;
    let mut spec = suite("POST", "/hash");
    // Above i32::MAX: sent as reqBodyLen -2 with Content-Length.
    spec.body(size);
    assert_eq!(spec.body_len, -2);
    let packet = spec.encode().unwrap();
    c.stream().write_all(&packet).unwrap();
    let mut writer = c.stream().try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let block = vec![b'z'; 1 << 20];
        for _ in 0..(size >> 20) {
            writer.write_all(&block).unwrap();
        }
    });
    let r = c.read_response().unwrap();
    sender.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.stderr));
    assert!(r.text().starts_with(&format!("{size} ")), "{}", r.text());
    let peak = status_kb(w.pid(), "VmHWM");
    assert!(
        peak < idle + 8 * 1024,
        "peak RSS {peak} kB vs {idle} kB idle while streaming 2 GiB"
    );
}
