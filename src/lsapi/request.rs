//! The BEGIN_REQUEST parser: one packet in a buffer → borrowed views.
//!
//! [`Request::parse`] validates the whole packet once (every count, length and
//! offset); afterwards the iterators and lookups walk already-checked bytes and
//! cannot fail. Nothing is allocated: a `Request` is a handful of slices into the
//! caller's buffer.

use super::{
    ByteOrder, EnvListKind, Error, PacketHeader, PacketType, HEADER_LEN, KNOWN_HEADER_COUNT,
    MAX_ENV_COUNT, MAX_PACKET_LEN, SLOT_CONTENT_LENGTH,
};

/// Bytes of the fixed fields: the packet header and nine int32.
pub const FIXED_LEN: usize = HEADER_LEN + 9 * 4;
/// Bytes of the known-header index: 25 u16 lengths, 2 padding, 25 i32 offsets.
pub const HEADER_INDEX_LEN: usize = KNOWN_HEADER_COUNT * 2 + 2 + KNOWN_HEADER_COUNT * 4;
/// Bytes of one unknown-header table entry.
pub const UNKNOWN_ENTRY_LEN: usize = 16;

/// A validated BEGIN_REQUEST packet, as views into the buffer it was parsed from.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    order: ByteOrder,
    body_len: u64,
    method: &'a [u8],
    script_filename: &'a [u8],
    script_name: &'a [u8],
    query_string: &'a [u8],
    special_env: EnvList<'a>,
    env: EnvList<'a>,
    header_index: &'a [u8],
    unknown_table: &'a [u8],
    header_block: &'a [u8],
}

/// A validated env list: `count` entries packed in `bytes`.
#[derive(Clone, Copy, Debug)]
struct EnvList<'a> {
    bytes: &'a [u8],
    count: usize,
}

#[inline]
fn read_i32(order: ByteOrder, buf: &[u8], at: usize) -> i32 {
    order.i32([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

impl<'a> Request<'a> {
    /// Parses `packet`, which must hold exactly one BEGIN_REQUEST packet.
    pub fn parse(packet: &'a [u8]) -> Result<Self, Error> {
        let head: &[u8; HEADER_LEN] = packet
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Error::FixedFieldsTruncated(packet.len()))?;
        let header = PacketHeader::decode(head)?;
        if header.kind != PacketType::BeginRequest as u8 {
            return Err(Error::NotBeginRequest(header.kind));
        }
        if header.len > MAX_PACKET_LEN {
            return Err(Error::PacketTooLarge(header.len));
        }
        if header.len != packet.len() {
            return Err(Error::LengthMismatch {
                declared: header.len,
                actual: packet.len(),
            });
        }
        if packet.len() < FIXED_LEN {
            return Err(Error::FixedFieldsTruncated(packet.len()));
        }
        let order = header.order;
        let field = |i: usize| read_i32(order, packet, HEADER_LEN + 4 * i);
        let http_header_len = field(0);
        let req_body_len = field(1);
        let offsets = [field(2), field(3), field(4), field(5)];
        let count = |value: i32, name: &'static str, max: usize| -> Result<usize, Error> {
            if value < 0 || value as usize > max {
                Err(Error::BadCount { field: name, value })
            } else {
                Ok(value as usize)
            }
        };
        if http_header_len < 0 {
            return Err(Error::NegativeHeaderLen(http_header_len));
        }
        if req_body_len < 0 && req_body_len != -2 {
            return Err(Error::BadBodyLength(req_body_len));
        }
        let cnt_unknown = count(
            field(6),
            "cntUnknownHeaders",
            MAX_PACKET_LEN / UNKNOWN_ENTRY_LEN,
        )?;
        let cnt_env = count(field(7), "cntEnv", MAX_ENV_COUNT)?;
        let cnt_special = count(field(8), "cntSpecialEnv", MAX_ENV_COUNT)?;

        const NAMES: [&str; 4] = [
            "scriptFileOff",
            "scriptNameOff",
            "queryStringOff",
            "requestMethodOff",
        ];
        let mut strings: [&[u8]; 4] = [b""; 4];
        for (i, &off) in offsets.iter().enumerate() {
            strings[i] = c_string_at(packet, off, NAMES[i])?;
        }

        let mut pos = FIXED_LEN;
        let special_env = EnvList::validate(packet, &mut pos, cnt_special, EnvListKind::Special)?;
        let env = EnvList::validate(packet, &mut pos, cnt_env, EnvListKind::Env)?;
        pos = (pos + 7) & !7;

        let header_index = packet
            .get(pos..pos + HEADER_INDEX_LEN)
            .ok_or(Error::HeaderIndexTruncated)?;
        pos += HEADER_INDEX_LEN;
        let unknown_table = packet
            .get(pos..pos + cnt_unknown * UNKNOWN_ENTRY_LEN)
            .ok_or(Error::UnknownTableTruncated)?;
        pos += unknown_table.len();

        let block_len = http_header_len as usize;
        if pos + block_len != packet.len() {
            return Err(Error::HeaderBlockMismatch {
                block_end: pos + block_len,
                packet_end: packet.len(),
            });
        }
        let header_block = &packet[pos..];

        for slot in 0..KNOWN_HEADER_COUNT {
            let (off, len) = index_entry(order, header_index, slot);
            if off != 0 && !span_ok(off, len, block_len) {
                return Err(Error::KnownHeaderOutOfRange(slot));
            }
        }
        for i in 0..cnt_unknown {
            let e = &unknown_table[i * UNKNOWN_ENTRY_LEN..];
            let (name_off, name_len) = (read_i32(order, e, 0), read_i32(order, e, 4));
            let (val_off, val_len) = (read_i32(order, e, 8), read_i32(order, e, 12));
            if name_len <= 0
                || !span_ok(name_off, name_len, block_len)
                || !span_ok(val_off, val_len, block_len)
            {
                return Err(Error::UnknownHeaderOutOfRange(i));
            }
        }

        let mut req = Request {
            order,
            body_len: 0,
            method: strings[3],
            script_filename: strings[0],
            script_name: strings[1],
            query_string: strings[2],
            special_env,
            env,
            header_index,
            unknown_table,
            header_block,
        };
        req.body_len = if req_body_len == -2 {
            req.header(SLOT_CONTENT_LENGTH)
                .and_then(parse_decimal)
                .ok_or(Error::BadContentLength)?
        } else {
            req_body_len as u64
        };
        Ok(req)
    }

    /// Byte order of the packet's integers.
    pub fn byte_order(&self) -> ByteOrder {
        self.order
    }

    /// Request body length in bytes (the `-2` marker already resolved).
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// REQUEST_METHOD, empty if the server sent no offset for it.
    pub fn method(&self) -> &'a [u8] {
        self.method
    }

    /// SCRIPT_FILENAME, empty when there is no real file.
    pub fn script_filename(&self) -> &'a [u8] {
        self.script_filename
    }

    /// SCRIPT_NAME.
    pub fn script_name(&self) -> &'a [u8] {
        self.script_name
    }

    /// QUERY_STRING.
    pub fn query_string(&self) -> &'a [u8] {
        self.query_string
    }

    /// The CGI env list, in wire order.
    pub fn env_iter(&self) -> EnvIter<'a> {
        self.env.iter()
    }

    /// The special (server-only) env list, in wire order.
    pub fn special_env_iter(&self) -> EnvIter<'a> {
        self.special_env.iter()
    }

    /// Number of entries in the env list.
    pub fn env_count(&self) -> usize {
        self.env.count
    }

    /// The first env value named `key` (exact, case-sensitive match).
    pub fn env(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.env.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The first special env value named `key`.
    pub fn special_env(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.special_env
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// The value of known header `slot` (below [`KNOWN_HEADER_COUNT`], see `KNOWN_HEADERS`), if present.
    pub fn header(&self, slot: usize) -> Option<&'a [u8]> {
        if slot >= KNOWN_HEADER_COUNT {
            return None;
        }
        let (off, len) = index_entry(self.order, self.header_index, slot);
        if off == 0 {
            return None;
        }
        // Checked in parse: off + len lies within the block.
        Some(&self.header_block[off as usize..off as usize + len as usize])
    }

    /// The known headers that are present, as `(slot, value)` in slot order.
    pub fn known_headers(&self) -> impl Iterator<Item = (usize, &'a [u8])> + '_ {
        (0..KNOWN_HEADER_COUNT).filter_map(move |slot| self.header(slot).map(|v| (slot, v)))
    }

    /// The unknown-header table: names as sent, repeats of known headers included.
    pub fn unknown_headers(&self) -> UnknownHeaderIter<'a> {
        UnknownHeaderIter {
            order: self.order,
            table: self.unknown_table,
            block: self.header_block,
        }
    }

    /// Number of entries in the unknown-header table.
    pub fn unknown_header_count(&self) -> usize {
        self.unknown_table.len() / UNKNOWN_ENTRY_LEN
    }

    /// The raw HTTP header block (starts with the server's padding and request line).
    pub fn header_block(&self) -> &'a [u8] {
        self.header_block
    }
}

/// `(offset, length)` of a known-header slot, both relative to the header block.
#[inline]
fn index_entry(order: ByteOrder, index: &[u8], slot: usize) -> (i32, i32) {
    let len = order.u16([index[slot * 2], index[slot * 2 + 1]]) as i32;
    let off = read_i32(order, index, 52 + slot * 4);
    (off, len)
}

/// Whether `[off, off+len)` is a non-negative span inside a block of `block_len`.
#[inline]
fn span_ok(off: i32, len: i32, block_len: usize) -> bool {
    off >= 0 && len >= 0 && (off as usize).saturating_add(len as usize) <= block_len
}

/// The NUL-terminated string at `off` (without the NUL); offset 0 means absent.
fn c_string_at<'a>(packet: &'a [u8], off: i32, name: &'static str) -> Result<&'a [u8], Error> {
    if off == 0 {
        return Ok(b"");
    }
    if off < FIXED_LEN as i32 || off as usize >= packet.len() {
        return Err(Error::StringOffsetOutOfRange(name));
    }
    let tail = &packet[off as usize..];
    memchr::memchr(0, tail)
        .map(|n| &tail[..n])
        .ok_or(Error::StringNotTerminated(name))
}

/// Parses an unsigned decimal with optional surrounding spaces or tabs.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

impl<'a> EnvList<'a> {
    /// Checks `count` entries starting at `*pos` plus the 4-byte terminator and
    /// advances `*pos` past them.
    fn validate(
        packet: &'a [u8],
        pos: &mut usize,
        count: usize,
        kind: EnvListKind,
    ) -> Result<Self, Error> {
        let start = *pos;
        let mut p = start;
        for i in 0..count {
            let lens = packet
                .get(p..p + 4)
                .ok_or(Error::EnvEntryTruncated(kind, i))?;
            let key_len = u16::from_be_bytes([lens[0], lens[1]]) as usize;
            let val_len = u16::from_be_bytes([lens[2], lens[3]]) as usize;
            if key_len == 0 || val_len == 0 {
                return Err(Error::EnvZeroLength(kind, i));
            }
            let end = p + 4 + key_len + val_len;
            if end > packet.len() {
                return Err(Error::EnvEntryTruncated(kind, i));
            }
            if packet[p + 3 + key_len] != 0 || packet[end - 1] != 0 {
                return Err(Error::EnvMissingNul(kind, i));
            }
            p = end;
        }
        if packet.get(p..p + 4) != Some(&[0u8; 4][..]) {
            return Err(Error::EnvListNotTerminated(kind));
        }
        *pos = p + 4;
        Ok(EnvList {
            bytes: &packet[start..p],
            count,
        })
    }

    fn iter(&self) -> EnvIter<'a> {
        EnvIter { rest: self.bytes }
    }
}

/// Iterator over a validated env list: `(key, value)` without their NULs.
#[derive(Clone, Debug)]
pub struct EnvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for EnvIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        // The list was validated: every entry is complete and both lengths ≥ 1.
        if self.rest.len() < 4 {
            return None;
        }
        let r = self.rest;
        let key_len = u16::from_be_bytes([r[0], r[1]]) as usize;
        let val_len = u16::from_be_bytes([r[2], r[3]]) as usize;
        let key = &r[4..3 + key_len];
        let value = &r[4 + key_len..3 + key_len + val_len];
        self.rest = &r[4 + key_len + val_len..];
        Some((key, value))
    }
}

/// Iterator over the unknown-header table: `(name, value)` slices of the header block.
#[derive(Clone, Debug)]
pub struct UnknownHeaderIter<'a> {
    order: ByteOrder,
    table: &'a [u8],
    block: &'a [u8],
}

impl<'a> Iterator for UnknownHeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.table.len() < UNKNOWN_ENTRY_LEN {
            return None;
        }
        let e = self.table;
        let o = self.order;
        // Spans were validated in parse.
        let (no, nl) = (read_i32(o, e, 0) as usize, read_i32(o, e, 4) as usize);
        let (vo, vl) = (read_i32(o, e, 8) as usize, read_i32(o, e, 12) as usize);
        self.table = &e[UNKNOWN_ENTRY_LEN..];
        Some((&self.block[no..no + nl], &self.block[vo..vo + vl]))
    }
}
