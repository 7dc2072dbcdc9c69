//! The web-server side of the format: building BEGIN_REQUEST packets as
//! LiteSpeed does, and decoding the packets an application sends back.
//!
//! Used by the client, the tests and the benches; not on the worker's request
//! path, so it allocates freely.

use super::{
    known_header_slot, ByteOrder, PacketHeader, PacketType, HEADER_LEN, KNOWN_HEADERS,
    KNOWN_HEADER_COUNT, MAX_PACKET_LEN,
};
use crate::lsapi::request::{FIXED_LEN, HEADER_INDEX_LEN};

/// A request as the server describes it to the application.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    /// Byte order of the packet's integers.
    pub order: ByteOrder,
    /// Special (server-only) env entries, in order.
    pub special_env: Vec<(Vec<u8>, Vec<u8>)>,
    /// CGI env entries, in order. REQUEST_METHOD, QUERY_STRING, SCRIPT_NAME and
    /// SCRIPT_FILENAME found here are what the four offset fields point at.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The request line, without CRLF (e.g. `GET / HTTP/1.1`).
    pub request_line: Vec<u8>,
    /// HTTP headers in arrival order; repeats allowed.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// `reqBodyLen`; `-2` means "see Content-Length".
    pub body_len: i32,
}

impl RequestSpec {
    /// A request the way OpenLiteSpeed describes one: `uri` (path and optional
    /// query) served by `script_filename` mounted at `script_name`, with the
    /// env list in OpenLiteSpeed's order and PATH_INFO only when non-empty.
    pub fn new(method: &str, uri: &str, script_filename: &str, script_name: &str) -> Self {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, q),
            None => (uri, ""),
        };
        let path_info = path.strip_prefix(script_name).unwrap_or("");
        let mut env: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut add = |k: &str, v: &str| env.push((k.into(), v.into()));
        add("REMOTE_ADDR", "127.0.0.1");
        add("REMOTE_PORT", "40000");
        add("SERVER_ADDR", "127.0.0.1");
        add("SERVER_NAME", "localhost");
        add("SERVER_ADMIN", "root@localhost");
        add("SERVER_PORT", "80");
        add("REQUEST_URI", uri);
        if !path_info.is_empty() {
            add("PATH_INFO", path_info);
        }
        if !script_filename.is_empty() {
            add("SCRIPT_FILENAME", script_filename);
        }
        add("QUERY_STRING", query);
        add("SCRIPT_NAME", script_name);
        add("SERVER_PROTOCOL", "HTTP/1.1");
        add("SERVER_SOFTWARE", "LiteSpeed");
        add("REQUEST_METHOD", method);
        RequestSpec {
            order: ByteOrder::NATIVE,
            special_env: Vec::new(),
            env,
            request_line: format!("{method} {uri} HTTP/1.1").into_bytes(),
            headers: vec![(b"Host".to_vec(), b"localhost".to_vec())],
            body_len: 0,
        }
    }

    /// Sets or replaces an env entry (appended if new).
    pub fn set_env(&mut self, key: &str, value: &str) -> &mut Self {
        match self.env.iter_mut().find(|(k, _)| k == key.as_bytes()) {
            Some(e) => e.1 = value.as_bytes().to_vec(),
            None => self.env.push((key.into(), value.into())),
        }
        self
    }

    /// Appends an HTTP header.
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Announces a body of `len` bytes and sets Content-Length accordingly.
    pub fn body(&mut self, len: u64) -> &mut Self {
        self.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(b"Content-Length"));
        self.headers
            .push((b"Content-Length".to_vec(), len.to_string().into_bytes()));
        self.body_len = i32::try_from(len).unwrap_or(-2);
        self
    }

    /// Encodes the BEGIN_REQUEST packet. Fails if it would exceed 65535 bytes or
    /// an env key or value is empty or longer than 65534 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let o = self.order;
        let mut p = vec![0u8; FIXED_LEN];
        let mut string_offsets = [0i32; 4];
        const OFFSET_KEYS: [&[u8]; 4] = [
            b"SCRIPT_FILENAME",
            b"SCRIPT_NAME",
            b"QUERY_STRING",
            b"REQUEST_METHOD",
        ];
        for (list, is_env) in [(&self.special_env, false), (&self.env, true)] {
            for (k, v) in list {
                if k.is_empty() || k.len() > 65534 || v.len() > 65534 {
                    return Err(format!(
                        "env entry {} has an unencodable length",
                        String::from_utf8_lossy(k)
                    ));
                }
                p.extend_from_slice(&((k.len() + 1) as u16).to_be_bytes());
                p.extend_from_slice(&((v.len() + 1) as u16).to_be_bytes());
                p.extend_from_slice(k);
                p.push(0);
                if is_env {
                    if let Some(i) = OFFSET_KEYS.iter().position(|n| *n == k.as_slice()) {
                        if string_offsets[i] == 0 {
                            string_offsets[i] = p.len() as i32;
                        }
                    }
                }
                p.extend_from_slice(v);
                p.push(0);
            }
            p.extend_from_slice(&[0; 4]);
        }
        p.resize((p.len() + 7) & !7, 0);

        // Header block: 4 padding bytes, request line, headers, blank line.
        let mut block = vec![0u8; 4];
        block.extend_from_slice(&self.request_line);
        block.extend_from_slice(b"\r\n");
        let mut known: [(i32, u16); KNOWN_HEADER_COUNT] = [(0, 0); KNOWN_HEADER_COUNT];
        let mut unknown: Vec<[i32; 4]> = Vec::new();
        for (name, value) in &self.headers {
            let name_off = block.len() as i32;
            block.extend_from_slice(name);
            block.extend_from_slice(b": ");
            let value_off = block.len() as i32;
            block.extend_from_slice(value);
            block.extend_from_slice(b"\r\n");
            match known_header_slot(name) {
                Some(slot) if known[slot].0 == 0 => {
                    known[slot] = (value_off, value.len() as u16);
                }
                _ => unknown.push([name_off, name.len() as i32, value_off, value.len() as i32]),
            }
        }
        block.extend_from_slice(b"\r\n");

        let index_at = p.len();
        p.resize(index_at + HEADER_INDEX_LEN, 0);
        for (slot, &(off, len)) in known.iter().enumerate() {
            p[index_at + slot * 2..][..2].copy_from_slice(&o.put_u16(len));
            p[index_at + 52 + slot * 4..][..4].copy_from_slice(&o.put_i32(off));
        }
        for e in &unknown {
            for v in e {
                p.extend_from_slice(&o.put_i32(*v));
            }
        }
        p.extend_from_slice(&block);
        if p.len() > MAX_PACKET_LEN {
            return Err(format!(
                "request packet of {} bytes exceeds {MAX_PACKET_LEN}",
                p.len()
            ));
        }
        let fields = [
            block.len() as i32,
            self.body_len,
            string_offsets[0],
            string_offsets[1],
            string_offsets[2],
            string_offsets[3],
            unknown.len() as i32,
            self.env.len() as i32,
            self.special_env.len() as i32,
        ];
        for (i, v) in fields.iter().enumerate() {
            p[HEADER_LEN + 4 * i..][..4].copy_from_slice(&o.put_i32(*v));
        }
        let len = p.len();
        p[..HEADER_LEN].copy_from_slice(&PacketHeader::encode(PacketType::BeginRequest, o, len));
        Ok(p)
    }
}

/// The name of known-header slot `slot` as sent on the wire.
pub fn known_header_name(slot: usize) -> &'static str {
    KNOWN_HEADERS[slot]
}

/// A decoded RESP_HEADER payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespHeader {
    /// HTTP status code.
    pub status: i32,
    /// `(name, value)` pairs as sent (split at the first colon).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Decodes the payload (the bytes after the 8-byte header) of a RESP_HEADER
/// packet in byte order `order`.
pub fn decode_resp_header(order: ByteOrder, payload: &[u8]) -> Result<RespHeader, String> {
    if payload.len() < 8 {
        return Err("RESP_HEADER shorter than its count and status".into());
    }
    let count = order.i32(payload[0..4].try_into().unwrap());
    let status = order.i32(payload[4..8].try_into().unwrap());
    if count < 0 || 8 + 2 * count as usize > payload.len() {
        return Err(format!("RESP_HEADER header count {count} does not fit"));
    }
    let count = count as usize;
    let mut at = 8 + 2 * count;
    let mut headers = Vec::with_capacity(count);
    for i in 0..count {
        let len = order.u16([payload[8 + 2 * i], payload[9 + 2 * i]]) as usize;
        let s = payload
            .get(at..at + len)
            .ok_or_else(|| format!("RESP_HEADER header {i} runs past the packet"))?;
        at += len;
        let s = match s.split_last() {
            Some((0, s)) => s,
            _ => return Err(format!("RESP_HEADER header {i} lacks its NUL")),
        };
        let colon = memchr::memchr(b':', s)
            .ok_or_else(|| format!("RESP_HEADER header {i} has no colon"))?;
        let value = &s[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        headers.push((s[..colon].to_vec(), value.to_vec()));
    }
    if at != payload.len() {
        return Err("RESP_HEADER has trailing bytes".into());
    }
    Ok(RespHeader { status, headers })
}
