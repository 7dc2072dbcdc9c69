//! Response framing: RESP_HEADER built in reusable buffers, and the fixed
//! packets (RESP_STREAM headers, RESP_END, CONN_CLOSE, REQ_RECEIVED, STDERR,
//! the `\0PID` notice).
//!
//! A RESP_HEADER is two contiguous pieces so headers can be appended one at a
//! time without knowing their count up front: [`ResponseHead::prefix`] (packet
//! header, count, status, one u16 length per header) and
//! [`ResponseHead::strings`] (`Name:value\0` each). The connection writes both,
//! plus body and RESP_END, in one writev.

use super::{
    ByteOrder, PacketHeader, PacketType, HEADER_LEN, MAX_PACKET_LEN, MAX_RESP_HEADERS,
    MAX_STREAM_PAYLOAD,
};
use std::fmt;

/// Why a response header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// An empty header name.
    EmptyName,
    /// A name with a byte that is not an HTTP token character.
    BadNameByte(u8),
    /// CR, LF or NUL inside a value.
    BadValueByte(u8),
    /// More than 1000 headers.
    TooMany,
    /// The RESP_HEADER packet would exceed 65535 bytes.
    TooLarge,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HeaderError::EmptyName => f.write_str("empty header name"),
            HeaderError::BadNameByte(b) => write!(f, "header name contains byte 0x{b:02x}"),
            HeaderError::BadValueByte(b) => write!(f, "header value contains byte 0x{b:02x}"),
            HeaderError::TooMany => write!(f, "more than {MAX_RESP_HEADERS} response headers"),
            HeaderError::TooLarge => {
                write!(
                    f,
                    "response headers exceed the {MAX_PACKET_LEN}-byte packet limit"
                )
            }
        }
    }
}

impl std::error::Error for HeaderError {}

/// Bytes before the per-header lengths: packet header, count, status.
const PREFIX_FIXED: usize = HEADER_LEN + 8;

/// An HTTP token character (RFC 9110 `tchar`).
#[inline]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A RESP_HEADER under construction, in buffers kept across requests.
#[derive(Debug)]
pub struct ResponseHead {
    prefix: Vec<u8>,
    strings: Vec<u8>,
    count: usize,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseHead {
    /// Empty buffers sized for a typical response (no reallocation for ~60 headers).
    pub fn new() -> Self {
        let mut head = ResponseHead {
            prefix: Vec::with_capacity(PREFIX_FIXED + 128),
            strings: Vec::with_capacity(2048),
            count: 0,
        };
        head.clear();
        head
    }

    /// Forgets all headers; keeps the buffers' capacity.
    pub fn clear(&mut self) {
        self.prefix.clear();
        self.prefix.resize(PREFIX_FIXED, 0);
        self.strings.clear();
        self.count = 0;
    }

    /// Number of headers appended.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no header was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `name:value`. Refuses a name that is not an HTTP token, a value
    /// with CR, LF or NUL, the 1001st header, or a packet over 65535 bytes; on
    /// refusal nothing is appended.
    pub fn push(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeaderError> {
        if name.is_empty() {
            return Err(HeaderError::EmptyName);
        }
        if let Some(&b) = name.iter().find(|&&b| !is_tchar(b)) {
            return Err(HeaderError::BadNameByte(b));
        }
        if let Some(&b) = value.iter().find(|&&b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(HeaderError::BadValueByte(b));
        }
        if self.count == MAX_RESP_HEADERS {
            return Err(HeaderError::TooMany);
        }
        let entry = name.len() + 1 + value.len() + 1;
        if self.total_len() + 2 + entry > MAX_PACKET_LEN {
            return Err(HeaderError::TooLarge);
        }
        self.strings.extend_from_slice(name);
        self.strings.push(b':');
        self.strings.extend_from_slice(value);
        self.strings.push(0);
        self.prefix
            .extend_from_slice(&ByteOrder::NATIVE.put_u16(entry as u16));
        self.count += 1;
        Ok(())
    }

    /// Total RESP_HEADER packet length so far.
    pub fn total_len(&self) -> usize {
        self.prefix.len() + self.strings.len()
    }

    /// Fills in the packet header, count and status. Call after the last push.
    ///
    /// A response with no header at all gets one, the CGI `Status` line
    /// with the same code: OpenLiteSpeed completes a response header only
    /// when it carries at least one line (without, it answers 500 "Premature
    /// end of response header"), and it consumes `Status` rather than
    /// forwarding it.
    pub fn finish(&mut self, status: u16) {
        if self.count == 0 {
            let mut digits = [0u8; 5];
            let mut n = status;
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            // A token name and a short value into an empty head: never refused.
            let pushed = self.push(b"Status", &digits[at..]);
            debug_assert!(pushed.is_ok());
        }
        let order = ByteOrder::NATIVE;
        let len = self.total_len();
        self.prefix[..HEADER_LEN].copy_from_slice(&PacketHeader::encode(
            PacketType::RespHeader,
            order,
            len,
        ));
        self.prefix[8..12].copy_from_slice(&order.put_i32(self.count as i32));
        self.prefix[12..16].copy_from_slice(&order.put_i32(i32::from(status)));
    }

    /// First piece of the packet: header, count, status, lengths.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Second piece of the packet: the `Name:value\0` strings.
    pub fn strings(&self) -> &[u8] {
        &self.strings
    }
}

/// Header of a RESP_STREAM packet carrying `payload` bytes (≤ 16384).
#[inline]
pub fn stream_header(payload: usize) -> [u8; HEADER_LEN] {
    debug_assert!(payload <= MAX_STREAM_PAYLOAD);
    PacketHeader::encode(
        PacketType::RespStream,
        ByteOrder::NATIVE,
        HEADER_LEN + payload,
    )
}

/// Header of a STDERR_STREAM packet carrying `payload` bytes (≤ 16384).
#[inline]
pub fn stderr_header(payload: usize) -> [u8; HEADER_LEN] {
    debug_assert!(payload <= MAX_STREAM_PAYLOAD);
    PacketHeader::encode(
        PacketType::StderrStream,
        ByteOrder::NATIVE,
        HEADER_LEN + payload,
    )
}

/// An empty packet of the given type (RESP_END, CONN_CLOSE, REQ_RECEIVED, …).
#[inline]
pub fn empty_packet(kind: PacketType) -> [u8; HEADER_LEN] {
    PacketHeader::encode(kind, ByteOrder::NATIVE, HEADER_LEN)
}

/// The `\0PID` notice a forked child sends first on its connection: a
/// STDERR_STREAM whose payload is `\0PID` and the pid as a native int32.
pub fn pid_notice(pid: i32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&stderr_header(8));
    p[8..12].copy_from_slice(b"\0PID");
    p[12..].copy_from_slice(&pid.to_ne_bytes());
    p
}

/// Number of RESP_STREAM packets needed for `len` body bytes.
#[inline]
pub fn stream_packet_count(len: usize) -> usize {
    len.div_ceil(MAX_STREAM_PAYLOAD)
}
