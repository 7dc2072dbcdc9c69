//! Parse benchmark: a typical BEGIN_REQUEST (20 env entries, 10 headers)
//! parsed and walked in a loop.
//!
//! Reports the median time per request over several rounds, and counts heap
//! allocations during the loop with a counting global allocator: the parser
//! borrows from the packet, so the count must be 0.
//!
//! Run with `cargo bench --bench parse`.

use lswsgi::lsapi::build::RequestSpec;
use lswsgi::lsapi::Request;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts every allocation (and reallocation) passed on to the system allocator.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    /// # Safety
    /// The caller keeps GlobalAlloc::alloc's contract (a non-zero-size `layout`).
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is System.alloc's.
        unsafe { System.alloc(layout) }
    }

    /// # Safety
    /// As [`Counting::alloc`].
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is System.alloc_zeroed's.
        unsafe { System.alloc_zeroed(layout) }
    }

    /// # Safety
    /// `ptr` came from this allocator with `layout`; `new_size` is non-zero
    /// and does not overflow when rounded to `layout`'s alignment.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: every block this allocator hands out is System's, so the
        // caller's contract is System.realloc's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    /// # Safety
    /// `ptr` came from this allocator with `layout`.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in realloc: the block is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ITERATIONS: u32 = 2_000_000;
const ROUNDS: usize = 7;

/// A request as OpenLiteSpeed sends it for a browser's GET to a WSGI app.
fn typical_request() -> RequestSpec {
    let mut spec = RequestSpec::new(
        "GET",
        "/app/articles/2024/lsapi?page=2&sort=date",
        "/home/user/app/app.wsgi",
        "/app",
    );
    spec.set_env("HTTPS", "on")
        .set_env("DOCUMENT_ROOT", "/home/user/public_html")
        .set_env("WSGIApplicationGroup", "%{GLOBAL}")
        .set_env("WSGICallableObject", "application")
        .set_env("WSGIScriptReloading", "ON")
        .set_env("LSWS_EDITION", "Openlitespeed 1.7.19");
    spec.header(
        "Accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    )
    .header("Accept-Encoding", "gzip, deflate, br")
    .header("Accept-Language", "en-GB,en;q=0.7,de;q=0.3")
    .header(
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    )
    .header(
        "Cookie",
        "sessionid=8f2a0c1e9b7d4c3a; csrftoken=Qm9vZ2x5; theme=dark",
    )
    .header("Referer", "https://example.com/app/articles/2024")
    .header("Connection", "keep-alive")
    .header("Upgrade-Insecure-Requests", "1")
    .header("Sec-Fetch-Mode", "navigate");
    spec
}

/// Parses one packet and touches every env entry and header, so the work
/// measured is what building an environ needs.
#[inline(never)]
fn parse_and_walk(packet: &[u8]) -> usize {
    let req = Request::parse(packet).expect("valid packet");
    let mut n = req.method().len() + req.query_string().len() + req.body_len() as usize;
    for (k, v) in req.env_iter() {
        n += k.len() + v.len();
    }
    for (slot, v) in req.known_headers() {
        n += slot + v.len();
    }
    for (k, v) in req.unknown_headers() {
        n += k.len() + v.len();
    }
    n
}

fn main() {
    let spec = typical_request();
    let packet = spec.encode().expect("encodable request");
    let req = Request::parse(&packet).expect("valid packet");
    let env = req.env_count();
    let headers = req.known_headers().count() + req.unknown_header_count();
    assert_eq!(
        (env, headers),
        (20, 10),
        "the request shape this bench reports"
    );

    let mut ns_per_request = Vec::with_capacity(ROUNDS);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..ITERATIONS {
            black_box(parse_and_walk(black_box(&packet)));
        }
        let ns = started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
        ns_per_request.push(ns);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    ns_per_request.sort_by(f64::total_cmp);
    let median = ns_per_request[ROUNDS / 2];
    println!(
        "parse: {env} env, {headers} headers ({} bytes): {median:.1} ns/request \
         (median of {ROUNDS} rounds of {ITERATIONS}), {allocations} allocations",
        packet.len()
    );
    assert_eq!(allocations, 0, "the request parser must not allocate");
}
