//! The LSAPI wire format, as LiteSpeed Web Server speaks it to an application.
//!
//! Pure and I/O-free: this module turns bytes into borrowed views and views into
//! bytes. It never allocates on the request path (parsing a BEGIN_REQUEST packet
//! borrows from the caller's buffer; response framing writes into buffers the
//! caller owns and reuses). Every count, length and offset read from the wire is
//! checked before it is used, so no input can cause a panic or an out-of-bounds
//! read; a broken rule is reported as an [`Error`] naming it.
//!
//! Integers in a packet use the byte order flagged in its header; the env-entry
//! lengths are always big-endian.

pub mod build;
pub mod request;
pub mod response;

use std::fmt;

pub use request::{EnvIter, Request, UnknownHeaderIter};
pub use response::{HeaderError, ResponseHead};

/// Bytes 0 and 1 of every packet.
pub const MAGIC: [u8; 2] = *b"LS";
/// Length of the fixed packet header.
pub const HEADER_LEN: usize = 8;
/// Largest BEGIN_REQUEST packet (and RESP_HEADER packet) the protocol allows.
pub const MAX_PACKET_LEN: usize = 65535;
/// Largest payload of one RESP_STREAM or STDERR_STREAM packet.
pub const MAX_STREAM_PAYLOAD: usize = 16384;
/// Most response headers the server accepts in one RESP_HEADER.
pub const MAX_RESP_HEADERS: usize = 1000;
/// Most entries in the env list or the special env list.
pub const MAX_ENV_COUNT: usize = 8192;

/// Packet types (byte 2 of the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    /// Server → app: a request (followed on the stream by its raw body).
    BeginRequest = 1,
    /// Server → app: abandon the current request.
    AbortRequest = 2,
    /// App → server: status and headers.
    RespHeader = 3,
    /// App → server: body bytes.
    RespStream = 4,
    /// App → server: the response is complete; the connection stays open.
    RespEnd = 5,
    /// App → server: text for the server's error log (or the `\0PID` notice).
    StderrStream = 6,
    /// App → server: the request was read.
    ReqReceived = 7,
    /// App → server: close this connection.
    ConnClose = 8,
    /// App → server: internal error.
    InternalError = 9,
}

impl PacketType {
    /// The type for a header's type byte, if it is one of the nine defined.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::BeginRequest,
            2 => Self::AbortRequest,
            3 => Self::RespHeader,
            4 => Self::RespStream,
            5 => Self::RespEnd,
            6 => Self::StderrStream,
            7 => Self::ReqReceived,
            8 => Self::ConnClose,
            9 => Self::InternalError,
            _ => return None,
        })
    }
}

/// Byte order of the integers in one packet (header flag bit 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    /// Flag bit 0 clear.
    Little,
    /// Flag bit 0 set.
    Big,
}

impl ByteOrder {
    /// This machine's order: what we send, so the peer swaps only if it must.
    #[cfg(target_endian = "little")]
    pub const NATIVE: ByteOrder = ByteOrder::Little;
    /// This machine's order: what we send, so the peer swaps only if it must.
    #[cfg(target_endian = "big")]
    pub const NATIVE: ByteOrder = ByteOrder::Big;

    /// The order announced by a header's flags byte.
    #[inline]
    pub fn from_flags(flags: u8) -> Self {
        if flags & 1 == 0 {
            ByteOrder::Little
        } else {
            ByteOrder::Big
        }
    }

    /// The flags byte announcing this order.
    #[inline]
    pub fn flags(self) -> u8 {
        match self {
            ByteOrder::Little => 0,
            ByteOrder::Big => 1,
        }
    }

    /// Decodes a 32-bit signed integer.
    #[inline]
    pub fn i32(self, b: [u8; 4]) -> i32 {
        match self {
            ByteOrder::Little => i32::from_le_bytes(b),
            ByteOrder::Big => i32::from_be_bytes(b),
        }
    }

    /// Decodes a 16-bit unsigned integer.
    #[inline]
    pub fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            ByteOrder::Little => u16::from_le_bytes(b),
            ByteOrder::Big => u16::from_be_bytes(b),
        }
    }

    /// Encodes a 32-bit signed integer.
    #[inline]
    pub fn put_i32(self, v: i32) -> [u8; 4] {
        match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        }
    }

    /// Encodes a 16-bit unsigned integer.
    #[inline]
    pub fn put_u16(self, v: u16) -> [u8; 2] {
        match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        }
    }
}

/// A decoded 8-byte packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    /// The raw type byte (see [`PacketType::from_u8`]).
    pub kind: u8,
    /// Byte order of this packet's integers.
    pub order: ByteOrder,
    /// Total packet length in bytes, header included (≥ 8).
    pub len: usize,
}

impl PacketHeader {
    /// Decodes and checks a header: magic, and a total length of at least 8.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, Error> {
        if b[0..2] != MAGIC {
            return Err(Error::BadMagic([b[0], b[1]]));
        }
        let order = ByteOrder::from_flags(b[3]);
        let len = order.i32([b[4], b[5], b[6], b[7]]);
        if len < HEADER_LEN as i32 {
            return Err(Error::BadPacketLength(len));
        }
        Ok(PacketHeader {
            kind: b[2],
            order,
            len: len as usize,
        })
    }

    /// Encodes a header; `len` is the total length including these 8 bytes.
    #[inline]
    pub fn encode(kind: PacketType, order: ByteOrder, len: usize) -> [u8; HEADER_LEN] {
        debug_assert!(len >= HEADER_LEN && len <= i32::MAX as usize);
        let l = order.put_i32(len as i32);
        [
            MAGIC[0],
            MAGIC[1],
            kind as u8,
            order.flags(),
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }
}

/// Which of the two env lists of a BEGIN_REQUEST an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvListKind {
    /// The special (server-only) env list.
    Special,
    /// The CGI env list.
    Env,
}

impl fmt::Display for EnvListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnvListKind::Special => "special env",
            EnvListKind::Env => "env",
        })
    }
}

/// A broken rule of the wire format. Each variant names the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The packet does not start with `LS`.
    BadMagic([u8; 2]),
    /// The header's total length is below 8 (or negative).
    BadPacketLength(i32),
    /// A BEGIN_REQUEST longer than 65535 bytes.
    PacketTooLarge(usize),
    /// A packet of another type where a BEGIN_REQUEST was expected.
    NotBeginRequest(u8),
    /// The packet is shorter than its 44 bytes of fixed fields.
    FixedFieldsTruncated(usize),
    /// The buffer handed to the parser is not exactly one packet.
    LengthMismatch {
        /// Length the header declares.
        declared: usize,
        /// Bytes supplied.
        actual: usize,
    },
    /// `httpHeaderLen` is negative.
    NegativeHeaderLen(i32),
    /// `reqBodyLen` is negative and not the `-2` marker.
    BadBodyLength(i32),
    /// A count field is negative or above its limit.
    BadCount {
        /// Field name.
        field: &'static str,
        /// Value read.
        value: i32,
    },
    /// A string offset field points outside the packet.
    StringOffsetOutOfRange(&'static str),
    /// A string offset field points at bytes with no NUL before the packet end.
    StringNotTerminated(&'static str),
    /// An env entry's lengths or bytes run past the packet end.
    EnvEntryTruncated(EnvListKind, usize),
    /// An env entry with a zero key length or zero value length.
    EnvZeroLength(EnvListKind, usize),
    /// An env key or value whose last byte is not NUL.
    EnvMissingNul(EnvListKind, usize),
    /// An env list not followed by its 4 zero bytes.
    EnvListNotTerminated(EnvListKind),
    /// The 152-byte known-header index runs past the packet end.
    HeaderIndexTruncated,
    /// A known header's offset or length falls outside the header block.
    KnownHeaderOutOfRange(usize),
    /// The unknown-header table runs past the packet end.
    UnknownTableTruncated,
    /// An unknown header's name or value falls outside the header block.
    UnknownHeaderOutOfRange(usize),
    /// The header block does not end exactly at the packet end.
    HeaderBlockMismatch {
        /// Where the block would end.
        block_end: usize,
        /// Where the packet ends.
        packet_end: usize,
    },
    /// `reqBodyLen` is `-2` but there is no usable Content-Length header.
    BadContentLength,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::BadMagic(m) => write!(f, "bad packet magic {:02x}{:02x}", m[0], m[1]),
            Error::BadPacketLength(l) => write!(f, "packet length {l} is below 8"),
            Error::PacketTooLarge(l) => write!(f, "request packet of {l} bytes exceeds 65535"),
            Error::NotBeginRequest(t) => write!(f, "packet type {t} where BEGIN_REQUEST expected"),
            Error::FixedFieldsTruncated(l) => {
                write!(
                    f,
                    "request packet of {l} bytes is shorter than its 44-byte head"
                )
            }
            Error::LengthMismatch { declared, actual } => {
                write!(
                    f,
                    "packet declares {declared} bytes but {actual} were given"
                )
            }
            Error::NegativeHeaderLen(v) => write!(f, "negative httpHeaderLen {v}"),
            Error::BadBodyLength(v) => write!(f, "invalid reqBodyLen {v}"),
            Error::BadCount { field, value } => write!(f, "invalid {field} {value}"),
            Error::StringOffsetOutOfRange(field) => write!(f, "{field} points outside the packet"),
            Error::StringNotTerminated(field) => write!(f, "{field} string has no NUL terminator"),
            Error::EnvEntryTruncated(list, i) => {
                write!(f, "{list} entry {i} runs past the packet end")
            }
            Error::EnvZeroLength(list, i) => write!(f, "{list} entry {i} has a zero length"),
            Error::EnvMissingNul(list, i) => {
                write!(f, "{list} entry {i} key or value lacks its NUL")
            }
            Error::EnvListNotTerminated(list) => {
                write!(f, "{list} list lacks its 4-byte zero terminator")
            }
            Error::HeaderIndexTruncated => {
                f.write_str("known-header index runs past the packet end")
            }
            Error::KnownHeaderOutOfRange(slot) => {
                write!(
                    f,
                    "known header slot {slot} points outside the header block"
                )
            }
            Error::UnknownTableTruncated => {
                f.write_str("unknown-header table runs past the packet end")
            }
            Error::UnknownHeaderOutOfRange(i) => {
                write!(f, "unknown header {i} points outside the header block")
            }
            Error::HeaderBlockMismatch {
                block_end,
                packet_end,
            } => write!(
                f,
                "header block ends at {block_end}, packet at {packet_end}"
            ),
            Error::BadContentLength => {
                f.write_str("body length -2 without a valid Content-Length header")
            }
        }
    }
}

impl std::error::Error for Error {}

/// How many headers LiteSpeed indexes by slot (the known headers).
pub const KNOWN_HEADER_COUNT: usize = 25;

/// The 25 headers LiteSpeed indexes by slot, in slot order (HTTP spelling).
pub const KNOWN_HEADERS: [&str; KNOWN_HEADER_COUNT] = [
    "Accept",
    "Accept-Charset",
    "Accept-Encoding",
    "Accept-Language",
    "Authorization",
    "Connection",
    "Content-Type",
    "Content-Length",
    "Cookie",
    "Cookie2",
    "Host",
    "Pragma",
    "Referer",
    "User-Agent",
    "Cache-Control",
    "If-Modified-Since",
    "If-Match",
    "If-None-Match",
    "If-Range",
    "If-Unmodified-Since",
    "Keep-Alive",
    "Range",
    "X-Forwarded-For",
    "Via",
    "Transfer-Encoding",
];

/// CGI variable names of the known headers, by slot.
pub const KNOWN_HEADER_CGI: [&str; KNOWN_HEADER_COUNT] = [
    "HTTP_ACCEPT",
    "HTTP_ACCEPT_CHARSET",
    "HTTP_ACCEPT_ENCODING",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_AUTHORIZATION",
    "HTTP_CONNECTION",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_COOKIE",
    "HTTP_COOKIE2",
    "HTTP_HOST",
    "HTTP_PRAGMA",
    "HTTP_REFERER",
    "HTTP_USER_AGENT",
    "HTTP_CACHE_CONTROL",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_RANGE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_KEEP_ALIVE",
    "HTTP_RANGE",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_VIA",
    "HTTP_TRANSFER_ENCODING",
];

/// Slot of Content-Length in the known-header index.
pub const SLOT_CONTENT_LENGTH: usize = 7;
/// Slot of Cookie in the known-header index.
pub const SLOT_COOKIE: usize = 8;
/// Slot of Host in the known-header index.
pub const SLOT_HOST: usize = 10;

/// The known-header slot of an HTTP header name (ASCII case-insensitive).
pub fn known_header_slot(name: &[u8]) -> Option<usize> {
    KNOWN_HEADERS
        .iter()
        .position(|k| k.as_bytes().eq_ignore_ascii_case(name))
}
