//! mod_wsgi compatibility: application groups (sub-interpreters), script
//! reloading and callable selection, as LiteSpeed passes those directives
//! per request.

mod common;

use common::*;
use lswsgi::client::Client;
use lswsgi::lsapi::build::RequestSpec;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A script that records, in a module shared by every script of its
/// interpreter, which requests it has seen.
const RECORDER: &str = "\
import sys
import sharedmod

def application(environ, start_response):
    sharedmod.seen.append(environ['QUERY_STRING'])
    others = sorted(p for p in sys.path if p.startswith(sharedmod.ROOT + '/'))
    body = '%s|%d|%s' % (','.join(sharedmod.seen), id(sys.modules), ';'.join(others))
    start_response('200 OK', [])
    return [body.encode()]
";

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn request(script: &Path, group: Option<&str>, query: &str) -> RequestSpec {
    let mut spec = RequestSpec::new(
        "GET",
        &format!("/s.wsgi?{query}"),
        script.to_str().unwrap(),
        "/s.wsgi",
    );
    if let Some(g) = group {
        spec.set_env("WSGIApplicationGroup", g);
    }
    spec
}

fn ask(c: &mut Client, spec: &RequestSpec) -> (String, String, String) {
    let r = call_ok(c, spec, b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.stderr));
    let t = r.text();
    let mut it = t.splitn(3, '|');
    (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    )
}

#[test]
fn application_groups_isolate_interpreters() {
    let dir = scratch("groups");
    let (d1, d2) = (dir.join("one"), dir.join("two"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let root = dir.to_str().unwrap();
    write(
        &dir.join("sharedmod.py"),
        &format!("ROOT = {root:?}\nseen = []\n"),
    );
    let (s1, s2) = (d1.join("s.wsgi"), d2.join("s.wsgi"));
    write(&s1, RECORDER);
    write(&s2, RECORDER);
    let w = Worker::start(&[], &[("PYTHONPATH", root)]);
    let mut c = w.connect();

    // Group g1 and group g2 each have their own sharedmod, both ways.
    let (seen, mods_g1, path_g1) = ask(&mut c, &request(&s1, Some("g1"), "a"));
    assert_eq!(seen, "a");
    let (seen, mods_g2, path_g2) = ask(&mut c, &request(&s2, Some("g2"), "b"));
    assert_eq!(seen, "b", "group g2 sees g1's module state");
    let (seen, _, _) = ask(&mut c, &request(&s1, Some("g1"), "c"));
    assert_eq!(seen, "a,c", "group g1 sees g2's module state");
    assert_ne!(mods_g1, mods_g2, "groups share sys.modules");
    // Each interpreter has only its own scripts' directories on sys.path.
    assert_eq!(path_g1, d1.to_str().unwrap());
    assert_eq!(path_g2, d2.to_str().unwrap());
    // The same script in two groups is two copies.
    let (seen, _, _) = ask(&mut c, &request(&s1, Some("g2"), "d"));
    assert_eq!(seen, "b,d");

    // Empty, %{GLOBAL} and global all name the main interpreter.
    let (seen, mods_main, _) = ask(&mut c, &request(&s1, None, "e"));
    assert_eq!(seen, "e");
    let (seen, m2, _) = ask(&mut c, &request(&s2, Some("%{GLOBAL}"), "f"));
    assert_eq!((seen.as_str(), &m2), ("e,f", &mods_main));
    let (seen, m3, path_main) = ask(&mut c, &request(&s1, Some("global"), "g"));
    assert_eq!((seen.as_str(), &m3), ("e,f,g", &mods_main));
    assert_eq!(
        path_main,
        format!("{};{}", d1.to_str().unwrap(), d2.to_str().unwrap())
    );
    assert!(mods_main != mods_g1 && mods_main != mods_g2);
    assert!(w.log_text().contains("application group \"g1\""));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn groups_serve_errors_uploads_and_files_in_their_own_interpreter() {
    // The request objects (input, errors, start_response, write) are made per
    // interpreter: exercise them all inside a sub-interpreter.
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    for group in ["site-a", "site-b"] {
        let mut spec = suite("POST", "/read?style=line");
        spec.set_env("WSGIApplicationGroup", group);
        spec.body(5);
        let r = call_ok(&mut c, &spec, b"ab\ncd");
        assert!(r.text().starts_with("5 "), "{}", r.text());
        let mut spec = suite("GET", "/write");
        spec.set_env("WSGIApplicationGroup", group);
        assert_eq!(call_ok(&mut c, &spec, b"").text(), "hello world!");
        let mut spec = suite("GET", "/errors");
        spec.set_env("WSGIApplicationGroup", group);
        let r = call_ok(&mut c, &spec, b"");
        assert!(String::from_utf8_lossy(&r.stderr).contains("logged through wsgi.errors"));
        let mut spec = suite("GET", "/raise_before");
        spec.set_env("WSGIApplicationGroup", group);
        let r = call_ok(&mut c, &spec, b"");
        assert_eq!(r.status, 500);
        assert!(String::from_utf8_lossy(&r.stderr).contains("failure before headers"));
        let mut spec = suite("GET", "/stats");
        spec.set_env("WSGIApplicationGroup", group);
        let r = call_ok(&mut c, &spec, b"");
        // Each group counts only its own requests (its own copy of the app).
        assert!(
            r.text().contains("\"requests\": 5"),
            "{group}: {}",
            r.text()
        );
    }
}

/// Rewrites `path` with `text` and moves its mtime forward by `secs`, so the
/// change is visible even on file systems with coarse timestamps.
fn rewrite(path: &Path, text: &str, secs: u64) {
    write(path, text);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}

fn versioned(v: u32) -> String {
    format!(
        "import sys\nCOUNT = 0\n\
         def application(environ, start_response):\n\
         \x20   global COUNT\n\
         \x20   COUNT += 1\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [('v{v} %d %d' % (COUNT, id(sys.modules[__name__]))).encode()]\n"
    )
}

#[test]
fn script_reloading_follows_the_directive() {
    let dir = scratch("reload");
    let script = dir.join("r.wsgi");
    write(&script, &versioned(1));
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    let req = |reload: Option<&str>, group: Option<&str>| {
        let mut spec = request(&script, group, "");
        if let Some(r) = reload {
            spec.set_env("WSGIScriptReloading", r);
        }
        spec
    };
    let text = |c: &mut Client, spec: &RequestSpec| call_ok(c, spec, b"").text();

    let first = text(&mut c, &req(Some("On"), None));
    assert!(first.starts_with("v1 1 "));
    assert!(text(&mut c, &req(Some("On"), None)).starts_with("v1 2 "));

    // Reloading off: a rewritten script is not noticed.
    rewrite(&script, &versioned(2), 2);
    assert!(text(&mut c, &req(None, None)).starts_with("v1 3 "));
    assert!(text(&mut c, &req(Some("Off"), None)).starts_with("v1 4 "));

    // Reloading on: the next request runs the new file in a fresh module.
    let second = text(&mut c, &req(Some("ON"), None));
    assert!(second.starts_with("v2 1 "), "{second}");
    assert_ne!(first.split(' ').nth(2), second.split(' ').nth(2));
    assert!(text(&mut c, &req(Some("on"), None)).starts_with("v2 2 "));

    // Inside an application group too.
    assert!(text(&mut c, &req(Some("On"), Some("grp"))).starts_with("v2 1 "));
    rewrite(&script, &versioned(3), 4);
    assert!(text(&mut c, &req(Some("On"), Some("grp"))).starts_with("v3 1 "));
    // A broken rewrite answers 500; fixing it brings the script back.
    rewrite(&script, "def application(:\n", 6);
    let r = call_ok(&mut c, &req(Some("On"), None), b"");
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.stderr).contains("SyntaxError"));
    rewrite(&script, &versioned(4), 8);
    assert!(text(&mut c, &req(Some("On"), None)).starts_with("v4 1 "));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn callable_object_selects_among_exports() {
    let w = Worker::start(&[], &[]);
    let mut c = w.connect();
    for (callable, expect) in [
        (None, "path=/x"),
        (Some("other_app"), "other callable"),
        (Some("application"), "path=/x"),
        (Some(""), "path=/x"),
    ] {
        let mut spec = suite("GET", "/x");
        if let Some(name) = callable {
            spec.set_env("WSGICallableObject", name);
        }
        assert_eq!(call_ok(&mut c, &spec, b"").text(), expect, "{callable:?}");
        // The same callable in another group works too.
        spec.set_env("WSGIApplicationGroup", "other");
        assert_eq!(call_ok(&mut c, &spec, b"").text(), expect, "{callable:?}");
    }
}

/// Sub-interpreters keep the legacy configuration on 3.12+ (shared GIL,
/// threads, single-phase-init extensions allowed), which the C extensions
/// hosted sites run (database drivers, older numpy) need: a single-phase-init
/// module (`_testsinglephase`, or `_testcapi` before 3.12 where every module
/// loads anywhere) imports in two application groups and the main
/// interpreter, and a thread runs in a group.
#[test]
fn subinterpreters_load_single_phase_extensions_and_run_threads() {
    let dir = scratch("singlephase");
    let script = dir.join("s.wsgi");
    write(
        &script,
        "import sys, threading\n\
         name = '_testsinglephase' if sys.version_info >= (3, 12) else '_testcapi'\n\
         mod = __import__(name)\n\
         def application(environ, start_response):\n\
         \x20   out = []\n\
         \x20   t = threading.Thread(target=lambda: out.append(threading.get_ident()))\n\
         \x20   t.start()\n\
         \x20   t.join(5)\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [('%s|%s|%d' % (mod.__name__, len(out), id(sys.modules))).encode()]\n",
    );
    for children in ["0", "2"] {
        let w = Worker::start(&[], &[("LSAPI_CHILDREN", children)]);
        let mut c = w.connect();
        let mut interps = Vec::new();
        for group in [Some("ext1"), Some("ext2"), None] {
            let r = call_ok(&mut c, &request(&script, group, "x"), b"");
            let text = r.text();
            assert_eq!(r.status, 200, "{group:?}: {text} {}", w.log_text());
            let parts: Vec<&str> = text.split('|').collect();
            assert!(parts[0].starts_with("_test"), "{text}");
            assert_eq!(parts[1], "1", "{group:?}: the thread ran");
            interps.push(parts[2].to_string());
        }
        interps.sort();
        interps.dedup();
        assert_eq!(interps.len(), 3, "three interpreters: {interps:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
