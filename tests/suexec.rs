//! suEXEC daemon mode and the never-as-root rule (LSAPI.md section 7).
//! These tests must run as root, as CI does; as another user they fail.

mod common;

use common::*;
use lswsgi::lsapi::build::RequestSpec;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WHOAMI: &str = "\
import os
def application(environ, start_response):
    status = open('/proc/self/status').read()
    ids = [l.split()[1:3] for l in status.splitlines() if l.startswith(('Uid:', 'Gid:'))]
    body = '%d %d %s %s|%s' % (os.getuid(), os.getgid(), ids[0][1], ids[1][1],
                               ','.join(map(str, sorted(os.getgroups()))))
    start_response('200 OK', [])
    return [body.encode()]
";

fn require_root() {
    // SAFETY: no arguments.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the suEXEC tests must run as root (as CI does)"
    );
}

/// A scratch directory readable by every user, with the app and a secret.
fn setup(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(tag);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = dir.join("whoami.wsgi");
    std::fs::write(&app, WHOAMI).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, b"a shared secret of 32 bytes here").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, app, secret)
}

/// The special env LiteSpeed sends for `uid:gid`, signed with `secret`.
fn identity(uid: i32, gid: i32, secret: &[u8], forge: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    use md5::{Digest, Md5};
    let mut ugid = uid.to_ne_bytes().to_vec();
    ugid.extend_from_slice(&gid.to_ne_bytes());
    let nonce: Vec<u8> = (0u8..16).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    let mut h = Md5::new();
    h.update(&nonce);
    h.update(&secret[..16]);
    h.update(&ugid);
    let mut auth = nonce.clone();
    auth.extend_from_slice(&h.finalize());
    if forge {
        auth[31] ^= 0x80;
    }
    vec![
        (b"\0SUEXEC_UGID".to_vec(), ugid),
        (b"\0SUEXEC_AUTH".to_vec(), auth),
    ]
}

fn whoami(app: &Path, special: Vec<(Vec<u8>, Vec<u8>)>) -> RequestSpec {
    let mut spec = RequestSpec::new("GET", "/w.wsgi", app.to_str().unwrap(), "/w.wsgi");
    spec.special_env = special;
    spec
}

fn proc_ids(pid: i32) -> (String, String) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    (field("Uid:"), field("Gid:"))
}

#[test]
fn daemon_children_run_as_the_authenticated_user() {
    require_root();
    let (dir, app, secret) = setup("suexec");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "3"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LSAPI_DEFAULT_UID", "4444"),
            ("LSAPI_DEFAULT_GID", "4445"),
        ],
    );
    assert!(w.wait_log("suEXEC daemon mode", Duration::from_secs(10)));
    // The parent stays root.
    assert_eq!(proc_ids(w.pid() as i32).0, "0");

    // An authentic identity: the child really becomes 4321:4322.
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &whoami(&app, identity(4321, 4322, &secret_bytes, false)),
        b"",
    );
    assert_eq!(r.text(), "4321 4322 4321 4322|4322", "{}", w.log_text());
    let child = r.pid.expect("PID notice from the child");
    assert_eq!(proc_ids(child), ("4321".into(), "4322".into()));
    // Later requests on that connection stay that user; another user's
    // identity on it is refused and the child leaves.
    let r = call_ok(
        &mut c,
        &whoami(&app, identity(4321, 4322, &secret_bytes, false)),
        b"",
    );
    assert!(r.text().starts_with("4321 4322"));
    let r = c
        .call(
            &whoami(&app, identity(5000, 5000, &secret_bytes, false)),
            b"",
        )
        .unwrap();
    // Refused on that connection: the client (as LiteSpeed) sends it again
    // over a new connection, where a new child serves it as that user.
    assert!(
        r.status != 200 || r.pid.is_some_and(|p| p != child),
        "served by the 4321 child: {r:?}"
    );
    assert!(w.wait_log("on a connection serving 4321:4322", Duration::from_secs(5)));
    drop(c);

    // A forged AUTH falls back to the default user, never root.
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &whoami(&app, identity(4321, 4322, &secret_bytes, true)),
        b"",
    );
    assert_eq!(r.text(), "4444 4445 4444 4445|4445");
    assert!(w.wait_log("failed authentication", Duration::from_secs(5)));
    drop(c);
    // A request signed with another secret, and one with no identity at all.
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &whoami(
            &app,
            identity(4321, 4322, b"some other secret value!", false),
        ),
        b"",
    );
    assert!(r.text().starts_with("4444 4445"));
    drop(c);
    let mut c = w.connect();
    let r = call_ok(&mut c, &whoami(&app, Vec::new()), b"");
    assert!(r.text().starts_with("4444 4445"));
    // Root itself can never be requested.
    drop(c);
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &whoami(&app, identity(0, 0, &secret_bytes, false)),
        b"",
    );
    assert!(r.text().starts_with("4444 4445"), "{}", r.text());
    drop(c);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn preloaded_apps_are_never_run_by_the_root_parent() {
    require_root();
    let (dir, _, secret) = setup("suexec-m");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let startup = dir.join("startup.py");
    std::fs::write(
        &startup,
        "import os\nLOADED_BY = os.getuid()\n\
         def application(environ, start_response):\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [('%d %d' % (LOADED_BY, os.getuid())).encode()]\n",
    )
    .unwrap();
    std::fs::set_permissions(&startup, std::fs::Permissions::from_mode(0o644)).unwrap();
    let w = Worker::start(
        &["-m", startup.to_str().unwrap()],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
        ],
    );
    let mut c = w.connect();
    let mut spec = RequestSpec::new("GET", "/", "", "/");
    spec.special_env = identity(4321, 4322, &secret_bytes, false);
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.text(), "4321 4321", "loaded as root? {}", w.log_text());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn root_without_a_secret_drops_to_the_default_user() {
    require_root();
    let (dir, app, _) = setup("suexec-drop");
    let w = Worker::start(
        &[],
        &[("LSAPI_DEFAULT_UID", "4321"), ("LSAPI_DEFAULT_GID", "4322")],
    );
    let mut c = w.connect();
    let r = call_ok(&mut c, &whoami(&app, Vec::new()), b"");
    assert_eq!(r.text(), "4321 4322 4321 4322|4322", "{}", w.log_text());
    assert_eq!(proc_ids(w.pid() as i32), ("4321".into(), "4322".into()));
    assert!(w
        .log_text()
        .contains("started as root; serving as 4321:4322"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unsafe_secrets_and_root_defaults_refuse_to_start() {
    require_root();
    let (dir, _, secret) = setup("suexec-refuse");
    let run = |env: &[(&str, &str)]| {
        let mut w = Worker::start(&[], env);
        for _ in 0..200 {
            if !w.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(!w.alive(), "the worker started anyway: {}", w.log_text());
        let status = w.spawned.child.wait().unwrap();
        (status.code(), w.log_text())
    };
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, log) = run(&[
        ("LSAPI_CHILDREN", "2"),
        ("LSAPI_SECRET", secret.to_str().unwrap()),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        log.contains("mode 0644") && log.contains("chmod 600"),
        "{log}"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&secret, b"too short").unwrap();
    let (code, log) = run(&[
        ("LSAPI_CHILDREN", "2"),
        ("LSAPI_SECRET", secret.to_str().unwrap()),
    ]);
    assert_eq!(code, Some(1));
    assert!(log.contains("at least 16"), "{log}");
    // A default user of root is refused: never serve as root.
    let (code, log) = run(&[("LSAPI_DEFAULT_UID", "0"), ("LSAPI_DEFAULT_GID", "0")]);
    assert_eq!(code, Some(1));
    assert!(log.contains("refusing to serve as root"), "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}
