//! The immortalized preloaded heap (LSAPI_IMMORTALIZE, CPython 3.12/3.13):
//! a real ProcessGroup parent preloads tests/apps/immortal/app.py with `-m`,
//! and its children report, from Python, whether the parent's objects are
//! immortal, and use, mutate and drop them. On 3.11 and earlier the same
//! tests check that nothing is immortalized and everything behaves as before.

mod common;

use common::*;
use lswsgi::client::Client;
use lswsgi::lsapi::build::RequestSpec;
use std::time::Duration;

/// Whether the Python this worker embeds has immortal objects.
fn has_immortal() -> bool {
    matches!(env!("LSWSGI_PYTHON_VERSION"), "3.12" | "3.13")
}

fn preload_app() -> String {
    app("immortal/app.py")
}

/// A ProcessGroup parent with the test app preloaded and `env` added.
fn group(env: &[(&str, &str)]) -> Worker {
    let mut all = vec![("LSAPI_CHILDREN", "4")];
    all.extend_from_slice(env);
    Worker::start(&["-m", &preload_app()], &all)
}

/// `key=value` lines of one answer to `path`.
fn ask(c: &mut Client, path: &str) -> Vec<(String, String)> {
    let r = call_ok(c, &RequestSpec::new("GET", path, "", ""), b"");
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let pairs: Vec<(String, String)> = r
        .text()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let python = value(&pairs, "python");
    assert_eq!(python, env!("LSWSGI_PYTHON_VERSION"), "the embedded Python");
    pairs
}

fn value(pairs: &[(String, String)], key: &str) -> String {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key} in {pairs:?}"))
}

/// Every `immortal_*` probe of /state, and the refcount of a fresh object.
fn immortal_probes(pairs: &[(String, String)]) -> Vec<(String, bool)> {
    pairs
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("immortal_")?.to_string(), v == "1")))
        .collect()
}

#[test]
fn preloaded_objects_are_immortal_in_children_and_stay_usable() {
    let w = group(&[]);
    let mut c = w.connect();
    let s = ask(&mut c, "/state");
    let child = value(&s, "pid");
    assert_ne!(child, value(&s, "loaded_in"), "served by a forked child");
    let probes = immortal_probes(&s);
    assert!(probes.len() >= 12, "{probes:?}");
    for (name, immortal) in &probes {
        assert_eq!(
            *immortal,
            has_immortal(),
            "{name} (Python {})",
            env!("LSWSGI_PYTHON_VERSION")
        );
    }
    let refcnt: u64 = value(&s, "refcnt_shared").parse().unwrap();
    if has_immortal() {
        assert_eq!(refcnt, 0xFFFF_FFFF);
        assert!(w.wait_log("immortalized ", Duration::from_secs(5)));
    } else {
        assert!(refcnt < 100, "{refcnt}");
        assert!(w
            .log_text()
            .contains("heap not immortalized: this Python has no immortal"));
    }
    // Objects the child makes itself stay mortal everywhere.
    let fresh: u64 = value(&s, "refcnt_new").parse().unwrap();
    assert!(fresh < 10, "{fresh}");

    // Used and mutated: the child's changes are its own and persist.
    for n in 1..=3 {
        let m = ask(&mut c, "/mutate");
        assert_eq!(value(&m, "pid"), child, "one connection, one child");
        assert_eq!(value(&m, "items"), (100 + n).to_string());
        assert_eq!(value(&m, "counter"), n.to_string());
        assert_eq!(value(&m, "first"), format!("item-0{}", "!".repeat(n)));
    }
    // Another child starts from the parent's untouched objects.
    let mut c2 = w.connect();
    let other = ask(&mut c2, "/mutate");
    if value(&other, "pid") != child {
        assert_eq!(value(&other, "items"), "101");
        assert_eq!(value(&other, "counter"), "1");
    }

    // A child's own objects are finalized as usual.
    let f = ask(&mut c, "/fresh");
    assert_eq!(value(&f, "events"), "del-child");

    // Dropped: an immortal object is never freed, so neither its __del__
    // nor the callback of a weak reference to it runs; a mortal one's do.
    let d = ask(&mut c, "/drop");
    if has_immortal() {
        assert_eq!(value(&d, "events"), "del-child");
        assert_eq!(value(&d, "weak_alive"), "1");
    } else {
        let events = value(&d, "events");
        for e in ["del-preloaded", "del-weak-target", "weakref-callback"] {
            assert!(events.contains(e), "{events}");
        }
        assert_eq!(value(&d, "weak_alive"), "0");
    }
    // Dropped state is really gone from the child's view; the next request
    // still serves.
    let again = ask(&mut c, "/state");
    assert_eq!(value(&again, "pid"), child);
}

#[test]
fn unfreeze_and_full_collections_in_a_child_are_harmless() {
    let w = group(&[]);
    let mut c = w.connect();
    for _ in 0..3 {
        let g = ask(&mut c, "/gc");
        assert_eq!(value(&g, "frozen_after_unfreeze"), "0");
        // A collection moves every immortal object it meets back into the
        // permanent generation (CPython 3.12+), so unfreezing undoes nothing.
        let refrozen: u64 = value(&g, "frozen_after_collect").parse().unwrap();
        if has_immortal() {
            assert!(refrozen > 1000, "{refrozen}");
        } else {
            assert_eq!(refrozen, 0);
        }
        assert!(value(&g, "sum").parse::<u64>().unwrap() > 0);
        let s = ask(&mut c, "/state");
        // Unfreezing moves objects back into the collected generations; the
        // immortal ones are never found unreachable, so never freed.
        for (name, immortal) in immortal_probes(&s) {
            assert_eq!(immortal, has_immortal(), "{name}");
        }
        ask(&mut c, "/mutate");
    }
}

#[test]
fn a_preloaded_module_reloaded_in_a_child_is_mortal_and_current() {
    let w = group(&[]);
    let mut c = w.connect();
    let s = ask(&mut c, "/state");
    let child = value(&s, "pid");
    for _ in 0..2 {
        let r = ask(&mut c, "/reload");
        assert_eq!(value(&r, "reloaded_in"), child, "re-run in the child");
        assert_eq!(value(&r, "lookup"), "7");
        // The module object is the parent's (immortal where supported); the
        // table the reload built is the child's own and mortal.
        assert_eq!(
            value(&r, "immortal_module"),
            (has_immortal() as u8).to_string()
        );
        assert_eq!(value(&r, "immortal_table"), "0");
    }
}

#[test]
fn switch_off_keeps_normal_reference_counts() {
    let w = group(&[("LSAPI_IMMORTALIZE", "0")]);
    let mut c = w.connect();
    let s = ask(&mut c, "/state");
    for (name, immortal) in immortal_probes(&s) {
        // Objects CPython itself makes immortal (small ints, interned
        // strings) are not among the probes.
        assert!(!immortal, "{name} with LSAPI_IMMORTALIZE=0");
    }
    let refcnt: u64 = value(&s, "refcnt_shared").parse().unwrap();
    assert!(refcnt < 100, "{refcnt}");
    let d = ask(&mut c, "/drop");
    assert!(value(&d, "events").contains("del-preloaded"));
    assert!(w.wait_log(
        "heap not immortalized: LSAPI_IMMORTALIZE=0",
        Duration::from_secs(5)
    ));
}

/// Private memory (kB) of `pid`: Private_Clean + Private_Dirty.
fn uss_kb(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// USS growth (kB) of the child that serves `path`, in a group started with
/// `env` and `LSAPI_IMMORTALIZE=immortalize`: what the request copied.
fn copied_by(immortalize: &str, env: &[(&str, &str)], path: &str) -> u64 {
    let mut all = vec![("LSAPI_IMMORTALIZE", immortalize)];
    all.extend_from_slice(env);
    let w = group(&all);
    let mut c = w.connect();
    let pid: u32 = value(&ask(&mut c, "/state"), "pid").parse().unwrap();
    let before = uss_kb(pid);
    ask(&mut c, path);
    let after = uss_kb(pid);
    after.saturating_sub(before)
}

/// [`copied_by`] with the switch off and on; asserts that a mortal heap is
/// copied (more than `floor` kB) and an immortal one far less (3.12/3.13),
/// or as much (nothing is done before 3.12).
fn copies_only_when_mortal(what: &str, env: &[(&str, &str)], path: &str, floor: u64) {
    let off = copied_by("0", env, path);
    let on = copied_by("1", env, path);
    eprintln!("USS growth {what}: off {off} kB, on {on} kB");
    assert!(off > floor, "a mortal heap is copied {what}: {off} kB");
    if has_immortal() {
        assert!(on < off / 4, "immortal: {on} kB vs {off} kB");
    } else {
        assert!(on > floor, "nothing immortal before 3.12: {on} kB");
    }
}

#[test]
fn reading_preloaded_objects_copies_no_pages_when_immortal() {
    // 200 000 strings of ~60 bytes: ~12 MB whose reference counts a mortal
    // heap writes on every read, copying each page in the child.
    copies_only_when_mortal(
        "reading 200000 preloaded strings",
        &[("IMMORTAL_TEST_BULK", "200000")],
        "/touch",
        8000,
    );
}

#[test]
fn hashing_preloaded_strings_copies_no_pages_when_immortal() {
    // The same strings, hashed: a str caches its hash in its header, so
    // hashing writes each one once unless the parent did.
    copies_only_when_mortal(
        "hashing 200000 preloaded strings",
        &[("IMMORTAL_TEST_BULK", "200000")],
        "/hash",
        8000,
    );
}

#[test]
fn looking_up_changed_preloaded_classes_copies_no_pages_when_immortal() {
    // 4 000 classes of ~1 kB, each changed after its creation: the first
    // lookup in a child gives each a new version tag unless the parent did.
    copies_only_when_mortal(
        "looking up 4000 changed preloaded classes",
        &[("IMMORTAL_TEST_CLASSES", "4000")],
        "/classes",
        2000,
    );
}

/// The parent's children, from /proc.
fn children_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
}

/// USS growth (kB) of a group parent while its one child (one connection, so
/// one child is forked) serves `path`, the parent having loaded with `env`:
/// each parent page the child writes becomes the parent's own, so the growth
/// is what the child copied. Measured again should the group's children
/// change meanwhile (a child leaving leaves the parent alone with the pages
/// they shared, which is no copy).
fn parent_pages_copied_by(immortalize: &str, env: &[(&str, &str)], path: &str) -> u64 {
    let mut all = vec![("LSAPI_CHILDREN", "2"), ("LSAPI_IMMORTALIZE", immortalize)];
    all.extend_from_slice(env);
    for _attempt in 0..3 {
        let w = Worker::start(&["-m", &preload_app()], &all);
        let mut c = w.connect();
        ask(&mut c, "/state");
        // The parent may still be finishing its own work after the fork.
        let mut before = uss_kb(w.pid());
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            let now = uss_kb(w.pid());
            if std::mem::replace(&mut before, now) == now {
                break;
            }
        }
        let kids = children_of(w.pid());
        let kept = value(&ask(&mut c, path), "kept");
        assert_ne!(kept, "0");
        let growth = uss_kb(w.pid()).saturating_sub(before);
        if children_of(w.pid()) == kids {
            return growth;
        }
    }
    panic!("the group's children kept changing while {path} was measured");
}

#[test]
fn new_objects_in_a_child_do_not_land_in_the_parents_free_blocks() {
    if !has_immortal() {
        // Nothing is taken there. (Nor would this child copy much: with the
        // 8 bytes larger str header of those versions, its strings fall in
        // the next size class, not in the 64-byte blocks freed.)
        let w = group(&[("IMMORTAL_TEST_SPARSE", "1000")]);
        ask(&mut w.connect(), "/state");
        assert!(w.wait_log("heap not immortalized", Duration::from_secs(5)));
        assert!(!w.log_text().contains("free object blocks"));
        return;
    }
    let sparse = [("IMMORTAL_TEST_SPARSE", "200000")];
    let off = parent_pages_copied_by("0", &sparse, "/alloc");
    let on = parent_pages_copied_by("1", &sparse, "/alloc");
    eprintln!("parent pages copied by a child allocating 100000 strings: off {off} kB, on {on} kB");
    // 100 000 blocks of 64 bytes, one in every second block: ~12 MB of pages.
    assert!(off > 8000, "the parent's free blocks are reused: {off} kB");
    assert!(on < off / 4, "free blocks taken: {on} kB vs {off} kB");
}

#[test]
fn names_only_the_attribute_cache_held_are_not_freed_in_children() {
    // The parent's attribute cache ends up holding a few thousand names of 97
    // characters that nothing else holds; a child's lookups replace them,
    // freeing each one on the parent's pages, unless the parent cleared the
    // cache. (Either way the child fills the cache itself: ~100 kB of the
    // interpreter's data, copied.)
    let names = [("IMMORTAL_TEST_CACHE_NAMES", "20000")];
    let off = parent_pages_copied_by("0", &names, "/names");
    let on = parent_pages_copied_by("1", &names, "/names");
    eprintln!(
        "parent pages copied by a child replacing the attribute cache: off {off} kB, on {on} kB"
    );
    assert!(off > 300, "the names are freed in the child: {off} kB");
    if has_immortal() {
        assert!(on < off / 3, "the cache cleared: {on} kB vs {off} kB");
    }
}

#[test]
fn new_large_objects_in_a_child_do_not_land_in_the_parents_free_chunks() {
    let holes = [("IMMORTAL_TEST_HOLES", "10000")];
    if !has_immortal() {
        let w = group(&holes);
        ask(&mut w.connect(), "/state");
        assert!(w.wait_log("heap not immortalized", Duration::from_secs(5)));
        assert!(!w.log_text().contains("free malloc chunks"));
        return;
    }
    let off = parent_pages_copied_by("0", &holes, "/bigalloc");
    let on = parent_pages_copied_by("1", &holes, "/bigalloc");
    eprintln!(
        "parent pages copied by a child allocating 5000 objects of 2 kB: off {off} kB, on {on} kB"
    );
    // 5 000 free chunks of 2 kB between live ones: ~10 MB of pages.
    assert!(off > 6000, "the parent's free chunks are reused: {off} kB");
    assert!(on < off / 4, "free chunks taken: {on} kB vs {off} kB");
}

#[test]
fn application_groups_and_script_reloading_in_children_stay_mortal() {
    let dir = scratch("immortal-groups");
    let script = dir.join("s.wsgi");
    let version = |v: u32| {
        format!(
            "import os, sys, gc\n\
             EVENTS = []\n\
             class D:\n    def __del__(self): EVENTS.append('del')\n\
             def application(environ, start_response):\n\
             \x20   D(); gc.collect()\n\
             \x20   body = 'v{v} pid=%d os=%d events=%s' % (os.getpid(), sys.getrefcount(os) >= 0xFFFFFFFF, ','.join(EVENTS))\n\
             \x20   start_response('200 OK', [])\n\
             \x20   return [body.encode()]\n"
        )
    };
    std::fs::write(&script, version(1)).unwrap();
    // No -m: the parent holds only what start-up imported (os among it).
    let w = Worker::start(&[], &[("LSAPI_CHILDREN", "2")]);
    let mut c = w.connect();
    let spec = |group: Option<&str>| {
        let mut s = RequestSpec::new("GET", "/s.wsgi", script.to_str().unwrap(), "/s.wsgi");
        s.set_env("WSGIScriptReloading", "On");
        if let Some(g) = group {
            s.set_env("WSGIApplicationGroup", g);
        }
        s
    };
    let text = |c: &mut Client, group: Option<&str>| {
        let r = call_ok(c, &spec(group), b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.stderr));
        r.text()
    };
    let imm = has_immortal() as u8;
    // Main interpreter: the parent's os module is immortal; the script's
    // objects are the child's own and finalized.
    let main = text(&mut c, None);
    assert!(main.starts_with("v1 "), "{main}");
    assert!(main.contains(&format!("os={imm} events=del")), "{main}");
    // A sub-interpreter imports its own os: mortal, whatever the Python.
    let sub = text(&mut c, Some("grp"));
    assert!(sub.contains("os=0 events=del"), "{sub}");
    let sub = text(&mut c, Some("grp"));
    assert!(sub.contains("os=0 events=del,del"), "{sub}");
    // A rewritten script is reloaded in both.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&script, version(2)).unwrap();
    let t = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&script)
        .unwrap()
        .set_modified(t)
        .unwrap();
    let main2 = text(&mut c, None);
    assert!(main2.starts_with("v2 "), "{main2}");
    assert!(main2.contains(&format!("os={imm} events=del")), "{main2}");
    let sub2 = text(&mut c, Some("grp"));
    assert!(
        sub2.starts_with("v2 ") && sub2.contains("os=0 events=del"),
        "{sub2}"
    );
}

#[test]
fn the_parent_exits_cleanly_after_immortalizing() {
    let mut w = group(&[]);
    let mut c = w.connect();
    ask(&mut c, "/mutate");
    ask(&mut c, "/gc");
    drop(c);
    if has_immortal() {
        assert!(w.wait_log("immortalized ", Duration::from_secs(5)));
    }
    let status = w.spawned.stop(Duration::from_secs(20)).unwrap();
    let log = w.log_text();
    assert!(status.success(), "parent exit {status:?}; log:\n{log}");
    assert!(log.contains("process group stopped: signal 15"), "{log}");
    for bad in [
        "Fatal Python error",
        "Segmentation",
        "Traceback",
        "panicked",
    ] {
        assert!(!log.contains(bad), "{bad} in:\n{log}");
    }
}
