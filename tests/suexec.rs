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

/// Held for reading by every test here, for writing by the one that
/// plants a tenant-owned file in the build Python's prefix (every daemon
/// refuses to start meanwhile).
static PREFIX: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn require_root() -> std::sync::RwLockReadGuard<'static, ()> {
    assert_eq!(euid(), 0, "the suEXEC tests must run as root (as CI does)");
    PREFIX.read().unwrap_or_else(|e| e.into_inner())
}

/// A scratch directory readable by every user, with the app and a secret.
fn setup(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(tag);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = dir.join("whoami.wsgi");
    std::fs::write(&app, WHOAMI).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (secret, _) = suexec_secret(&dir);
    (dir, app, secret)
}

/// [`suexec_identity`] with a signature that does not match (its last
/// bit flipped).
fn forged_identity(uid: i32, gid: i32, secret: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut special = suexec_identity(uid, gid, secret);
    let auth = &mut special[1].1;
    auth[31] ^= 0x80;
    special
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
    let _shared = require_root();
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
        &whoami(&app, suexec_identity(4321, 4322, &secret_bytes)),
        b"",
    );
    assert_eq!(r.text(), "4321 4322 4321 4322|4322", "{}", w.log_text());
    let child = r.pid.expect("PID notice from the child");
    assert_eq!(proc_ids(child), ("4321".into(), "4322".into()));
    // Later requests on that connection stay that user; another user's
    // identity on it is refused and the child leaves.
    let r = call_ok(
        &mut c,
        &whoami(&app, suexec_identity(4321, 4322, &secret_bytes)),
        b"",
    );
    assert!(r.text().starts_with("4321 4322"));
    let r = c
        .call(
            &whoami(&app, suexec_identity(5000, 5000, &secret_bytes)),
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

    // A request with no identity at all is served as the default user
    // (wrong credentials are refused: see the test below).
    let mut c = w.connect();
    let r = call_ok(&mut c, &whoami(&app, Vec::new()), b"");
    assert!(r.text().starts_with("4444 4445"));
    drop(c);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn preloaded_apps_are_never_run_by_the_root_parent() {
    let _shared = require_root();
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
    spec.special_env = suexec_identity(4321, 4322, &secret_bytes);
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.text(), "4321 4321", "loaded as root? {}", w.log_text());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn root_without_a_secret_drops_to_the_default_user() {
    let _shared = require_root();
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
    let _shared = require_root();
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

/// Writes `text` to `dir/name`, readable by everyone.
fn put(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn chown_r(path: &Path, uid: u32, gid: u32) {
    let st = std::process::Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}"), path.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A tenant app that makes itself dumpable (so it may read its own
/// /proc/self/mem after the user switch) and scans every readable mapping
/// for the secret, given as two 8-byte halves so that the app itself never
/// holds the 16 bytes contiguously. It also plants a marker and counts it,
/// proving that the scan sees the heap at all.
const SCANNER: &str = r#"
import binascii, ctypes, os
def scan(a, b):
    hits = []
    with open('/proc/self/maps') as m:
        maps = m.read().splitlines()
    fd = os.open('/proc/self/mem', os.O_RDONLY)
    for line in maps:
        f = line.split()
        if f[1][0] != 'r' or (len(f) > 5 and f[5] in ('[vvar]', '[vsyscall]', '[vvar_vclock]')):
            continue
        lo, hi = (int(x, 16) for x in f[0].split('-'))
        pos = lo
        while pos < hi:
            n = min(1 << 20, hi - pos)
            try:
                data = os.pread(fd, min(n + 15, hi - pos), pos)
            except OSError:
                break
            i = data.find(a)
            while i >= 0:
                if data.startswith(b, i + 8):
                    hits.append('%x:%s' % (pos + i, f[5] if len(f) > 5 else 'anon'))
                i = data.find(a, i + 1)
            data = None
            pos += n
    os.close(fd)
    return hits
def application(environ, start_response):
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    q = dict(p.split('=') for p in environ['QUERY_STRING'].split('&'))
    a, b = binascii.unhexlify(q['a']), binascii.unhexlify(q['b'])
    marker = bytearray(b'MARKER-X' + b'12345678')
    found = scan(a, b)
    marks = scan(b'MARKER-X', b'12345678')
    start_response('200 OK', [])
    return [('%d %d %s' % (len(found), len(marks), ' '.join(found[:8]))).encode()]
"#;

#[test]
fn no_copy_of_the_secret_survives_into_tenant_code() {
    let _shared = require_root();
    let (dir, _, secret) = setup("suexec-scan");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let app = put(&dir, "scan.wsgi", SCANNER);
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
        ],
    );
    for _ in 0..2 {
        let mut c = w.connect();
        let uri = format!(
            "/scan.wsgi?a={}&b={}",
            hex(&secret_bytes[..8]),
            hex(&secret_bytes[8..16])
        );
        let mut spec = RequestSpec::new("GET", &uri, app.to_str().unwrap(), "/scan.wsgi");
        spec.special_env = suexec_identity(4321, 4322, &secret_bytes);
        let r = call_ok(&mut c, &spec, b"");
        let text = r.text();
        let mut f = text.split(' ');
        let (found, marks) = (f.next().unwrap(), f.next().unwrap());
        assert_ne!(marks, "0", "the scan does not see the heap: {text}");
        assert_eq!(
            found, "0",
            "copies of the secret in the tenant's memory: {text}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wrong_credentials_and_system_ids_are_refused_not_defaulted() {
    let _shared = require_root();
    let (dir, app, secret) = setup("suexec-refusals");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "3"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LSAPI_DEFAULT_UID", "4444"),
            ("LSAPI_DEFAULT_GID", "nogroup"),
        ],
    );
    // A name resolves: nogroup is 65534, not 0.
    let mut c = w.connect();
    let r = call_ok(&mut c, &whoami(&app, Vec::new()), b"");
    assert_eq!(r.text(), "4444 65534 4444 65534|65534", "{}", w.log_text());
    drop(c);
    let refused = |special: Vec<(Vec<u8>, Vec<u8>)>, log: &str| {
        let mut c = w.connect();
        let r = c.call(&whoami(&app, special), b"");
        assert!(
            r.as_ref().map_or(true, |r| r.status != 200),
            "served: {:?}",
            r.map(|r| r.text())
        );
        assert!(w.wait_log(log, Duration::from_secs(5)), "{}", w.log_text());
    };
    // Forged AUTH is refused, not served as the default user.
    refused(
        forged_identity(4321, 4322, &secret_bytes),
        "4321:4322 with failed authentication",
    );
    // UGID without AUTH.
    let mut only_ugid = suexec_identity(4323, 4322, &secret_bytes);
    only_ugid.pop();
    refused(only_ugid, "4323:4322 with malformed suEXEC credentials");
    // Authentic but below the floors (or root's group).
    refused(
        suexec_identity(4321, 0, &secret_bytes),
        "gid 0 is below LSAPI_MIN_GID=10",
    );
    refused(
        suexec_identity(1, 4322, &secret_bytes),
        "uid 1 is below LSAPI_MIN_UID=11",
    );
    refused(suexec_identity(0, 0, &secret_bytes), "uid 0 is below");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Starts a worker expected to refuse to start; returns its exit code and log.
fn refuses_to_start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut w = Worker::start(args, env);
    for _ in 0..200 {
        if !w.alive() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(!w.alive(), "the worker started anyway: {}", w.log_text());
    let status = w.spawned.child.wait().unwrap();
    (status.code(), w.log_text())
}

#[test]
fn tenant_owned_or_linked_secrets_and_bad_defaults_refuse_to_start() {
    let _shared = require_root();
    let (dir, _, secret) = setup("suexec-secret-owner");
    let s = secret.to_str().unwrap();
    // A tenant-owned 0600 file.
    chown_r(&secret, 4321, 4321);
    let (code, log) = refuses_to_start(&[], &[("LSAPI_CHILDREN", "2"), ("LSAPI_SECRET", s)]);
    assert_eq!(code, Some(1));
    assert!(log.contains("owned by uid 4321"), "{log}");
    chown_r(&secret, 0, 0);
    // A symbolic link to the (good) file.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let (code, log) = refuses_to_start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", link.to_str().unwrap()),
        ],
    );
    assert_eq!(code, Some(1));
    assert!(log.contains("symbolic link"), "{log}");
    // Unparsable or floor-breaking defaults.
    for (u, g, msg) in [
        (
            "4321",
            "no-such-group-here",
            "neither a number nor a known group",
        ),
        ("www data", "4321", "neither a number nor a known user"),
        ("4321", "root", "gid 0 is below"),
        ("5", "4321", "uid 5 is below"),
    ] {
        let (code, log) = refuses_to_start(
            &[],
            &[
                ("LSAPI_CHILDREN", "2"),
                ("LSAPI_SECRET", s),
                ("LSAPI_DEFAULT_UID", u),
                ("LSAPI_DEFAULT_GID", g),
            ],
        );
        assert_eq!(code, Some(1), "{u}:{g}");
        assert!(log.contains(msg), "{u}:{g}: {log}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_planted_log_symlink_never_makes_root_write_into_etc() {
    let _shared = require_root();
    let (dir, app, _) = setup("suexec-log");
    let target = format!("/etc/lswsgi-test-planted-{}", std::process::id());
    let _ = std::fs::remove_file(&target);
    let tenant = dir.join("tenant");
    std::fs::create_dir(&tenant).unwrap();
    let log = tenant.join("stderr.log");
    std::os::unix::fs::symlink(&target, &log).unwrap();
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_STDERR_LOG", log.to_str().unwrap()),
            ("LSAPI_DEFAULT_UID", "4321"),
            ("LSAPI_DEFAULT_GID", "4322"),
        ],
    );
    let mut c = w.connect();
    let r = call_ok(&mut c, &whoami(&app, Vec::new()), b"");
    assert!(r.text().starts_with("4321 4322"));
    let created = std::path::Path::new(&target).exists();
    let _ = std::fs::remove_file(&target);
    assert!(!created, "root created {target} through the planted link");
    assert!(
        w.log_text().contains("symbolic link"),
        "no clear refusal: {}",
        w.log_text()
    );
    // A log in a directory anyone may write is refused too.
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let w2 = Worker::start(
        &[],
        &[
            ("LSAPI_STDERR_LOG", open.join("x.log").to_str().unwrap()),
            ("LSAPI_DEFAULT_UID", "4321"),
        ],
    );
    assert!(
        w2.wait_log(
            "only logs in directories that root owns",
            Duration::from_secs(10)
        ),
        "{}",
        w2.log_text()
    );
    assert!(!open.join("x.log").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// A start-up file of a tenant that records the uid it ran as.
fn recorder(record: &Path) -> String {
    format!(
        "import os\nopen({:?}, 'a').write('%d\\n' % os.geteuid())\n",
        record.to_str().unwrap()
    )
}

#[test]
fn tenant_start_up_code_never_runs_as_root() {
    let _shared = require_root();
    let (dir, app, secret) = setup("suexec-pth");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let rec = dir.join("rec");
    std::fs::create_dir(&rec).unwrap();
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o777)).unwrap();
    let record = rec.join("ran");
    // sitecustomize.py on PYTHONPATH, and a .pth in $HOME/.local.
    let home = dir.join("home");
    let pp = home.join("lib");
    put(&pp, "sitecustomize.py", &recorder(&record));
    let (ver, _) = python_build();
    let user_site = home.join(format!(".local/lib/python{ver}/site-packages"));
    put(
        &user_site,
        "evil.pth",
        &format!("import os; {}", recorder(&record).replace('\n', "; ")),
    );
    // A module in a root-owned PYTHONPATH directory (a tenant-owned one is
    // left off sys.path: every account would share it).
    let shared = dir.join("shared-lib");
    put(&shared, "tenantmod.py", "VALUE = 'from PYTHONPATH'\n");
    chown_r(&home, 4321, 4322);
    let probe = put(
        &dir,
        "probe.wsgi",
        "import tenantmod\ndef application(e, sr):\n    sr('200 OK', [])\n    return [tenantmod.VALUE.encode()]\n",
    );
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            (
                "PYTHONPATH",
                &format!("{}:{}", pp.display(), shared.display()),
            ),
            ("HOME", home.to_str().unwrap()),
        ],
    );
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &whoami(&app, suexec_identity(4321, 4322, &secret_bytes)),
        b"",
    );
    assert!(r.text().starts_with("4321 4322"), "{}", w.log_text());
    drop(c);
    // PYTHONPATH still reaches the tenant's own code, after the switch.
    let mut c = w.connect();
    let mut spec = RequestSpec::new("GET", "/p.wsgi", probe.to_str().unwrap(), "/p.wsgi");
    spec.special_env = suexec_identity(4321, 4322, &secret_bytes);
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.text(), "from PYTHONPATH", "{}", w.log_text());
    assert!(
        w.log_text()
            .contains(&format!("PYTHONPATH entry {} (", pp.display())),
        "{}",
        w.log_text()
    );
    let ran = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(
        !ran.lines().any(|l| l == "0"),
        "tenant code ran as root: {ran:?}"
    );
    drop(c);
    drop(w);

    // A virtualenv the tenant owns, as LS_PYTHONBIN: refused, its .pth never runs.
    let (_, exe) = python_build();
    let venv = home.join("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::os::unix::fs::symlink(&exe, venv.join("bin/python")).unwrap();
    let base = Path::new(&exe).parent().unwrap();
    put(
        &venv,
        "pyvenv.cfg",
        &format!(
            "home = {}\ninclude-system-site-packages = false\n",
            base.display()
        ),
    );
    let site = venv.join(format!("lib/python{ver}/site-packages"));
    put(
        &site,
        "evil.pth",
        &format!("import os; {}", recorder(&record).replace('\n', "; ")),
    );
    chown_r(&home, 4321, 4322);
    let _ = std::fs::remove_file(&record);
    let bin = venv.join("bin/python");
    let (code, log) = refuses_to_start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LS_PYTHONBIN", bin.to_str().unwrap()),
        ],
    );
    let ran = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(
        !ran.lines().any(|l| l == "0"),
        "the venv's .pth ran as root: {ran:?}"
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("only starts Python from paths that root owns"),
        "{log}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The embedded Python's version and executable, from `lswsgi -v`.
fn python_build() -> (String, String) {
    let out = std::process::Command::new(LSWSGI)
        .arg("-v")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("Python ")).unwrap();
    let (ver, rest) = line["Python ".len()..].split_once(' ').unwrap();
    let ver: Vec<&str> = ver.split('.').collect();
    let exe = rest.trim_start_matches('(').trim_end_matches(')');
    (format!("{}.{}", ver[0], ver[1]), exe.to_string())
}

/// Effective uid of `pid` (the second field of Uid:).
fn effective_uid(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("Uid:"))?;
    l.split_whitespace().nth(2).map(String::from)
}

fn children_of(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A tenant app reporting what it inherited: its open descriptors, whether
/// the kernel's copy of its environment still shows LSAPI_*, and the pid of
/// a subprocess it leaves behind.
const INHERIT: &str = r#"
import ctypes, os, subprocess
def application(environ, start_response):
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: may read its /proc files
    fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))
    env = open('/proc/self/environ', 'rb').read()
    p = subprocess.Popen(['sleep', '300'])
    start_response('200 OK', [])
    return [('%s|%d|%d' % (','.join(map(str, fds)), b'LSAPI_' in env, p.pid)).encode()]
"#;

#[test]
fn children_inherit_no_descriptors_no_lsapi_env_no_root_and_leave_no_processes() {
    let _shared = require_root();
    let (dir, _, secret) = setup("suexec-inherit");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let app = put(&dir, "inherit.wsgi", INHERIT);
    // A descriptor the starter leaks (no close-on-exec), as fd 57.
    let devnull = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto an unused number; the test keeps it open until the end.
    assert_eq!(unsafe { libc::dup2(devnull.as_raw_fd(), 57) }, 57);
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LSAPI_MAX_REQS", "1"),
        ],
    );
    // SAFETY: closing the number dup2 made above.
    unsafe { libc::close(57) };
    assert!(w.wait_log("suEXEC daemon mode", Duration::from_secs(10)));
    // A connection that has not sent a request: its child is not root.
    let mut c = w.connect();
    let mut waiting = Vec::new();
    for _ in 0..100 {
        waiting = children_of(w.pid());
        if !waiting.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!waiting.is_empty(), "no child forked");
    // Just forked, a child is root for the few instructions before it
    // takes the default user's ids; waiting for its request it is not.
    for pid in &waiting {
        assert!(
            wait_until(Duration::from_secs(2), || effective_uid(*pid).as_deref()
                != Some("0")),
            "child {pid} waits for its first request as root"
        );
    }
    let mut spec = RequestSpec::new("GET", "/i.wsgi", app.to_str().unwrap(), "/i.wsgi");
    spec.special_env = suexec_identity(4321, 4322, &secret_bytes);
    let r = call_ok(&mut c, &spec, b"");
    let text = r.text();
    let parts: Vec<&str> = text.split('|').collect();
    assert_eq!(parts.len(), 3, "{text} {}", w.log_text());
    let fds: Vec<i32> = parts[0].split(',').map(|f| f.parse().unwrap()).collect();
    assert!(
        !fds.contains(&57),
        "the leaked descriptor reached the tenant: {text}"
    );
    assert_eq!(parts[1], "0", "/proc/self/environ shows LSAPI_*: {text}");
    let leftover: i32 = parts[2].parse().unwrap();
    drop(c);
    // The child leaves after its one request; the tenant's sleep goes with it.
    let mut gone = false;
    for _ in 0..150 {
        let stat = std::fs::read_to_string(format!("/proc/{leftover}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        if stat.is_empty() || state == Some("Z") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !gone {
        // SAFETY: the pid is the tenant's sleep, still alive; clean up.
        unsafe { libc::kill(leftover, libc::SIGKILL) };
    }
    assert!(
        gone,
        "the tenant's subprocess {leftover} outlived its child"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A stand-in liblve.so.0: records every call (with the effective uid) to
/// $LVE_STUB_LOG and fails lve_enter for uid 4999.
const LVE_STUB: &str = r#"
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void rec(const char *fmt, ...) {
    const char *path = getenv("LVE_STUB_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (!f) return;
    va_list ap; va_start(ap, fmt); vfprintf(f, fmt, ap); va_end(ap);
    fclose(f);
}
int lve_is_available(void) { rec("is_available euid=%d\n", (int)geteuid()); return 1; }
int lve_instance_init(void *p) { rec("instance_init %s\n", p ? "buf" : "NULL"); return p ? 0 : 128; }
int lve_enter(void *p, uint32_t uid, int32_t a, int32_t b, uint32_t *cookie) {
    rec("enter %u %d %d euid=%d\n", uid, a, b, (int)geteuid());
    if (!p) return -2;
    *cookie = 7;
    return uid == 4999 ? -1 : 0;
}
int jail(struct passwd *pw, char *err) {
    rec("jail %s euid=%d\n", pw->pw_name, (int)geteuid());
    err[0] = 0;
    return 0;
}
"#;

#[test]
fn lve_is_entered_before_the_switch_and_a_full_lve_answers_508() {
    let _shared = require_root();
    let (dir, app, secret) = setup("suexec-lve");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let libdir = dir.join("lib");
    std::fs::create_dir(&libdir).unwrap();
    let src = put(&dir, "lve.c", LVE_STUB);
    let st = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(libdir.join("liblve.so.0"))
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success());
    let rec = dir.join("calls");
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "3"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LSAPI_LVE_ENABLE", "2"),
            ("LD_LIBRARY_PATH", libdir.to_str().unwrap()),
            ("LVE_STUB_LOG", rec.to_str().unwrap()),
        ],
    );
    assert!(
        w.wait_log("LVE enabled (mode 2, CageFS)", Duration::from_secs(10)),
        "{}",
        w.log_text()
    );
    // nobody exists in passwd, so jail() is called for it.
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &whoami(&app, suexec_identity(65534, 65534, &secret_bytes)),
        b"",
    );
    assert!(r.text().starts_with("65534 65534"), "{}", w.log_text());
    drop(c);
    // An account at its limit: 508, uncacheable, retry in 60 s; never served.
    let mut c = w.connect();
    let r = c
        .call(
            &whoami(&app, suexec_identity(4999, 4999, &secret_bytes)),
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 508, "{}", w.log_text());
    assert_eq!(r.header("Retry-After"), Some("60"));
    assert!(r.header("Cache-Control").unwrap_or("").contains("no-cache"));
    assert!(r.text().contains("Resource Limit Is Reached"));
    assert!(w.wait_log("lve_enter(4999) failed", Duration::from_secs(5)));
    drop(c);
    let calls = std::fs::read_to_string(&rec).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        &lines[..3],
        &[
            "is_available euid=0",
            "instance_init NULL",
            "instance_init buf"
        ],
        "{calls}"
    );
    assert!(lines.contains(&"enter 65534 -1 -1 euid=0"), "{calls}");
    assert!(lines.contains(&"jail nobody euid=0"), "{calls}");
    assert!(lines.contains(&"enter 4999 -1 -1 euid=0"), "{calls}");
    assert!(!calls.contains("jail 4999"), "{calls}");
    drop(w);

    // Without the library: LVE is off (logged) and requests are served.
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LVE_ENABLE", "1"),
        ],
    );
    assert!(w.wait_log(
        "liblve.so.0 cannot be loaded; LVE is off",
        Duration::from_secs(10)
    ));
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &whoami(&app, suexec_identity(4321, 4322, &secret_bytes)),
        b"",
    );
    assert!(r.text().starts_with("4321 4322"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_root_owned_virtualenv_still_serves_in_daemon_mode() {
    let _shared = require_root();
    let venv = std::env::var("LSWSGI_TEST_VENV")
        .expect("LSWSGI_TEST_VENV: the test virtualenv with Flask (scripts/test.sh sets it)");
    let (dir, _, secret) = setup("suexec-venv");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let app = put(
        &dir,
        "flaskver.wsgi",
        "import sys, flask\ndef application(e, sr):\n    sr('200 OK', [])\n    return [sys.prefix.encode()]\n",
    );
    let python = format!("{venv}/bin/python");
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LS_PYTHONBIN", &python),
        ],
    );
    let mut c = w.connect();
    let mut spec = RequestSpec::new("GET", "/f.wsgi", app.to_str().unwrap(), "/f.wsgi");
    spec.special_env = suexec_identity(4321, 4322, &secret_bytes);
    let r = call_ok(&mut c, &spec, b"");
    assert!(
        r.text() == venv.trim_end_matches('/'),
        "{} {}",
        r.text(),
        w.log_text()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A hostile tenant app that attacks the group header (the figures the root
/// parent publishes for every tenant's children). It finds the header in
/// /proc/self/maps — the `lswsgi-group-header` memfd page, or, as before it
/// had one, the first page (file offset 0) of the anonymous shared table —
/// and tries every way it knows to write a huge busy count there: a plain
/// store if the page is writable, mprotect to make it writable, /proc/self/mem
/// (before and after making itself dumpable), process_vm_writev,
/// /proc/self/map_files, any memfd descriptor it holds, and the parent's
/// descriptors. For ~4 s it then keeps writing through whatever worked, so
/// that other tenants' children (with LSAPI_MAX_BUSY_WORKER set) would shed
/// their connections, and answers `ADDR PERMS NAME|attempt:result ...|busy=N`
/// (result `ok` when it worked).
const HEADER_POKER: &str = r#"
import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
HUGE = (0xFFFFFFFF).to_bytes(4, 'little')
PROT_RW, MAP_SHARED = 3, 1

def header():
    for line in open('/proc/self/maps'):
        f = line.split(None, 5)
        name = f[5].strip() if len(f) > 5 else ''
        if 'lswsgi-group-header' in name or (name == '/dev/zero (deleted)' and int(f[2], 16) == 0):
            return f[0], int(f[0].split('-')[0], 16), f[1], name
    return None

def failed(e):
    return errno.errorcode.get(e.errno, str(e.errno))

def application(environ, start_response):
    found = header()
    if found is None:
        start_response('200 OK', [])
        return [b'none']
    rng, addr, perms, name = found
    pokes, results = [], []
    def attempt(what, fn):
        try:
            poke = fn()
            results.append(what + ':ok')
            pokes.append(poke)
        except OSError as e:
            results.append(what + ':' + failed(e))
    def direct():
        if 'w' not in perms:
            raise OSError(errno.EROFS, 'read-only page')
        poke = lambda: ctypes.memmove(addr, HUGE, 4)
        poke()
        return poke
    def mprotect():
        if libc.mprotect(addr, 4096, PROT_RW) != 0:
            raise OSError(ctypes.get_errno(), 'mprotect')
        poke = lambda: ctypes.memmove(addr, HUGE, 4)
        poke()
        return poke
    def mem():
        fd = os.open('/proc/self/mem', os.O_RDWR)
        poke = lambda: os.pwrite(fd, HUGE, addr)
        try:
            poke()
        except OSError:
            os.close(fd)
            raise
        return poke
    def vm_write():
        buf = ctypes.create_string_buffer(HUGE)
        local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 4)
        remote = (ctypes.c_void_p * 2)(addr, 4)
        libc.process_vm_writev.restype = ctypes.c_ssize_t
        def poke():
            if libc.process_vm_writev(os.getpid(), local, 1, remote, 1, 0) != 4:
                raise OSError(ctypes.get_errno(), 'process_vm_writev')
        poke()
        return poke
    def writable_map(path):
        fd = os.open(path, os.O_RDWR)
        try:
            p = libc.mmap(None, 4096, PROT_RW, MAP_SHARED, fd, 0)
            if p in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), 'mmap')
        finally:
            os.close(fd)
        poke = lambda: ctypes.memmove(p, HUGE, 4)
        poke()
        return poke
    def own_fds():
        for fd in os.listdir('/proc/self/fd'):
            try:
                link = os.readlink('/proc/self/fd/' + fd)
            except OSError:
                continue
            if 'memfd:' in link or '/dev/zero' in link:
                return writable_map('/proc/self/fd/' + fd)
        raise OSError(errno.ENOENT, 'no such descriptor')
    def parent_fds():
        d = '/proc/%d/fd/' % os.getppid()
        for fd in os.listdir(d):
            if 'lswsgi-group-header' in os.readlink(d + fd):
                return writable_map(d + fd)
        raise OSError(errno.ENOENT, 'no such descriptor')
    attempt('direct', direct)
    attempt('mprotect', mprotect)
    attempt('mem', mem)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: its /proc files become its own
    attempt('mem-dumpable', mem)
    attempt('process_vm_writev', vm_write)
    attempt('map_files', lambda: writable_map('/proc/self/map_files/' + rng))
    attempt('own-fd', own_fds)
    attempt('parent-fd', parent_fds)
    end = time.monotonic() + 4
    while pokes and time.monotonic() < end:
        for poke in pokes:
            poke()
        time.sleep(0.001)
    if not pokes:
        time.sleep(4)
    busy = int.from_bytes(ctypes.string_at(addr, 4), 'little')
    start_response('200 OK', [])
    return [('%s %s %s|%s|busy=%d' % (rng, perms, name, ' '.join(results), busy)).encode()]
"#;

#[test]
fn a_tenant_cannot_write_the_group_header_other_tenants_read() {
    let _shared = require_root();
    let (dir, app, secret) = setup("suexec-header");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let poker = put(&dir, "poker.wsgi", HEADER_POKER);
    // Honest children never count 3 busy here (at most the poker and the
    // other tenant); a huge busy count in the header would make every other
    // child hand its connection back.
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "4"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LSAPI_MAX_BUSY_WORKER", "3"),
            ("LSAPI_MAX_IDLE_CHILDREN", "4"),
        ],
    );
    assert!(w.wait_log("suEXEC daemon mode", Duration::from_secs(10)));
    std::thread::scope(|s| {
        let hostile = s.spawn(|| {
            let mut c = w.connect();
            let mut spec = RequestSpec::new("GET", "/p.wsgi", poker.to_str().unwrap(), "/p.wsgi");
            spec.special_env = suexec_identity(4321, 4322, &secret_bytes);
            call_ok(&mut c, &spec, b"").text()
        });
        // While the poker keeps writing (if it can): another tenant's
        // connection is served request after request, never handed back.
        std::thread::sleep(Duration::from_millis(1500));
        let mut c = w.connect();
        let mut shed = Vec::new();
        for i in 0..3 {
            let r = call_ok(
                &mut c,
                &whoami(&app, suexec_identity(4331, 4332, &secret_bytes)),
                b"",
            );
            assert!(r.text().starts_with("4331 4332"), "{}", r.text());
            if c.closing() || c.reconnects() > 0 {
                shed.push(i);
            }
        }
        let report = hostile.join().unwrap();
        let (found, rest) = report.split_once('|').unwrap_or((&report, ""));
        let (attempts, busy) = rest.split_once('|').expect(&report);
        let wrote: Vec<&str> = attempts.split(' ').filter(|a| a.ends_with(":ok")).collect();
        assert!(
            wrote.is_empty(),
            "the tenant wrote the header ({wrote:?}): {report}"
        );
        assert_eq!(attempts.split(' ').count(), 8, "{report}");
        assert_ne!(busy, "busy=4294967295", "{report}");
        assert!(
            shed.is_empty(),
            "requests {shed:?} of the other tenant were handed back: its child saw a forged busy count"
        );
        assert!(
            found.contains(" r--s /memfd:lswsgi-group-header"),
            "the header is the named memfd page, read-only: {report}"
        );
    });
    std::fs::remove_dir_all(dir).unwrap();
}

/// A tenant app that reports its uid and what it finds of a tenant that ran
/// before it: the module `csv` it imports (shadowed by a planted csv.py?),
/// a key in its session keyring, its terminal and session, and its open
/// descriptors. `?plant=1` plants a csv.py in the working directory and a
/// key in the session keyring.
const PROBE: &str = r#"
import ctypes, errno, fcntl, os, termios
libc = ctypes.CDLL(None, use_errno=True)
SYS_add_key, SYS_keyctl = 248, 250
KEY_SPEC_SESSION_KEYRING = -3
KEYCTL_SEARCH = 10
DESC = b'lswsgi-test-key'
def application(environ, start_response):
    q = environ.get('QUERY_STRING', '')
    out = ['uid=%d' % os.getuid()]
    if 'plant' in q:
        try:
            with open(os.path.join(os.getcwd(), 'csv.py'), 'w') as f:
                f.write('PLANTED = %d\n' % os.getuid())
            out.append('planted=csv')
        except OSError as e:
            out.append('planted=no:%s' % e.strerror)
        k = libc.syscall(SYS_add_key, b'user', DESC, b'x', 1, KEY_SPEC_SESSION_KEYRING)
        out.append('key=%s' % ('added' if k > 0 else 'no'))
    else:
        import csv
        out.append('csv=%s' % getattr(csv, 'PLANTED', 'stdlib'))
        k = libc.syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, b'user', DESC, 0)
        out.append('foundkey=%d' % (k > 0))
    out.append('stdin_tty=%d' % os.isatty(0))
    try:
        tty = os.open('/dev/tty', os.O_RDWR)
        try:
            fcntl.ioctl(tty, termios.TIOCSTI, b'#')
            out.append('tiocsti=ok')
        except OSError as e:
            out.append('tiocsti=%s' % errno.errorcode.get(e.errno, e.errno))
        os.close(tty)
    except OSError as e:
        out.append('tty=%s' % errno.errorcode.get(e.errno, e.errno))
    out.append('own_session=%d' % (os.getsid(0) != os.getsid(os.getppid())))
    fds = []
    for f in sorted(os.listdir('/proc/self/fd'), key=int):
        try:
            fds.append(os.readlink('/proc/self/fd/%s' % f))
        except OSError:
            pass
    out.append('fds=' + ','.join(fds))
    start_response('200 OK', [])
    return [' '.join(out).encode()]
"#;

/// One request to `app` as `uid:gid` on a new connection.
fn probe(w: &Worker, app: &Path, uid: i32, secret: &[u8], query: &str) -> String {
    let mut c = w.connect();
    let mut spec = RequestSpec::new(
        "GET",
        &format!("/probe.wsgi?{query}"),
        app.to_str().unwrap(),
        "/probe.wsgi",
    );
    spec.special_env = suexec_identity(uid, uid + 1, secret);
    let r = call_ok(&mut c, &spec, b"");
    assert_eq!(r.status, 200, "{} {}", r.text(), w.log_text());
    r.text()
}

#[test]
fn a_request_without_credentials_is_never_served_as_the_previous_tenant() {
    let _shared = require_root();
    let (dir, app, secret) = setup("suexec-nocreds");
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
    // Tenant A's request, then one without credentials on its connection.
    let mut c = w.connect();
    let r = call_ok(
        &mut c,
        &whoami(&app, suexec_identity(4321, 4322, &secret_bytes)),
        b"",
    );
    assert!(r.text().starts_with("4321 4322"), "{}", w.log_text());
    let a_child = r.pid.expect("PID notice from the child");
    // Refused on that connection (the client, as LiteSpeed, sends it again
    // on a new one, where a default user's child serves it).
    let r = c.call(&whoami(&app, Vec::new()), b"");
    assert!(
        r.as_ref().map_or(true, |r| r.pid != Some(a_child)
            && !r.text().starts_with("4321")),
        "a request without credentials was served by tenant A's child: {:?}",
        r.map(|r| r.text())
    );
    assert!(
        w.wait_log(
            "request for 4444:4445 (no suEXEC credentials: the default user) on a connection \
             serving 4321:4322",
            Duration::from_secs(5)
        ),
        "{}",
        w.log_text()
    );
    drop(c);
    // A new connection serves it as the default user, and on a default
    // user's connection later requests without credentials still are.
    let mut c = w.connect();
    for _ in 0..2 {
        let r = call_ok(&mut c, &whoami(&app, Vec::new()), b"");
        assert!(r.text().starts_with("4444 4445"), "{}", r.text());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `PYTHON -c LAUNCHER LSWSGI ARGS...`: connects a socket to the path in
/// $STARTER_SOCKET, puts it on fd 3 (inheritable), writes its inode to
/// $STARTER_INODE and execs the worker: a starter that leaves its own socket
/// on fd 3.
const FD3_LAUNCHER: &str = "\
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ.pop('STARTER_SOCKET'))
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
open(os.environ.pop('STARTER_INODE'), 'w').write(str(os.fstat(3).st_ino))
os.execv(sys.argv[1], sys.argv[1:])
";

#[test]
fn the_starters_socket_on_fd_3_never_reaches_a_tenant() {
    let _shared = require_root();
    let (dir, _, secret) = setup("suexec-fd3");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let app = put(&dir, "probe.wsgi", PROBE);
    let starter_sock = dir.join("starter.sock");
    let starter = std::os::unix::net::UnixListener::bind(&starter_sock).unwrap();
    let inode_file = dir.join("inode");
    let w = Worker::start_via(
        &["python3", "-c", FD3_LAUNCHER],
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("STARTER_SOCKET", starter_sock.to_str().unwrap()),
            ("STARTER_INODE", inode_file.to_str().unwrap()),
        ],
    );
    assert!(
        w.wait_log("suEXEC daemon mode", Duration::from_secs(10)),
        "{}",
        w.log_text()
    );
    let inode = std::fs::read_to_string(&inode_file).unwrap();
    let text = probe(&w, &app, 4321, &secret_bytes, "");
    assert!(text.starts_with("uid=4321"), "{text}");
    assert!(
        !text.contains(&format!("socket:[{inode}]")),
        "the starter's socket reached the tenant: {text}"
    );
    drop(w);
    drop(starter);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `PYTHON -c LAUNCHER LSWSGI ARGS...`: a root shell's terminal for the
/// worker. Forks; the child starts a session whose controlling terminal is
/// a new pty, puts the pty on fd 0 and execs the worker (which listens with
/// `-a`); the parent holds the pty's master open until the worker exits.
const TTY_LAUNCHER: &str = "\
import fcntl, os, pty, sys, termios
m, s = pty.openpty()
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    os.dup2(s, 0)
    os.execv(sys.argv[1], sys.argv[1:])
os.close(s)
os.waitpid(pid, 0)
";

#[test]
fn tenants_get_no_terminal_no_shared_session_and_no_shared_keyring() {
    let _shared = require_root();
    let (dir, _, secret) = setup("suexec-tty");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let app = put(&dir, "probe.wsgi", PROBE);
    let sock = dir.join("own.sock");
    let w = Worker::start_via(
        &["python3", "-c", TTY_LAUNCHER],
        &["-a", sock.to_str().unwrap()],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
        ],
    );
    let call = |uid: i32, query: &str| {
        let mut c = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                c = lswsgi::client::Client::connect(sock.to_str().unwrap()).ok();
                c.is_some()
            }),
            "{}",
            w.log_text()
        );
        let mut c = c.unwrap();
        c.stream()
            .set_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut spec = RequestSpec::new(
            "GET",
            &format!("/probe.wsgi?{query}"),
            app.to_str().unwrap(),
            "/probe.wsgi",
        );
        spec.special_env = suexec_identity(uid, uid + 1, &secret_bytes);
        let r = call_ok(&mut c, &spec, b"");
        assert_eq!(r.status, 200, "{} {}", r.text(), w.log_text());
        r.text()
    };
    // Tenant A: no terminal to open, let alone push keystrokes into; a
    // session of its own; its key goes into a keyring of its own.
    let a = call(4321, "plant=1");
    assert!(a.starts_with("uid=4321"), "{a}");
    assert!(a.contains("key=added"), "{a}");
    assert!(
        a.contains("stdin_tty=0"),
        "fd 0 is the starter's terminal: {a}"
    );
    assert!(
        a.contains("tty=ENXIO"),
        "the tenant can open the starter's terminal: {a}"
    );
    assert!(a.contains("own_session=1"), "{a}");
    // Tenant B does not find A's key.
    let b = call(4331, "");
    assert!(b.starts_with("uid=4331"), "{b}");
    assert!(b.contains("foundkey=0"), "B found A's key: {b}");
    drop(w);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pythonpath_entries_a_tenant_can_write_are_not_shared_with_another() {
    let _shared = require_root();
    let (dir, _, secret) = setup("suexec-pythonpath");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let app = put(&dir, "probe.wsgi", PROBE);
    // The daemon's working directory is one tenant A can write (as when it
    // is started from such a directory; here through WSGI_ROOT), and
    // PYTHONPATH is OpenLiteSpeed's `.:<root>`.
    let cwd = dir.join("tenant-a");
    std::fs::create_dir(&cwd).unwrap();
    chown_r(&cwd, 4321, 4322);
    let shared = dir.join("shared");
    put(&shared, "sharedmod.py", "VALUE = 1\n");
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("WSGI_ROOT", cwd.to_str().unwrap()),
            ("PYTHONPATH", &format!(".:{}", shared.display())),
        ],
    );
    // Tenant A plants csv.py in that directory...
    let a = probe(&w, &app, 4321, &secret_bytes, "plant=1");
    assert!(a.contains("planted=csv"), "{a}");
    // ...and tenant B's `import csv` must still be the standard library's.
    let b = probe(&w, &app, 4331, &secret_bytes, "");
    assert!(b.starts_with("uid=4331"), "{b}");
    assert!(
        b.contains("csv=stdlib"),
        "B imported the csv.py tenant A planted: {b}"
    );
    assert!(
        w.log_text().contains("PYTHONPATH entry . ("),
        "{}",
        w.log_text()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_log_in_a_directory_a_tenant_owns_is_refused_as_root() {
    let _shared = require_root();
    let (dir, app, _) = setup("suexec-logdir");
    // Mode 0755, but the tenant's: it could rename it and put a symbolic
    // link in its place before the next start.
    let tenant = dir.join("tenant-logs");
    std::fs::create_dir(&tenant).unwrap();
    chown_r(&tenant, 4321, 4322);
    let log = tenant.join("stderr.log");
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_STDERR_LOG", log.to_str().unwrap()),
            ("LSAPI_DEFAULT_UID", "4321"),
            ("LSAPI_DEFAULT_GID", "4322"),
        ],
    );
    let mut c = w.connect();
    let r = call_ok(&mut c, &whoami(&app, Vec::new()), b"");
    assert!(r.text().starts_with("4321 4322"));
    assert!(!log.exists(), "root opened a log in a tenant's directory");
    assert!(
        w.log_text().contains("is owned by uid 4321"),
        "{}",
        w.log_text()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_secret_below_a_directory_a_tenant_owns_refuses_to_start() {
    let _shared = require_root();
    let (dir, _, secret) = setup("suexec-secretdir");
    let tenant = dir.join("tenant");
    std::fs::create_dir(&tenant).unwrap();
    let inner = tenant.join("conf");
    std::fs::create_dir(&inner).unwrap();
    let moved = inner.join("secret");
    std::fs::rename(&secret, &moved).unwrap();
    // The file and its own directory are root's; one above is the tenant's.
    chown_r(&tenant, 4321, 4322);
    chown_r(&inner, 0, 0);
    let (code, log) = refuses_to_start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", moved.to_str().unwrap()),
        ],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("{} is owned by uid 4321", tenant.display())),
        "{log}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Removes a path when dropped (a file planted in a shared place).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_tenant_owned_file_in_the_build_pythons_prefix_refuses_to_start() {
    drop(require_root());
    let _alone = PREFIX.write().unwrap_or_else(|e| e.into_inner());
    let (dir, _, secret) = setup("suexec-prefix");
    // With neither LS_PYTHONBIN nor PYTHONHOME the build's own installation
    // runs in the root parent: a tenant-owned .pth in its site-packages
    // would run as root. (Its one line is a path that does not exist, which
    // Python ignores: harmless to every other process meanwhile.)
    let (ver, exe) = python_build();
    let prefix = Path::new(&exe).parent().unwrap().parent().unwrap();
    let site = prefix.join(format!("lib/python{ver}/site-packages"));
    let pth = site.join(format!("zz-lswsgi-test-{}.pth", std::process::id()));
    std::fs::write(&pth, "/nonexistent-lswsgi-test\n").unwrap();
    let _guard = RemoveOnDrop(pth.clone());
    chown_r(&pth, 4321, 4322);
    let (code, log) = refuses_to_start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
        ],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("{} is owned by uid 4321", pth.display())),
        "{log}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_orphaned_grandchild_of_a_tenant_ends_with_its_child() {
    let _shared = require_root();
    let (dir, _, secret) = setup("suexec-orphan");
    let secret_bytes = std::fs::read(&secret).unwrap();
    // The shell exits at once: its sleep is orphaned, still in the child's
    // process group, and the child has no child of its own left.
    let app = put(
        &dir,
        "orphan.wsgi",
        "import subprocess\n\
         def application(environ, start_response):\n\
         \x20   pid = subprocess.check_output(['sh', '-c', 'sleep 300 >/dev/null 2>&1 & echo $!'])\n\
         \x20   start_response('200 OK', [])\n\
         \x20   return [pid.strip()]\n",
    );
    let w = Worker::start(
        &[],
        &[
            ("LSAPI_CHILDREN", "2"),
            ("LSAPI_SECRET", secret.to_str().unwrap()),
            ("LSAPI_MAX_REQS", "1"),
        ],
    );
    let mut c = w.connect();
    let mut spec = RequestSpec::new("GET", "/o.wsgi", app.to_str().unwrap(), "/o.wsgi");
    spec.special_env = suexec_identity(4321, 4322, &secret_bytes);
    let r = call_ok(&mut c, &spec, b"");
    let orphan: i32 = r.text().parse().expect("pid");
    drop(c);
    let gone = wait_until(Duration::from_secs(5), || !running(orphan));
    if !gone {
        // SAFETY: the tenant's sleep, still alive; clean up.
        unsafe { libc::kill(orphan, libc::SIGKILL) };
    }
    assert!(gone, "the orphaned {orphan} outlived its child");
    std::fs::remove_dir_all(dir).unwrap();
}
