//! Drives the connection layer with arbitrary bytes from "the server": the
//! fuzz target `conn_stream` and the corpus replay test both call
//! [`serve_bytes`], so CI replays exactly what the fuzzer explores.
//!
//! It runs the worker's per-connection protocol without Python: read a
//! request packet, parse it, answer with a small framed response, drain the
//! body, repeat until the stream ends or breaks.

use crate::conn::{write_req_received, Conn, ConnError};
use crate::lsapi::Request;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;

/// What one run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Requests parsed and answered.
    pub served: usize,
    /// Why the connection ended (`None`: the server closed it cleanly).
    pub error: Option<String>,
}

/// Feeds `input` to a fresh connection, as the server side of a socket pair,
/// and serves it. Never panics on any input.
pub fn serve_bytes(input: &[u8]) -> Summary {
    let (server, worker) = UnixStream::pair().expect("socketpair");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let mut server = server;
        // The worker may stop reading early; a failed write is expected then.
        let _ = server.write_all(&data);
        let _ = server.shutdown(std::net::Shutdown::Write);
        // Keep our end open until the worker is done, reading its responses.
        let mut sink = [0u8; 65536];
        while let Ok(n) = std::io::Read::read(&mut server, &mut sink) {
            if n == 0 {
                break;
            }
        }
    });
    let mut conn = Conn::new();
    conn.attach(worker.into_raw_fd());
    let mut summary = Summary::default();
    loop {
        match serve_one(&mut conn) {
            Ok(true) => summary.served += 1,
            Ok(false) => break,
            Err(e) => {
                summary.error = Some(e.to_string());
                break;
            }
        }
    }
    conn.close();
    let _ = writer.join();
    summary
}

/// One request: `Ok(false)` at a clean end of stream.
fn serve_one(conn: &mut Conn) -> Result<bool, ConnError> {
    let Some(range) = conn.read_request()? else {
        return Ok(false);
    };
    let ack = conn.ack_due();
    let (status, body_len) = {
        let req = Request::parse(conn.packet(range))?;
        if ack {
            write_req_received(conn.fd())?;
        }
        // Touch every view, as building an environ would.
        let n = req.env_iter().count() + req.special_env_iter().count();
        let h = req.known_headers().count() + req.unknown_headers().count();
        (200 + ((n + h) % 100) as u16, req.body_len())
    };
    conn.begin_body(body_len);
    let mut chunk = [0u8; 4096];
    let mut read = 0u64;
    while read < 8192 {
        match conn.read_body(&mut chunk)? {
            0 => break,
            n => read += n as u64,
        }
    }
    conn.send_page(
        status,
        &[(&b"Content-Type"[..], &b"text/plain"[..])],
        &chunk[..(read as usize).min(chunk.len())],
    )?;
    conn.drain_body()?;
    Ok(true)
}
