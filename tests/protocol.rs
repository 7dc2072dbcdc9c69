//! The pure protocol layer, end to end without a worker: every parser rule,
//! builder → parser round trips (fixed and random), robustness against
//! truncated and corrupted packets, and response framing.

use lswsgi::lsapi::build::{decode_resp_header, RequestSpec};
use lswsgi::lsapi::request::{FIXED_LEN, HEADER_INDEX_LEN, UNKNOWN_ENTRY_LEN};
use lswsgi::lsapi::response::stream_packet_count;
use lswsgi::lsapi::response::{empty_packet, pid_notice, stderr_header, stream_header};
use lswsgi::lsapi::{
    known_header_slot, ByteOrder, EnvListKind, Error, HeaderError, PacketHeader, PacketType,
    Request, ResponseHead, HEADER_LEN, KNOWN_HEADERS, MAX_PACKET_LEN, MAX_RESP_HEADERS,
    SLOT_CONTENT_LENGTH,
};

const ORDERS: [ByteOrder; 2] = [ByteOrder::Little, ByteOrder::Big];

// Byte positions of the nine int32 fields after the packet header.
const F_HTTP_HEADER_LEN: usize = 8;
const F_BODY_LEN: usize = 12;
const F_SCRIPT_FILE: usize = 16;
const F_SCRIPT_NAME: usize = 20;
const F_QUERY_STRING: usize = 24;
const F_METHOD: usize = 28;
const F_CNT_UNKNOWN: usize = 32;
const F_CNT_ENV: usize = 36;
const F_CNT_SPECIAL: usize = 40;

fn get_i32(p: &[u8], at: usize, o: ByteOrder) -> i32 {
    o.i32(p[at..at + 4].try_into().unwrap())
}

fn set_i32(p: &mut [u8], at: usize, o: ByteOrder, v: i32) {
    p[at..at + 4].copy_from_slice(&o.put_i32(v));
}

fn set_u16(p: &mut [u8], at: usize, o: ByteOrder, v: u16) {
    p[at..at + 2].copy_from_slice(&o.put_u16(v));
}

/// Rewrites the packet header's length field to the buffer's length.
fn fix_len(p: &mut [u8], o: ByteOrder) {
    let n = p.len() as i32;
    set_i32(p, 4, o, n);
}

/// Where the known-header index, the unknown table and the header block start,
/// computed backwards from the fields of a valid packet.
struct Layout {
    index: usize,
    unknown: usize,
    block: usize,
    block_len: usize,
}

fn layout(p: &[u8], o: ByteOrder) -> Layout {
    let block_len = get_i32(p, F_HTTP_HEADER_LEN, o) as usize;
    let cnt_unknown = get_i32(p, F_CNT_UNKNOWN, o) as usize;
    let block = p.len() - block_len;
    let unknown = block - cnt_unknown * UNKNOWN_ENTRY_LEN;
    Layout {
        index: unknown - HEADER_INDEX_LEN,
        unknown,
        block,
        block_len,
    }
}

/// Start of env entry `i` of a list starting at `start`.
fn env_entry(p: &[u8], start: usize, i: usize) -> usize {
    let mut at = start;
    for _ in 0..i {
        let k = u16::from_be_bytes([p[at], p[at + 1]]) as usize;
        let v = u16::from_be_bytes([p[at + 2], p[at + 3]]) as usize;
        at += 4 + k + v;
    }
    at
}

/// Start of the env list: after the special list and its terminator.
fn env_start(p: &[u8], o: ByteOrder) -> usize {
    let cnt_special = get_i32(p, F_CNT_SPECIAL, o) as usize;
    env_entry(p, FIXED_LEN, cnt_special) + 4
}

/// A request that uses every part of the packet: a special env entry, script,
/// path info, query, known headers, an unknown header, a repeated known
/// header, and a body.
fn sample_spec(order: ByteOrder) -> RequestSpec {
    let mut s = RequestSpec::new("POST", "/app/extra/path?x=1&y=2", "/srv/app.wsgi", "/app");
    s.order = order;
    s.special_env
        .push((b"SPECIAL_KEY".to_vec(), b"special value".to_vec()));
    s.set_env("HTTPS", "on");
    s.header("Accept", "text/html")
        .header("Cookie", "a=1")
        .header("X-Custom", "custom value")
        .header("Cookie", "b=2")
        .body(5);
    s
}

fn sample(order: ByteOrder) -> Vec<u8> {
    sample_spec(order).encode().unwrap()
}

/// Names each variant; the exhaustive match makes a new variant a compile
/// error here until a case for it is added below.
fn rule(e: &Error) -> &'static str {
    match e {
        Error::BadMagic(_) => "BadMagic",
        Error::BadPacketLength(_) => "BadPacketLength",
        Error::PacketTooLarge(_) => "PacketTooLarge",
        Error::NotBeginRequest(_) => "NotBeginRequest",
        Error::FixedFieldsTruncated(_) => "FixedFieldsTruncated",
        Error::LengthMismatch { .. } => "LengthMismatch",
        Error::NegativeHeaderLen(_) => "NegativeHeaderLen",
        Error::BadBodyLength(_) => "BadBodyLength",
        Error::BadCount { .. } => "BadCount",
        Error::StringOffsetOutOfRange(_) => "StringOffsetOutOfRange",
        Error::StringNotTerminated(_) => "StringNotTerminated",
        Error::EnvEntryTruncated(..) => "EnvEntryTruncated",
        Error::EnvZeroLength(..) => "EnvZeroLength",
        Error::EnvMissingNul(..) => "EnvMissingNul",
        Error::EnvListNotTerminated(_) => "EnvListNotTerminated",
        Error::HeaderIndexTruncated => "HeaderIndexTruncated",
        Error::KnownHeaderOutOfRange(_) => "KnownHeaderOutOfRange",
        Error::UnknownTableTruncated => "UnknownTableTruncated",
        Error::UnknownHeaderOutOfRange(_) => "UnknownHeaderOutOfRange",
        Error::HeaderBlockMismatch { .. } => "HeaderBlockMismatch",
        Error::BadContentLength => "BadContentLength",
    }
}

const RULE_COUNT: usize = 21;

/// One corrupted packet and the error it must produce.
struct Case {
    what: &'static str,
    packet: Vec<u8>,
    want: Error,
}

/// Builds the sample packet in order `o`, applies `corrupt`, records the case.
fn case(
    cases: &mut Vec<Case>,
    o: ByteOrder,
    what: &'static str,
    want: Error,
    corrupt: impl FnOnce(&mut Vec<u8>),
) {
    let mut packet = sample(o);
    corrupt(&mut packet);
    cases.push(Case { what, packet, want });
}

/// Every rule of the parser, each broken by changing one field or byte of a
/// valid packet (or by truncating it and fixing the length field).
fn error_cases(o: ByteOrder) -> Vec<Case> {
    use EnvListKind::{Env, Special};
    let base = sample(o);
    let n = base.len();
    let lay = layout(&base, o);
    let env0 = env_start(&base, o);
    let mut c = Vec::new();

    case(&mut c, o, "magic byte 0", Error::BadMagic(*b"XS"), |p| {
        p[0] = b'X'
    });
    case(&mut c, o, "magic byte 1", Error::BadMagic(*b"Lx"), |p| {
        p[1] = b'x'
    });
    case(&mut c, o, "length 7", Error::BadPacketLength(7), |p| {
        set_i32(p, 4, o, 7)
    });
    case(&mut c, o, "length -1", Error::BadPacketLength(-1), |p| {
        set_i32(p, 4, o, -1)
    });
    case(
        &mut c,
        o,
        "length 65536",
        Error::PacketTooLarge(65536),
        |p| set_i32(p, 4, o, 65536),
    );
    case(
        &mut c,
        o,
        "type RESP_HEADER",
        Error::NotBeginRequest(3),
        |p| p[2] = 3,
    );
    case(&mut c, o, "type 0", Error::NotBeginRequest(0), |p| p[2] = 0);
    case(&mut c, o, "5 bytes", Error::FixedFieldsTruncated(5), |p| {
        p.truncate(5)
    });
    case(&mut c, o, "empty", Error::FixedFieldsTruncated(0), |p| {
        p.clear()
    });
    case(
        &mut c,
        o,
        "40-byte packet",
        Error::FixedFieldsTruncated(40),
        |p| {
            p.truncate(40);
            fix_len(p, o);
        },
    );
    let mismatch = |actual| Error::LengthMismatch {
        declared: n,
        actual,
    };
    case(&mut c, o, "one byte extra", mismatch(n + 1), |p| p.push(0));
    case(&mut c, o, "one byte short", mismatch(n - 1), |p| {
        p.truncate(n - 1)
    });
    case(
        &mut c,
        o,
        "httpHeaderLen -1",
        Error::NegativeHeaderLen(-1),
        |p| set_i32(p, F_HTTP_HEADER_LEN, o, -1),
    );
    for v in [-1, -3, i32::MIN] {
        case(&mut c, o, "reqBodyLen", Error::BadBodyLength(v), |p| {
            set_i32(p, F_BODY_LEN, o, v)
        });
    }
    for (at, field, value) in [
        (F_CNT_UNKNOWN, "cntUnknownHeaders", -1),
        (F_CNT_UNKNOWN, "cntUnknownHeaders", 4096),
        (F_CNT_ENV, "cntEnv", -1),
        (F_CNT_ENV, "cntEnv", 8193),
        (F_CNT_SPECIAL, "cntSpecialEnv", -1),
        (F_CNT_SPECIAL, "cntSpecialEnv", 8193),
    ] {
        case(&mut c, o, "count", Error::BadCount { field, value }, |p| {
            set_i32(p, at, o, value)
        });
    }
    for (at, field, value) in [
        (F_SCRIPT_FILE, "scriptFileOff", 43),
        (F_SCRIPT_NAME, "scriptNameOff", n as i32),
        (F_QUERY_STRING, "queryStringOff", i32::MAX),
        (F_METHOD, "requestMethodOff", -5),
    ] {
        let want = Error::StringOffsetOutOfRange(field);
        case(&mut c, o, "string offset", want, |p| {
            set_i32(p, at, o, value)
        });
    }
    // The packet ends with the header block's CRLF: no NUL after its last byte.
    let want = Error::StringNotTerminated("queryStringOff");
    case(&mut c, o, "string at last byte", want, |p| {
        set_i32(p, F_QUERY_STRING, o, n as i32 - 1)
    });

    let want = Error::EnvEntryTruncated(Special, 0);
    case(&mut c, o, "special key length 0xffff", want, |p| {
        p[FIXED_LEN..FIXED_LEN + 2].copy_from_slice(&[0xff, 0xff])
    });
    let e3 = env_entry(&base, env0, 3);
    let want = Error::EnvEntryTruncated(Env, 3);
    case(&mut c, o, "env value length 0xffff", want, |p| {
        p[e3 + 2..e3 + 4].copy_from_slice(&[0xff, 0xff])
    });
    let want = Error::EnvZeroLength(Special, 0);
    case(&mut c, o, "special key length 0", want, |p| {
        p[FIXED_LEN..FIXED_LEN + 2].copy_from_slice(&[0, 0])
    });
    let e2 = env_entry(&base, env0, 2);
    let want = Error::EnvZeroLength(Env, 2);
    case(&mut c, o, "env value length 0", want, |p| {
        p[e2 + 2..e2 + 4].copy_from_slice(&[0, 0])
    });
    // Entry 0 is REMOTE_ADDR, which no offset field points at.
    let key_len = u16::from_be_bytes([base[env0], base[env0 + 1]]) as usize;
    let val_len = u16::from_be_bytes([base[env0 + 2], base[env0 + 3]]) as usize;
    let want = Error::EnvMissingNul(Env, 0);
    case(&mut c, o, "env key NUL", want, |p| {
        p[env0 + 3 + key_len] = b'X'
    });
    case(&mut c, o, "env value NUL", want, |p| {
        p[env0 + 3 + key_len + val_len] = b'X'
    });
    let want = Error::EnvMissingNul(Special, 0);
    case(&mut c, o, "special key NUL", want, |p| {
        let k = u16::from_be_bytes([p[FIXED_LEN], p[FIXED_LEN + 1]]) as usize;
        p[FIXED_LEN + 3 + k] = b'X';
    });
    let want = Error::EnvListNotTerminated(Special);
    case(&mut c, o, "cntSpecialEnv one short", want, |p| {
        set_i32(p, F_CNT_SPECIAL, o, 0)
    });
    let cnt_env = get_i32(&base, F_CNT_ENV, o);
    let want = Error::EnvListNotTerminated(Env);
    case(&mut c, o, "cntEnv one short", want, |p| {
        set_i32(p, F_CNT_ENV, o, cnt_env - 1)
    });
    let env_end = env_entry(&base, env0, cnt_env as usize);
    case(&mut c, o, "env terminator", want, |p| p[env_end + 3] = 1);

    case(
        &mut c,
        o,
        "cut in index",
        Error::HeaderIndexTruncated,
        |p| {
            p.truncate(lay.index + 100);
            fix_len(p, o);
        },
    );
    let want = Error::KnownHeaderOutOfRange(0);
    case(&mut c, o, "Accept length 0xffff", want, |p| {
        set_u16(p, lay.index, o, 0xffff)
    });
    let pragma = known_header_slot(b"Pragma").unwrap();
    let want = Error::KnownHeaderOutOfRange(pragma);
    case(&mut c, o, "Pragma past the block", want, |p| {
        set_i32(p, lay.index + 52 + 4 * pragma, o, lay.block_len as i32 + 1)
    });
    case(&mut c, o, "Pragma offset -1", want, |p| {
        set_i32(p, lay.index + 52 + 4 * pragma, o, -1)
    });
    case(
        &mut c,
        o,
        "4095 unknown",
        Error::UnknownTableTruncated,
        |p| set_i32(p, F_CNT_UNKNOWN, o, 4095),
    );
    case(
        &mut c,
        o,
        "cut in table",
        Error::UnknownTableTruncated,
        |p| {
            p.truncate(lay.unknown + 8);
            fix_len(p, o);
            set_i32(p, F_HTTP_HEADER_LEN, o, 0);
        },
    );
    let u1 = lay.unknown + UNKNOWN_ENTRY_LEN;
    for (at, v) in [
        (lay.unknown + 4, 0),
        (lay.unknown, -1),
        (lay.unknown + 8, lay.block_len as i32),
        (lay.unknown + 12, -1),
    ] {
        let want = Error::UnknownHeaderOutOfRange(0);
        case(&mut c, o, "unknown 0", want, |p| set_i32(p, at, o, v));
    }
    let want = Error::UnknownHeaderOutOfRange(1);
    case(&mut c, o, "unknown 1 name length", want, |p| {
        set_i32(p, u1 + 4, o, lay.block_len as i32)
    });
    let block_len = lay.block_len as i32;
    for d in [1, -1] {
        let want = Error::HeaderBlockMismatch {
            block_end: (n as i32 + d) as usize,
            packet_end: n,
        };
        case(&mut c, o, "httpHeaderLen", want, |p| {
            set_i32(p, F_HTTP_HEADER_LEN, o, block_len + d)
        });
    }
    assert_eq!(lay.block, n - lay.block_len);

    for content_length in [
        None,
        Some("12x"),
        Some(""),
        Some("-1"),
        Some("12345678901234567890"),
    ] {
        let mut s = sample_spec(o);
        s.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(b"Content-Length"));
        if let Some(v) = content_length {
            s.header("Content-Length", v);
        }
        s.body_len = -2;
        c.push(Case {
            what: "-2 without a usable Content-Length",
            packet: s.encode().unwrap(),
            want: Error::BadContentLength,
        });
    }
    c
}

fn check_error_cases(o: ByteOrder) {
    let mut seen = std::collections::BTreeSet::new();
    assert!(Request::parse(&sample(o)).is_ok());
    for c in error_cases(o) {
        let got = Request::parse(&c.packet).map(|_| ());
        assert_eq!(got, Err(c.want), "{:?}: {}", o, c.what);
        assert!(!c.want.to_string().is_empty());
        seen.insert(rule(&c.want));
    }
    assert_eq!(seen.len(), RULE_COUNT, "rules covered in {o:?}: {seen:?}");
}

#[test]
fn every_error_rule_little_endian() {
    check_error_cases(ByteOrder::Little);
}

#[test]
fn every_error_rule_big_endian() {
    check_error_cases(ByteOrder::Big);
}

#[test]
fn byte_order_flag_is_bit_zero() {
    // Other flag bits do not change the order.
    let mut p = sample(ByteOrder::Little);
    p[3] = 0xfe;
    assert_eq!(Request::parse(&p).unwrap().byte_order(), ByteOrder::Little);
    let mut p = sample(ByteOrder::Big);
    p[3] = 0x81;
    assert_eq!(Request::parse(&p).unwrap().byte_order(), ByteOrder::Big);
    // A big-endian packet read as little-endian is refused, not misread.
    let mut p = sample(ByteOrder::Big);
    p[3] = 0;
    assert!(Request::parse(&p).is_err());
}

#[test]
fn packet_header_decode_and_encode() {
    for o in ORDERS {
        let h = PacketHeader::encode(PacketType::RespStream, o, 1234);
        let d = PacketHeader::decode(&h).unwrap();
        assert_eq!((d.kind, d.order, d.len), (4, o, 1234));
    }
    assert_eq!(PacketType::from_u8(0), None);
    assert_eq!(PacketType::from_u8(10), None);
    for t in 1..=9 {
        assert_eq!(PacketType::from_u8(t).unwrap() as u8, t);
    }
}

// ---------------------------------------------------------------------------
// Round trips

/// The first value of header `name` in `spec` and the headers the unknown
/// table must hold: what the parser has to report for `spec`.
struct Expected {
    known: [Option<Vec<u8>>; 25],
    unknown: Vec<(Vec<u8>, Vec<u8>)>,
    body_len: Option<u64>,
}

fn expected(spec: &RequestSpec) -> Expected {
    let mut known: [Option<Vec<u8>>; 25] = Default::default();
    let mut unknown = Vec::new();
    for (name, value) in &spec.headers {
        match known_header_slot(name) {
            Some(slot) if known[slot].is_none() => known[slot] = Some(value.clone()),
            _ => unknown.push((name.clone(), value.clone())),
        }
    }
    let body_len = if spec.body_len == -2 {
        known[SLOT_CONTENT_LENGTH]
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| v.trim_matches([' ', '\t']))
            // 1 to 19 plain digits (no sign): always fits in a u64.
            .filter(|v| (1..=19).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
    } else {
        Some(spec.body_len as u64)
    };
    Expected {
        known,
        unknown,
        body_len,
    }
}

fn first_env<'a>(list: &'a [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'a [u8]> {
    list.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

/// Encodes `spec`, parses it back, and checks every view against the spec.
fn check_roundtrip(spec: &RequestSpec) {
    let packet = spec.encode().unwrap();
    let want = expected(spec);
    let req = match (Request::parse(&packet), want.body_len) {
        (Ok(r), Some(_)) => r,
        (Err(Error::BadContentLength), None) => return,
        (got, _) => panic!("{:?} for {spec:?}", got.map(|_| ())),
    };
    assert_eq!(req.byte_order(), spec.order);
    assert_eq!(Some(req.body_len()), want.body_len);
    let field = |key: &[u8]| first_env(&spec.env, key).unwrap_or(b"");
    assert_eq!(req.method(), field(b"REQUEST_METHOD"));
    assert_eq!(req.script_filename(), field(b"SCRIPT_FILENAME"));
    assert_eq!(req.script_name(), field(b"SCRIPT_NAME"));
    assert_eq!(req.query_string(), field(b"QUERY_STRING"));

    let env: Vec<_> = req
        .env_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(env, spec.env);
    assert_eq!(req.env_count(), spec.env.len());
    let special: Vec<_> = req
        .special_env_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(special, spec.special_env);
    for (k, _) in &spec.env {
        assert_eq!(req.env(k), first_env(&spec.env, k));
    }
    for (k, _) in &spec.special_env {
        assert_eq!(req.special_env(k), first_env(&spec.special_env, k));
    }
    assert_eq!(req.env(b"NO SUCH KEY"), None);

    for slot in 0..25 {
        assert_eq!(req.header(slot), want.known[slot].as_deref(), "slot {slot}");
    }
    assert_eq!(req.header(25), None);
    let known: Vec<_> = req.known_headers().map(|(s, v)| (s, v.to_vec())).collect();
    let want_known: Vec<_> = (0..25)
        .filter_map(|s| want.known[s].clone().map(|v| (s, v)))
        .collect();
    assert_eq!(known, want_known);
    let unknown: Vec<_> = req
        .unknown_headers()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(unknown, want.unknown);
    assert_eq!(req.unknown_header_count(), want.unknown.len());

    let block = req.header_block();
    assert_eq!(&block[..4], &[0; 4]);
    assert!(block[4..].starts_with(&spec.request_line));
    assert!(block.ends_with(b"\r\n\r\n"));
}

#[test]
fn roundtrip_sample_both_orders() {
    for o in ORDERS {
        let spec = sample_spec(o);
        check_roundtrip(&spec);
        let p = spec.encode().unwrap();
        let r = Request::parse(&p).unwrap();
        assert_eq!(r.method(), b"POST");
        assert_eq!(r.script_filename(), b"/srv/app.wsgi");
        assert_eq!(r.script_name(), b"/app");
        assert_eq!(r.query_string(), b"x=1&y=2");
        assert_eq!(r.env(b"PATH_INFO"), Some(&b"/extra/path"[..]));
        assert_eq!(r.env(b"HTTPS"), Some(&b"on"[..]));
        assert_eq!(r.special_env(b"SPECIAL_KEY"), Some(&b"special value"[..]));
        assert_eq!(r.header(0), Some(&b"text/html"[..]));
        assert_eq!(
            r.header(known_header_slot(b"cookie").unwrap()),
            Some(&b"a=1"[..])
        );
        assert_eq!(r.header(SLOT_CONTENT_LENGTH), Some(&b"5"[..]));
        let unknown: Vec<_> = r.unknown_headers().collect();
        assert_eq!(
            unknown,
            [
                (&b"X-Custom"[..], &b"custom value"[..]),
                (&b"Cookie"[..], &b"b=2"[..])
            ]
        );
        assert_eq!(r.body_len(), 5);
    }
}

#[test]
fn roundtrip_without_optional_parts() {
    for o in ORDERS {
        // No SCRIPT_FILENAME (offset 0), no headers at all, no env at all.
        let mut s = RequestSpec::new("GET", "/", "", "/");
        s.order = o;
        check_roundtrip(&s);
        let p = s.encode().unwrap();
        let r = Request::parse(&p).unwrap();
        assert_eq!(r.script_filename(), b"");
        assert_eq!(r.env(b"PATH_INFO"), None);
        s.headers.clear();
        s.env.clear();
        check_roundtrip(&s);
        let p = s.encode().unwrap();
        let r = Request::parse(&p).unwrap();
        assert_eq!(
            (r.method(), r.env_count(), r.known_headers().count()),
            (&b""[..], 0, 0)
        );
    }
}

#[test]
fn roundtrip_known_header_repeats_and_case() {
    for o in ORDERS {
        let mut s = RequestSpec::new("GET", "/", "", "");
        s.order = o;
        s.headers.clear();
        for (i, name) in KNOWN_HEADERS.iter().enumerate() {
            if i != SLOT_CONTENT_LENGTH {
                s.header(&name.to_ascii_lowercase(), &format!("first {i}"));
                s.header(&name.to_ascii_uppercase(), &format!("second {i}"));
            }
        }
        s.header("Accept", "third");
        check_roundtrip(&s);
        let p = s.encode().unwrap();
        let r = Request::parse(&p).unwrap();
        assert_eq!(r.known_headers().count(), 24);
        assert_eq!(r.unknown_header_count(), 25);
        assert_eq!(r.header(0), Some(&b"first 0"[..]));
        assert_eq!(
            r.unknown_headers().last(),
            Some((&b"Accept"[..], &b"third"[..]))
        );
    }
}

#[test]
fn content_length_minus_two_rule() {
    for o in ORDERS {
        let mut s = sample_spec(o);
        s.body(3_000_000_000);
        assert_eq!(s.body_len, -2);
        check_roundtrip(&s);
        let p = s.encode().unwrap();
        assert_eq!(Request::parse(&p).unwrap().body_len(), 3_000_000_000);

        // Optional whitespace around the digits is allowed; 19 digits fit.
        for (v, want) in [
            (" 42\t", 42),
            ("9999999999999999999", 9_999_999_999_999_999_999),
        ] {
            s.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case(b"Content-Length"));
            s.header("Content-Length", v);
            let p = s.encode().unwrap();
            assert_eq!(Request::parse(&p).unwrap().body_len(), want, "{v:?}");
        }
        // Only the first (indexed) Content-Length counts.
        s.header("Content-Length", "7");
        let p = s.encode().unwrap();
        assert_eq!(
            Request::parse(&p).unwrap().body_len(),
            9_999_999_999_999_999_999
        );

        // A non-negative reqBodyLen wins over Content-Length.
        s.body_len = 11;
        let p = s.encode().unwrap();
        assert_eq!(Request::parse(&p).unwrap().body_len(), 11);
    }
}

#[test]
fn largest_packet_is_accepted() {
    for o in ORDERS {
        let mut s = RequestSpec::new("GET", "/", "", "");
        s.order = o;
        // An env entry adds 4 + key + 1 + value + 1 bytes; pad to exactly 65535
        // (the 8-byte alignment after the env list absorbs up to 7 bytes, so
        // the value is sized from a second measurement).
        s.set_env("FILL", "x");
        let with_one = s.encode().unwrap().len();
        let need = MAX_PACKET_LEN - with_one;
        s.set_env("FILL", &"x".repeat(1 + need));
        let p = s.encode().unwrap();
        assert_eq!(p.len(), MAX_PACKET_LEN);
        check_roundtrip(&s);
        s.set_env("FILL", &"x".repeat(2 + need + 8));
        assert!(s.encode().is_err(), "builder refuses a packet over 65535");
    }
}

// ---------------------------------------------------------------------------
// Random requests

/// xorshift64*: small, deterministic, good enough to spread test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }

    /// `len` bytes, none of them NUL (string fields are NUL-terminated).
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| 1 + (self.next() % 255) as u8).collect()
    }

    fn token(&mut self, len: usize) -> Vec<u8> {
        const T: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~";
        (0..len)
            .map(|_| T[(self.next() % T.len() as u64) as usize])
            .collect()
    }
}

const OFFSET_KEYS: [&str; 4] = [
    "REQUEST_METHOD",
    "SCRIPT_FILENAME",
    "SCRIPT_NAME",
    "QUERY_STRING",
];

/// A random valid request; `scale` bounds the entry counts.
fn random_spec(rng: &mut Rng, scale: usize) -> RequestSpec {
    loop {
        let mut s = RequestSpec::new("GET", "/", "", "");
        s.order = ORDERS[rng.range(0, 1)];
        s.env.clear();
        s.headers.clear();
        for _ in 0..rng.range(0, 3) {
            let (k, v) = (rng.range(1, 300), rng.range(0, 300));
            s.special_env.push((rng.bytes(k), rng.bytes(v)));
        }
        for _ in 0..rng.range(0, scale) {
            let key = if rng.chance(6) {
                OFFSET_KEYS[rng.range(0, 3)].as_bytes().to_vec()
            } else if rng.chance(10) && !s.env.is_empty() {
                s.env[rng.range(0, s.env.len() - 1)].0.clone()
            } else {
                let k = rng.range(1, 300);
                rng.bytes(k)
            };
            let v = rng.range(1, 300);
            s.env.push((key, rng.bytes(v)));
        }
        let l = rng.range(0, 100);
        s.request_line = rng.bytes(l);
        for _ in 0..rng.range(0, scale) {
            let name = if rng.chance(2) {
                let k = KNOWN_HEADERS[rng.range(0, 24)];
                match rng.range(0, 2) {
                    0 => k.as_bytes().to_vec(),
                    1 => k.to_ascii_lowercase().into_bytes(),
                    _ => k.to_ascii_uppercase().into_bytes(),
                }
            } else if rng.chance(8) && !s.headers.is_empty() {
                s.headers[rng.range(0, s.headers.len() - 1)].0.clone()
            } else {
                let n = rng.range(1, 30);
                rng.token(n)
            };
            let v = rng.range(0, 300);
            // Any bytes at all: the parser works on lengths, not delimiters.
            let value = (0..v).map(|_| rng.next() as u8).collect();
            s.headers.push((name, value));
        }
        match rng.range(0, 3) {
            0 => s.body_len = 0,
            1 => {
                s.body(rng.next() % 1_000_000);
            }
            2 => {
                s.body(rng.next() % (1 << 40) + (1 << 31));
            }
            _ => s.body_len = (rng.next() % i32::MAX as u64) as i32,
        }
        if s.encode().is_ok() {
            return s;
        }
    }
}

/// Touches every view of a parsed request; must never panic.
fn walk(r: &Request<'_>) -> usize {
    let mut n = r.body_len() as usize;
    n += r.method().len() + r.script_filename().len();
    n += r.script_name().len() + r.query_string().len();
    for (k, v) in r.env_iter() {
        n += k.len() + v.len();
        n += r.env(k).map_or(0, <[u8]>::len);
    }
    for (k, v) in r.special_env_iter() {
        n += k.len() + v.len();
        n += r.special_env(k).map_or(0, <[u8]>::len);
    }
    assert_eq!(r.env_iter().count(), r.env_count());
    for slot in 0..=25 {
        n += r.header(slot).map_or(0, <[u8]>::len);
    }
    n += r.known_headers().map(|(s, v)| s + v.len()).sum::<usize>();
    n += r
        .unknown_headers()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>();
    assert_eq!(r.unknown_headers().count(), r.unknown_header_count());
    n + r.header_block().len()
}

fn parse_and_walk(p: &[u8]) {
    if let Ok(r) = Request::parse(p) {
        std::hint::black_box(walk(&r));
    }
}

#[test]
fn random_requests_roundtrip() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let s = random_spec(&mut rng, 40);
        check_roundtrip(&s);
    }
}

#[test]
fn random_requests_survive_truncation() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..200 {
        let s = random_spec(&mut rng, 8);
        let p = s.encode().unwrap();
        for cut in 0..p.len() {
            // As sent: the header still declares the full length.
            assert!(Request::parse(&p[..cut]).is_err());
            // Length field fixed up, so the parser looks deeper.
            if cut >= HEADER_LEN {
                let mut q = p[..cut].to_vec();
                fix_len(&mut q, s.order);
                parse_and_walk(&q);
            }
        }
    }
}

#[test]
fn random_requests_survive_byte_flips() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..1000 {
        let s = random_spec(&mut rng, 20);
        let p = s.encode().unwrap();
        for _ in 0..40 {
            let mut q = p.clone();
            for _ in 0..rng.range(1, 4) {
                // Mostly the structural head of the packet, sometimes anywhere.
                let hi = if rng.chance(2) {
                    FIXED_LEN.min(q.len())
                } else {
                    q.len()
                };
                let at = rng.range(0, hi - 1);
                q[at] = match rng.range(0, 3) {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next() as u8,
                };
            }
            parse_and_walk(&q);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let len = rng.range(0, 400);
        let mut q: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Give most inputs a plausible header so they get past the first checks.
        if len >= HEADER_LEN && !rng.chance(4) {
            let o = ORDERS[rng.range(0, 1)];
            q[..HEADER_LEN].copy_from_slice(&PacketHeader::encode(
                PacketType::BeginRequest,
                o,
                len,
            ));
        }
        parse_and_walk(&q);
    }
}

// ---------------------------------------------------------------------------
// Response framing

fn packet_of(head: &ResponseHead) -> Vec<u8> {
    [head.prefix(), head.strings()].concat()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn response_head_roundtrip() {
    let headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2"),
        ("X-Empty", ""),
        ("X-Colon", "a:b:c"),
        ("X-Tab", "a\tb"),
        ("X-Latin1", "caf\u{e9}"),
    ];
    let mut head = ResponseHead::new();
    assert!(head.is_empty());
    for (n, v) in headers {
        head.push(n.as_bytes(), v.as_bytes()).unwrap();
    }
    assert_eq!(head.len(), headers.len());
    head.finish(201);
    let p = packet_of(&head);
    assert_eq!(p.len(), head.total_len());
    let h = PacketHeader::decode(p[..8].try_into().unwrap()).unwrap();
    assert_eq!(h.kind, PacketType::RespHeader as u8);
    assert_eq!(h.order, ByteOrder::NATIVE);
    assert_eq!(h.len, p.len());
    let d = decode_resp_header(h.order, &p[8..]).unwrap();
    assert_eq!(d.status, 201);
    assert_eq!(d.headers, pairs(&headers));

    // Reuse after clear: only the new headers remain.
    head.clear();
    assert!(head.is_empty());
    head.push(b"Location", b"/next").unwrap();
    head.finish(302);
    let p = packet_of(&head);
    let d = decode_resp_header(ByteOrder::NATIVE, &p[8..]).unwrap();
    assert_eq!(
        (d.status, d.headers),
        (302, pairs(&[("Location", "/next")]))
    );

    // No header at all: the CGI Status line, which OpenLiteSpeed needs to
    // complete the response header and does not forward.
    for status in [204u16, 200, 7, 65535] {
        head.clear();
        head.finish(status);
        let d = decode_resp_header(ByteOrder::NATIVE, &packet_of(&head)[8..]).unwrap();
        let code = status.to_string();
        assert_eq!(
            (d.status, d.headers),
            (i32::from(status), pairs(&[("Status", code.as_str())]))
        );
    }
}

#[test]
fn decode_resp_header_big_endian() {
    // Built by hand: count 2, status 404, lengths, then the strings.
    let strings = b"A:1\0Bb:two\0";
    let mut p = Vec::new();
    p.extend_from_slice(&2i32.to_be_bytes());
    p.extend_from_slice(&404i32.to_be_bytes());
    p.extend_from_slice(&4u16.to_be_bytes());
    p.extend_from_slice(&7u16.to_be_bytes());
    p.extend_from_slice(strings);
    let d = decode_resp_header(ByteOrder::Big, &p).unwrap();
    assert_eq!(
        (d.status, d.headers),
        (404, pairs(&[("A", "1"), ("Bb", "two")]))
    );
    // The same bytes read in the wrong order do not fit.
    assert!(decode_resp_header(ByteOrder::Little, &p).is_err());
    // Broken forms are refused.
    assert!(decode_resp_header(ByteOrder::Big, &p[..6]).is_err());
    assert!(decode_resp_header(ByteOrder::Big, &p[..p.len() - 1]).is_err());
    let mut q = p.clone();
    q.push(0);
    assert!(
        decode_resp_header(ByteOrder::Big, &q).is_err(),
        "trailing byte"
    );
    let mut q = p.clone();
    q[13] = b'x'; // "A:1\0" → "Ax1\0": no colon
    assert!(decode_resp_header(ByteOrder::Big, &q).is_err(), "no colon");
}

#[test]
fn response_head_refusals() {
    let mut head = ResponseHead::new();
    head.push(b"X-Ok", b"fine").unwrap();
    let before = (head.len(), head.total_len());
    let mut refused = |name: &[u8], value: &[u8], want: HeaderError| {
        assert_eq!(head.push(name, value), Err(want), "{name:?}: {value:?}");
        assert_eq!((head.len(), head.total_len()), before, "nothing appended");
    };
    for b in [b'\r', b'\n', 0] {
        refused(b"X-Bad", &[b'a', b, b'b'], HeaderError::BadValueByte(b));
        refused(b"X-Bad", &[b], HeaderError::BadValueByte(b));
    }
    for b in [b'\r', b'\n', 0, b':', b' ', b'\t', b'(', b'@', 0x7f, 0xe9] {
        refused(&[b'X', b, b'Y'], b"v", HeaderError::BadNameByte(b));
    }
    refused(b"", b"v", HeaderError::EmptyName);
    refused(b"", b"", HeaderError::EmptyName);
    // A refused header leaves the head usable.
    head.finish(200);
    let d = decode_resp_header(ByteOrder::NATIVE, &packet_of(&head)[8..]).unwrap();
    assert_eq!(d.headers, pairs(&[("X-Ok", "fine")]));
}

#[test]
fn response_head_limits() {
    let mut head = ResponseHead::new();
    for i in 0..MAX_RESP_HEADERS {
        head.push(format!("H{i}").as_bytes(), b"v").unwrap();
    }
    assert_eq!(head.push(b"One-Too-Many", b"v"), Err(HeaderError::TooMany));
    assert_eq!(head.len(), MAX_RESP_HEADERS);
    head.finish(200);
    let d = decode_resp_header(ByteOrder::NATIVE, &packet_of(&head)[8..]).unwrap();
    assert_eq!(d.headers.len(), MAX_RESP_HEADERS);

    // 16 fixed bytes + 2 length bytes + "X:" + value + NUL = 65535 exactly.
    let fit = MAX_PACKET_LEN - 16 - 2 - 3;
    let mut head = ResponseHead::new();
    assert_eq!(
        head.push(b"X", &vec![b'v'; fit + 1]),
        Err(HeaderError::TooLarge)
    );
    assert_eq!((head.len(), head.total_len()), (0, 16));
    head.push(b"X", &vec![b'v'; fit]).unwrap();
    assert_eq!(head.total_len(), MAX_PACKET_LEN);
    assert_eq!(head.push(b"Y", b""), Err(HeaderError::TooLarge));
    head.finish(200);
    let p = packet_of(&head);
    assert_eq!(p.len(), MAX_PACKET_LEN);
    let d = decode_resp_header(ByteOrder::NATIVE, &p[8..]).unwrap();
    assert_eq!(d.headers[0].1.len(), fit);
    for e in [
        HeaderError::EmptyName,
        HeaderError::BadNameByte(b':'),
        HeaderError::BadValueByte(b'\n'),
        HeaderError::TooMany,
        HeaderError::TooLarge,
    ] {
        assert!(!e.to_string().is_empty());
    }
}

fn native_len(len: usize) -> [u8; 4] {
    ByteOrder::NATIVE.put_i32(len as i32)
}

fn header_bytes(kind: u8, len: usize) -> Vec<u8> {
    let mut h = vec![b'L', b'S', kind, ByteOrder::NATIVE.flags()];
    h.extend_from_slice(&native_len(len));
    h
}

#[test]
fn fixed_packet_layouts() {
    assert_eq!(stream_header(0).to_vec(), header_bytes(4, 8));
    assert_eq!(stream_header(16384).to_vec(), header_bytes(4, 16392));
    assert_eq!(stderr_header(100).to_vec(), header_bytes(6, 108));
    for (kind, byte) in [
        (PacketType::RespEnd, 5),
        (PacketType::ConnClose, 8),
        (PacketType::ReqReceived, 7),
    ] {
        assert_eq!(empty_packet(kind).to_vec(), header_bytes(byte, 8));
    }
    let n = pid_notice(0x0102_0304);
    let mut want = header_bytes(6, 16);
    want.extend_from_slice(b"\0PID");
    want.extend_from_slice(&0x0102_0304i32.to_ne_bytes());
    assert_eq!(n.to_vec(), want);
    assert_eq!(
        [0, 1, 16384, 16385, 3 * 16384].map(stream_packet_count),
        [0, 1, 1, 2, 3]
    );
}
