//! Arbitrary bytes into `Request::parse`. A parse may fail, but it must never
//! panic, and an accepted packet must be safe to read through every view:
//! the iterators and lookups rely on what parse validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lswsgi::lsapi::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = Request::parse(data) else {
        return;
    };
    let mut n = req.body_len() as usize;
    n += req.method().len() + req.script_filename().len();
    n += req.script_name().len() + req.query_string().len();
    let _ = req.byte_order();

    let mut count = 0;
    for (k, v) in req.env_iter() {
        count += 1;
        n += k.len() + v.len();
        // The first entry with this key exists, so the lookup finds one.
        assert!(req.env(k).is_some());
    }
    assert_eq!(count, req.env_count());
    for (k, v) in req.special_env_iter() {
        n += k.len() + v.len();
        assert!(req.special_env(k).is_some());
    }
    assert_eq!(req.env(b"\xffnot a key"), None);

    for slot in 0..=25 {
        n += req.header(slot).map_or(0, <[u8]>::len);
    }
    assert_eq!(req.header(25), None);
    for (slot, v) in req.known_headers() {
        assert!(slot < 25);
        assert_eq!(req.header(slot), Some(v));
    }
    let mut unknown = 0;
    for (name, value) in req.unknown_headers() {
        unknown += 1;
        assert!(!name.is_empty());
        n += name.len() + value.len();
    }
    assert_eq!(unknown, req.unknown_header_count());
    n += req.header_block().len();
    std::hint::black_box(n);
});
