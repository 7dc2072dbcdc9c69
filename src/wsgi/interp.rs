//! Starting the embedded interpreter, the per-interpreter state (request
//! types, interned environ keys, the support module, loaded scripts) and
//! finding the application for a request.

use super::objects::{self, create_types, Types};
use super::py::{self, ffi, intern, Obj};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr;

/// Python the worker was built against (from build.rs).
const BUILD_EXECUTABLE: &str = env!("LSWSGI_PYTHON_EXECUTABLE");
const BUILD_VERSION: &str = env!("LSWSGI_PYTHON_VERSION");
const BUILD_STDLIB: &str = env!("LSWSGI_PYTHON_STDLIB");

/// What `lswsgi -v` reports about the embedded Python.
pub fn build_python() -> (&'static str, &'static str) {
    (BUILD_VERSION, BUILD_EXECUTABLE)
}

/// Where other installations of the same Python version keep their standard
/// library (prefix, stdlib), tried in order when the build prefix is
/// unreadable (e.g. a Python under a private home directory).
fn fallback_prefixes() -> Vec<String> {
    let v = BUILD_VERSION;
    let nodot = v.replace('.', "");
    vec![
        "/usr/local".into(),
        "/usr".into(),
        format!("/opt/alt/python{nodot}"),
        format!("/opt/cpanel/ea-python{nodot}/root/usr"),
    ]
}

fn readable(path: &str) -> bool {
    CString::new(path)
        .map(|c| unsafe { libc::access(c.as_ptr(), libc::R_OK) } == 0)
        .unwrap_or(false)
}

/// The `X.Y` a virtualenv's pyvenv.cfg records (`version = X.Y.Z`, or
/// `version_info = X.Y.Z.final.0` as uv writes it), if it has one.
fn venv_version(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        if !matches!(k.trim(), "version" | "version_info") {
            return None;
        }
        let mut parts = v.trim().split('.');
        let (major, minor) = (parts.next()?, parts.next()?);
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (digits(major) && digits(minor)).then(|| format!("{major}.{minor}"))
    })
}

/// The Python `X.Y` of the virtualenv LS_PYTHONBIN (a path) belongs to,
/// when it differs from the embedded Python's, with its pyvenv.cfg. Such a
/// virtualenv's site-packages (lib/pythonX.Y) would not be on sys.path and
/// its compiled extensions would not load, so the site would fail later with
/// an ImportError that names neither version. CPython looks for pyvenv.cfg
/// beside the executable and one directory up; so does this.
fn venv_mismatch(bin: &str) -> Option<(String, std::path::PathBuf)> {
    let dir = Path::new(bin).parent()?;
    for cfg in [Some(dir), dir.parent()].into_iter().flatten() {
        let cfg = cfg.join("pyvenv.cfg");
        let Ok(text) = std::fs::read_to_string(&cfg) else {
            continue;
        };
        return venv_version(&text)
            .filter(|v| v != BUILD_VERSION)
            .map(|v| (v, cfg));
    }
    None
}

/// The environment variable a worker sets before it execs the build for
/// another Python ([`other_build`]); the build it starts never dispatches
/// again. An LSAPI_ name: scrubbed before application code runs.
pub const DISPATCHED: &str = "LSAPI_LSWSGI_DISPATCHED";

/// The Python `X.Y` of LS_PYTHONBIN's virtualenv and the worker installed
/// beside this one for that version, when the two Pythons differ and such a
/// build exists (none once [`DISPATCHED`] is set). Beside means, for `X.Y` =
/// 3.12: `lswsgi3.12` or `lswsgi312` in this executable's directory, or
/// CloudLinux's `/opt/alt/python312/bin/lswsgi`. Only a file the host put
/// there counts, never a path the virtualenv names: as root it must be a
/// trusted path ([`crate::sys::root_trusted`]); otherwise a regular,
/// executable file that group and others cannot write.
pub fn other_build() -> Option<(String, std::path::PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    if std::env::var_os(DISPATCHED).is_some() {
        return None;
    }
    let bin = std::env::var("LS_PYTHONBIN")
        .ok()
        .filter(|b| b.contains('/'))?;
    let (version, _) = venv_mismatch(&bin)?;
    let me = std::env::current_exe().ok()?;
    let here = me.parent()?;
    let nodot = version.replace('.', "");
    let me_id = std::fs::metadata(&me).ok().map(|m| (m.dev(), m.ino()));
    [
        here.join(format!("lswsgi{version}")),
        here.join(format!("lswsgi{nodot}")),
        Path::new(&format!("/opt/alt/python{nodot}/bin/lswsgi")).to_path_buf(),
    ]
    .into_iter()
    .find(|c| {
        let Ok(m) = std::fs::metadata(c) else {
            return false;
        };
        let usable = m.is_file()
            && m.mode() & 0o111 != 0
            && Some((m.dev(), m.ino())) != me_id
            && if crate::suexec::is_root() {
                crate::sys::root_trusted(c).is_ok()
            } else {
                m.mode() & 0o022 == 0
            };
        if !usable {
            crate::warn!(
                "not using {} for the Python {version} virtualenv: it is not a regular \
                 executable file that only its owner (root, when this worker runs as root) \
                 can write",
                c.display()
            );
        }
        usable
    })
    .map(|c| (version, c))
}

/// What every request of a worker that cannot run its site is answered
/// with (a 500 page saying it), set at start-up; `None` for a working one.
static MISCONFIGURED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The message for visitors when the site cannot run at all (see
/// [`MISCONFIGURED`]): nothing secret, no paths.
pub fn misconfigured() -> Option<&'static str> {
    MISCONFIGURED.get().map(String::as_str)
}

/// Milliseconds (monotonic) when [`MISCONFIGURED`] was last logged.
static MISCONFIGURED_LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Logs the start-up problem again, at most once a minute (a site answered
/// with 500s for days must stay visible in its log without flooding it).
fn log_misconfigured(detail: &str) {
    use std::sync::atomic::Ordering;
    let now = crate::sys::now_ms();
    let last = MISCONFIGURED_LOGGED.load(Ordering::Relaxed);
    if last == 0 || now.saturating_sub(last) >= 60_000 {
        MISCONFIGURED_LOGGED.store(now.max(1), Ordering::Relaxed);
        crate::error!("{detail}");
    }
}

/// The log's description of [`MISCONFIGURED`] (paths included).
static MISCONFIGURED_DETAIL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Chooses the interpreter's program name and (when needed) home so it runs
/// with the standard library of the Python it was built against, whatever
/// PATH holds. Returns `(program_name, home)`.
fn choose_paths(isolated: bool) -> Result<(String, Option<String>), String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let venv = env("LS_PYTHONBIN").map(|bin| {
        let mismatch = bin.contains('/').then(|| venv_mismatch(&bin)).flatten();
        (bin, mismatch)
    });
    if let Some((bin, Some((v, cfg)))) = &venv {
        // No build for that Python beside this one (see other_build): stay
        // up on the embedded Python's own installation and answer every
        // request at once with a 500 that says why, instead of exiting into
        // the server's restart loop (a 503 after seconds for every visitor).
        let b = BUILD_VERSION;
        let _ = MISCONFIGURED.set(format!(
            "This site's Python virtualenv was made with Python {v}, but the server runs it \
             with Python {b}, and no worker for Python {v} is installed on this server. \
             Recreate the virtualenv with Python {b}, or choose Python {b} for the site."
        ));
        let _ = MISCONFIGURED_DETAIL.set(format!(
            "LS_PYTHONBIN={bin} is a Python {v} virtualenv ({}), but this lswsgi embeds \
             Python {b} and no lswsgi for Python {v} is installed beside it (lswsgi{v} or \
             lswsgi{} in its directory, or /opt/alt/python{}/bin/lswsgi); answering every \
             request with 500 until the virtualenv is recreated with Python {b} or that build \
             is installed",
            cfg.display(),
            v.replace('.', ""),
            v.replace('.', "")
        ));
        log_misconfigured(MISCONFIGURED_DETAIL.get().map_or("", String::as_str));
    }
    if let Some((bin, None)) = venv {
        if bin.contains('/') {
            std::fs::metadata(&bin).map_err(|e| format!("LS_PYTHONBIN={bin}: {e}"))?;
        }
        if isolated {
            let bin = if bin.contains('/') {
                bin.clone()
            } else {
                which(&bin)
            };
            root_controlled(Path::new(&bin), "LS_PYTHONBIN")?;
            // Its directory's parent: a virtualenv or an installation prefix.
            if let Some(prefix) = Path::new(&bin).parent().and_then(Path::parent) {
                root_controlled_prefix(prefix, "LS_PYTHONBIN")?;
            }
        }
        return Ok((bin, None));
    }
    if let Some(home) = env("PYTHONHOME") {
        if isolated {
            // The environment is ignored when isolated: pass it explicitly.
            root_controlled_prefix(Path::new(&home), "PYTHONHOME")?;
            return Ok((BUILD_EXECUTABLE.into(), Some(home)));
        }
        return Ok((BUILD_EXECUTABLE.into(), None));
    }
    if readable(&format!("{BUILD_STDLIB}/os.py")) {
        if isolated {
            // The installation the worker was built against (stdlib =
            // PREFIX/lib/pythonX.Y).
            if let Some(prefix) = Path::new(BUILD_STDLIB).parent().and_then(Path::parent) {
                root_controlled_prefix(prefix, "the Python prefix")?;
            }
        }
        return Ok((BUILD_EXECUTABLE.into(), None));
    }
    let v = BUILD_VERSION;
    for prefix in fallback_prefixes() {
        let stdlib = format!("{prefix}/lib/python{v}");
        if readable(&format!("{stdlib}/os.py"))
            && Path::new(&format!("{stdlib}/lib-dynload")).is_dir()
        {
            if isolated {
                if let Err(e) = root_controlled_prefix(Path::new(&prefix), "the Python prefix") {
                    crate::warn!("not using Python {v} from {prefix}: {e}");
                    continue;
                }
            }
            crate::warn!(
                "cannot read the standard library at {BUILD_STDLIB}; using Python {v} from {prefix}"
            );
            return Ok((format!("{prefix}/bin/python{v}"), Some(prefix)));
        }
    }
    Err(format!(
        "cannot read the Python {v} standard library at {BUILD_STDLIB} (this worker was built \
         against {BUILD_EXECUTABLE}) and found no other Python {v} installation; set PYTHONHOME \
         or LS_PYTHONBIN to a readable Python {v}"
    ))
}

/// `name` looked up on PATH, or itself.
fn which(name: &str) -> String {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| name.to_string())
}

/// `Err` unless root may start Python from `path` ([`crate::sys::root_trusted`]):
/// what a root process may run or import from without running a tenant's
/// code.
fn root_controlled(path: &Path, what: &str) -> Result<(), String> {
    crate::sys::root_trusted(path).map_err(|e| untrusted(what, path, &e))
}

fn untrusted(what: &str, path: &Path, why: &str) -> String {
    format!(
        "{what} {}: {why}; a suEXEC daemon (root) only starts Python from paths that root owns \
         and nobody else can write",
        path.display()
    )
}

/// The parts of a Python prefix that run at start-up must be root's: for a
/// virtualenv (pyvenv.cfg present) the whole of its lib/ (site-packages and
/// its .pth files); for an installation, lib/pythonX.Y and the packages in
/// it. Elsewhere in the prefix (share/, other languages' trees) is not read.
fn root_controlled_prefix(prefix: &Path, what: &str) -> Result<(), String> {
    root_controlled(prefix, what)?;
    let cfg = prefix.join("pyvenv.cfg");
    let (tree, depth) = if cfg.exists() {
        root_controlled(&cfg, what)?;
        (prefix.join("lib"), 4)
    } else {
        (prefix.join(format!("lib/python{BUILD_VERSION}")), 2)
    };
    crate::sys::root_trusted_tree(&tree, depth).map_err(|e| untrusted(what, prefix, &e))
}

unsafe fn status_error(what: &str, st: ffi::PyStatus) -> Result<(), String> {
    if ffi::PyStatus_Exception(st) == 0 {
        return Ok(());
    }
    let msg = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(format!("{what}: {} {}", msg(st.func), msg(st.err_msg)))
}

/// Initialises CPython explicitly: no signal handlers of its own (the worker
/// owns SIGTERM/SIGINT), unbuffered stdio (so prints reach the log at once),
/// `sys.argv == ['lswsgi']`, and the program name that makes it find the
/// right standard library (see [`choose_paths`]).
///
/// `isolated` (a suEXEC daemon's root parent): nothing a tenant controls may
/// run as root, so the environment (PYTHONPATH, PYTHONHOME, PYTHONSTARTUP,
/// ...) and the user site directory are ignored, and LS_PYTHONBIN or
/// PYTHONHOME must be root's and not writable by others. The children add
/// PYTHONPATH after their user switch ([`adopt_pythonpath`]).
pub fn init_python(isolated: bool) -> Result<(), String> {
    let (program, home) = choose_paths(isolated)?;
    if isolated {
        let _ = DAEMON_PYTHONPATH.set(daemon_pythonpath());
    }
    // SAFETY: PyConfig is plain data initialised by PyConfig_InitPythonConfig;
    // strings are copied by PyConfig_SetBytesString.
    unsafe {
        let mut config: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut config);
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        config.buffered_stdio = 0;
        if isolated {
            config.use_environment = 0;
            config.user_site_directory = 0;
        }
        let set = |config: &mut ffi::PyConfig, field: *mut *mut libc::wchar_t, v: &str| {
            let c = CString::new(v).map_err(|_| format!("NUL in {v:?}"))?;
            status_error(
                "configuring Python",
                ffi::PyConfig_SetBytesString(config, field, c.as_ptr()),
            )
        };
        let r = (|| {
            let pn = ptr::addr_of_mut!(config.program_name);
            set(&mut config, pn, &program)?;
            if let Some(h) = &home {
                let hp = ptr::addr_of_mut!(config.home);
                set(&mut config, hp, h)?;
            }
            let mut argv = [c"lswsgi".as_ptr()];
            status_error(
                "configuring Python",
                ffi::PyConfig_SetBytesArgv(&mut config, 1, argv.as_mut_ptr()),
            )?;
            status_error("starting Python", ffi::Py_InitializeFromConfig(&config))
        })();
        ffi::PyConfig_Clear(&mut config);
        r
    }
}

/// PYTHONPATH's entries a suEXEC daemon's children put on `sys.path`,
/// vetted by the root parent at start-up ([`daemon_pythonpath`]).
static DAEMON_PYTHONPATH: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();

/// PYTHONPATH's entries as a suEXEC daemon may use them. Every account's
/// children get the same `sys.path`, so a directory on it that one tenant
/// could write is a module another tenant imports: each entry must be
/// [`crate::sys::root_trusted`] or it is dropped (logged). A relative entry
/// (`.` in OpenLiteSpeed's `PYTHONPATH=.:<root>`) would resolve against the
/// root parent's working directory in every child: it is made absolute now
/// and checked like the rest.
fn daemon_pythonpath() -> Vec<Vec<u8>> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let Some(pp) = std::env::var_os("PYTHONPATH").filter(|v| !v.is_empty()) else {
        return Vec::new();
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut out = Vec::new();
    for entry in pp
        .as_bytes()
        .split(|&b| b == b':')
        .filter(|e| !e.is_empty())
    {
        let p = Path::new(std::ffi::OsStr::from_bytes(entry));
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        };
        match crate::sys::root_trusted(&abs) {
            Ok(()) => out.push(abs.into_os_string().into_vec()),
            Err(e) => crate::warn!(
                "PYTHONPATH entry {} ({}) left off sys.path: {e}; in suEXEC daemon mode every \
                 account shares the daemon's sys.path, so only directories that root owns and \
                 nobody else can write go on it",
                p.display(),
                abs.display()
            ),
        }
    }
    out
}

/// In a suEXEC daemon child after its user switch: puts the vetted
/// PYTHONPATH entries ([`daemon_pythonpath`]) at the front of sys.path,
/// where a normal start would have put them (the root parent ignored the
/// environment).
pub fn adopt_pythonpath() {
    let Some(entries) = DAEMON_PYTHONPATH.get() else {
        return;
    };
    // SAFETY: called on the serving thread with the GIL held; every object
    // created is checked and released; PySys_GetObject returns a borrowed
    // list.
    unsafe {
        let path = ffi::PySys_GetObject(c"path".as_ptr());
        if path.is_null() || ffi::PyList_Check(path) == 0 {
            return;
        }
        for (i, entry) in entries.iter().enumerate() {
            let s = ffi::PyUnicode_DecodeFSDefaultAndSize(
                entry.as_ptr().cast(),
                entry.len() as ffi::Py_ssize_t,
            );
            if s.is_null() {
                ffi::PyErr_Clear();
                continue;
            }
            if ffi::PyList_Insert(path, i as ffi::Py_ssize_t, s) != 0 {
                ffi::PyErr_Clear();
            }
            ffi::Py_DECREF(s);
        }
    }
}

/// Interned environ keys, in this order (see [`Interp::env_key`]).
const KEYS: [&CStr; 50] = [
    c"REQUEST_METHOD",
    c"QUERY_STRING",
    c"SCRIPT_NAME",
    c"PATH_INFO",
    c"SCRIPT_FILENAME",
    c"REQUEST_URI",
    c"SERVER_NAME",
    c"SERVER_PORT",
    c"SERVER_PROTOCOL",
    c"SERVER_SOFTWARE",
    c"SERVER_ADDR",
    c"SERVER_ADMIN",
    c"REMOTE_ADDR",
    c"REMOTE_PORT",
    c"DOCUMENT_ROOT",
    c"HTTPS",
    c"GATEWAY_INTERFACE",
    c"wsgi.version",
    c"wsgi.url_scheme",
    c"wsgi.input",
    c"wsgi.errors",
    c"wsgi.multithread",
    c"wsgi.multiprocess",
    c"wsgi.run_once",
    c"wsgi.file_wrapper",
    // The 25 known-header CGI names, in slot order (index 25 + slot).
    c"HTTP_ACCEPT",
    c"HTTP_ACCEPT_CHARSET",
    c"HTTP_ACCEPT_ENCODING",
    c"HTTP_ACCEPT_LANGUAGE",
    c"HTTP_AUTHORIZATION",
    c"HTTP_CONNECTION",
    c"CONTENT_TYPE",
    c"CONTENT_LENGTH",
    c"HTTP_COOKIE",
    c"HTTP_COOKIE2",
    c"HTTP_HOST",
    c"HTTP_PRAGMA",
    c"HTTP_REFERER",
    c"HTTP_USER_AGENT",
    c"HTTP_CACHE_CONTROL",
    c"HTTP_IF_MODIFIED_SINCE",
    c"HTTP_IF_MATCH",
    c"HTTP_IF_NONE_MATCH",
    c"HTTP_IF_RANGE",
    c"HTTP_IF_UNMODIFIED_SINCE",
    c"HTTP_KEEP_ALIVE",
    c"HTTP_RANGE",
    c"HTTP_X_FORWARDED_FOR",
    c"HTTP_VIA",
    c"HTTP_TRANSFER_ENCODING",
];

/// Indexes into [`KEYS`].
#[allow(missing_docs)]
pub mod key {
    pub const REQUEST_METHOD: usize = 0;
    pub const QUERY_STRING: usize = 1;
    pub const SCRIPT_NAME: usize = 2;
    pub const PATH_INFO: usize = 3;
    pub const SERVER_NAME: usize = 6;
    pub const SERVER_PORT: usize = 7;
    pub const GATEWAY_INTERFACE: usize = 16;
    pub const WSGI_VERSION: usize = 17;
    pub const WSGI_URL_SCHEME: usize = 18;
    pub const WSGI_INPUT: usize = 19;
    pub const WSGI_ERRORS: usize = 20;
    pub const WSGI_MULTITHREAD: usize = 21;
    pub const WSGI_MULTIPROCESS: usize = 22;
    pub const WSGI_RUN_ONCE: usize = 23;
    pub const WSGI_FILE_WRAPPER: usize = 24;
    pub const HEADER_BASE: usize = 25;
}

/// A loaded WSGI script.
struct Script {
    module: Obj,
    /// Modification time when loaded (seconds, nanoseconds).
    mtime: (i64, i64),
}

/// Everything one Python interpreter needs to serve requests.
pub struct Interp {
    /// This interpreter's thread state (for switching to it).
    tstate: *mut ffi::PyThreadState,
    pub(super) types: Types,
    pub(super) keys: Vec<Obj>,
    pub(super) version: Obj,
    pub(super) http: Obj,
    pub(super) https: Obj,
    pub(super) empty: Obj,
    pub(super) cgi_1_1: Obj,
    pub(super) close_name: Obj,
    pub(super) file_wrapper: Obj,
    pub(super) format_exception: Obj,
    load_script: Obj,
    import_module: Obj,
    /// Request objects kept for reuse while nobody else holds them.
    pub(super) cached: [Option<Obj>; 4],
    /// ASGI applications: detection, scope, receive and send.
    pub(super) asgi: super::asgi::PerInterp,
    scripts: HashMap<Vec<u8>, Script>,
}

static HELPER_SOURCE: &CStr = {
    const SRC: &str = concat!(include_str!("helper.py"), "\0");
    match CStr::from_bytes_with_nul(SRC.as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("helper.py contains a NUL byte"),
    }
};

unsafe extern "C" fn log_warning(
    _m: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    crate::warn!("{}", py::to_string(arg));
    let n = ffi::Py_None();
    ffi::Py_INCREF(n);
    n
}

struct MethodDef(ffi::PyMethodDef);
// SAFETY: immutable static data (pointers to a static string and a function).
unsafe impl Sync for MethodDef {}

static LOG_WARNING: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"log_warning".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunction: log_warning,
    },
    ml_flags: ffi::METH_O,
    ml_doc: ptr::null(),
});

impl Interp {
    /// Sets up the current interpreter: runs the support module, creates the
    /// request types, interns the environ keys, restricts signal handlers.
    pub fn new() -> Result<Interp, String> {
        // SAFETY: GIL held by the caller (right after init or interpreter switch).
        unsafe {
            let fail = |what: &str| {
                let f = ptr::null_mut();
                format!("{what}: {}", py::take_exception(f))
            };
            let module = Obj::owned(ffi::PyModule_New(c"_lswsgi".as_ptr()))
                .ok_or_else(|| fail("creating the support module"))?;
            let dict = ffi::PyModule_GetDict(module.ptr());
            ffi::PyDict_SetItemString(dict, c"__builtins__".as_ptr(), ffi::PyEval_GetBuiltins());
            Obj::owned(ffi::PyRun_String(
                HELPER_SOURCE.as_ptr(),
                ffi::Py_file_input,
                dict,
                dict,
            ))
            .ok_or_else(|| fail("running the support module"))?;
            let get = |name: &CStr| -> Result<Obj, String> {
                let p = ffi::PyDict_GetItemString(dict, name.as_ptr());
                if p.is_null() {
                    Err(format!("support module lacks {name:?}"))
                } else {
                    Ok(Obj::borrowed(p))
                }
            };
            let logger = Obj::owned(ffi::PyCFunction_NewEx(
                ptr::addr_of!(LOG_WARNING.0) as *mut ffi::PyMethodDef,
                ptr::null_mut(),
                ptr::null_mut(),
            ))
            .ok_or_else(|| fail("creating the log function"))?;
            Obj::owned(ffi::PyObject_CallOneArg(
                get(c"restrict_signals")?.ptr(),
                logger.ptr(),
            ))
            .ok_or_else(|| fail("restricting signal handlers"))?;

            let version = Obj::owned(ffi::Py_BuildValue(c"(ii)".as_ptr(), 1, 0))
                .ok_or_else(|| fail("building wsgi.version"))?;
            Ok(Interp {
                tstate: ffi::PyThreadState_Get(),
                types: create_types()?,
                keys: KEYS.iter().map(|k| intern(k)).collect(),
                version,
                http: intern(c"http"),
                https: intern(c"https"),
                empty: intern(c""),
                cgi_1_1: intern(c"CGI/1.1"),
                close_name: intern(c"close"),
                file_wrapper: get(c"FileWrapper")?,
                format_exception: get(c"format_exception")?,
                load_script: get(c"load_script")?,
                import_module: get(c"import_module")?,
                cached: [None, None, None, None],
                asgi: super::asgi::PerInterp::new(get(c"asgi_serve")?, get(c"asgi_kind")?)?,
                scripts: HashMap::new(),
            })
        }
    }

    /// The interned key for an env-list name, if it is a common one.
    #[inline]
    pub(super) fn env_key(&self, k: &[u8]) -> Option<*mut ffi::PyObject> {
        let i = match k {
            b"REQUEST_METHOD" => 0,
            b"QUERY_STRING" => 1,
            b"SCRIPT_NAME" => 2,
            b"PATH_INFO" => 3,
            b"SCRIPT_FILENAME" => 4,
            b"REQUEST_URI" => 5,
            b"SERVER_NAME" => 6,
            b"SERVER_PORT" => 7,
            b"SERVER_PROTOCOL" => 8,
            b"SERVER_SOFTWARE" => 9,
            b"SERVER_ADDR" => 10,
            b"SERVER_ADMIN" => 11,
            b"REMOTE_ADDR" => 12,
            b"REMOTE_PORT" => 13,
            b"DOCUMENT_ROOT" => 14,
            b"HTTPS" => 15,
            _ => return None,
        };
        Some(self.keys[i].ptr())
    }

    /// Formats the pending Python exception with its traceback and clears it.
    pub fn take_exception(&self) -> String {
        // SAFETY: GIL held.
        unsafe { py::take_exception(self.format_exception.ptr()) }
    }

    /// A cached request object of `t` (slot `i`) if nothing else holds it,
    /// rebound to `generation`; otherwise a new one that replaces the cache.
    pub(super) unsafe fn request_object(&mut self, i: usize, generation: u64) -> Option<Obj> {
        if let Some(o) = &self.cached[i] {
            if ffi::Py_REFCNT(o.ptr()) == 1 {
                objects::rebind(o.ptr(), generation);
                return Some(o.clone());
            }
        }
        let t = [
            self.types.input,
            self.types.errors,
            self.types.start_response,
            self.types.writer,
        ][i];
        let o = Obj::owned(objects::new_object(t, generation))?;
        self.cached[i] = Some(o.clone());
        Some(o)
    }

    /// Loads (or returns the cached module of) the WSGI script at `path`.
    /// With `reload`, a script whose file changed since loading is run afresh.
    pub fn script(&mut self, path: &[u8], reload: bool) -> Result<Obj, String> {
        let path_str = std::str::from_utf8(path).map_err(|_| {
            format!(
                "script path {:?} is not UTF-8",
                String::from_utf8_lossy(path)
            )
        })?;
        if let Some(s) = self.scripts.get(path) {
            if !reload || file_mtime(path_str) == Some(s.mtime) {
                return Ok(s.module.clone());
            }
        }
        let mtime = file_mtime(path_str).ok_or_else(|| {
            format!("cannot load WSGI script {path_str}: no such file or not readable")
        })?;
        let name = format!("_lswsgi_script_{:016x}", fnv1a(path));
        // SAFETY: GIL held.
        let module = unsafe {
            let py_path = Obj::owned(ffi::PyUnicode_DecodeFSDefaultAndSize(
                path.as_ptr().cast(),
                path.len() as ffi::Py_ssize_t,
            ))
            .ok_or_else(|| self.take_exception())?;
            let py_name =
                Obj::owned(py::latin1(name.as_bytes())).ok_or_else(|| self.take_exception())?;
            let args = Obj::owned(ffi::PyTuple_Pack(2, py_path.ptr(), py_name.ptr()))
                .ok_or_else(|| self.take_exception())?;
            Obj::owned(ffi::PyObject_Call(
                self.load_script.ptr(),
                args.ptr(),
                ptr::null_mut(),
            ))
            .ok_or_else(|| {
                format!(
                    "cannot load WSGI script {path_str}:\n{}",
                    self.take_exception()
                )
            })?
        };
        self.scripts.insert(
            path.to_vec(),
            Script {
                module: module.clone(),
                mtime,
            },
        );
        Ok(module)
    }

    /// Imports a dotted module name (for `-m package.module`).
    pub fn import(&mut self, name: &str) -> Result<Obj, String> {
        // SAFETY: GIL held.
        unsafe {
            let n = Obj::owned(py::latin1(name.as_bytes())).ok_or_else(|| self.take_exception())?;
            Obj::owned(ffi::PyObject_CallOneArg(self.import_module.ptr(), n.ptr()))
                .ok_or_else(|| format!("cannot import {name}:\n{}", self.take_exception()))
        }
    }

    /// The attribute `callable` of `module`, which must be callable.
    pub fn callable(&self, module: &Obj, callable: &[u8]) -> Result<Obj, String> {
        let name = String::from_utf8_lossy(callable);
        // SAFETY: GIL held.
        unsafe {
            let attr = Obj::owned(py::latin1(callable)).ok_or_else(|| self.take_exception())?;
            let app =
                Obj::owned(ffi::PyObject_GetAttr(module.ptr(), attr.ptr())).ok_or_else(|| {
                    ffi::PyErr_Clear();
                    format!(
                        "WSGI callable {name:?} not found in {}",
                        py::to_string(module.ptr())
                    )
                })?;
            if ffi::PyCallable_Check(app.ptr()) == 0 {
                return Err(format!("WSGI callable {name:?} is not callable"));
            }
            Ok(app)
        }
    }
}

/// Modification time of a readable file.
fn file_mtime(path: &str) -> Option<(i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() || !readable(path) {
        return None;
    }
    Some((m.mtime(), m.mtime_nsec()))
}

/// FNV-1a: a stable, dependency-free hash for module names.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
    })
}

/// How the worker was asked to find the application.
pub struct Options {
    /// `-m FILE[:CALLABLE]` (or a dotted module name): one application for
    /// every request, loaded before serving.
    pub preload: Option<String>,
    /// ProcessGroup mode: `wsgi.multiprocess` is True.
    pub multiprocess: bool,
    /// Load the `-m` application now (false: on the first request, as in a
    /// suEXEC daemon whose root parent must never run application code).
    pub load_now: bool,
    /// LSAPI_MAX_APP_GROUPS: most application groups (sub-interpreters) this
    /// process creates; a request for another one is answered 500.
    pub max_groups: usize,
}

/// The preloaded application (`-m`).
struct Preload {
    target: String,
    callable: Option<String>,
    module: Option<Obj>,
}

/// The application found for the previous request, reused while the next
/// one names the same group, script and callable (and reloading is off).
struct LastApp {
    interp: usize,
    script: Vec<u8>,
    callable: Vec<u8>,
    app: Obj,
}

/// The interpreters plus how applications are found.
///
/// `interps[0]` is the main interpreter; each named WSGIApplicationGroup gets
/// a sub-interpreter, created on first use and kept for the process's life.
/// All share the one GIL (CPython 3.11 legacy sub-interpreters), so
/// switching is a `PyThreadState_Swap`; every Python object stays in the
/// interpreter that made it, which is why request types, interned keys and
/// loaded scripts live in each [`Interp`].
pub struct Runtime {
    interps: Vec<Interp>,
    /// Group name of each entry of `interps` (empty for the main one).
    groups: Vec<Vec<u8>>,
    current: usize,
    preload: Option<Preload>,
    last: Option<LastApp>,
    /// ProcessGroup mode.
    pub multiprocess: bool,
    /// LSAPI_MAX_APP_GROUPS.
    max_groups: usize,
    /// Group names refused for the cap, each logged once (at most
    /// [`REFUSED_LOGGED`] remembered).
    refused: Vec<Vec<u8>>,
}

/// How many refused group names are remembered to log each only once.
const REFUSED_LOGGED: usize = 64;

/// Whether `group` names the main interpreter: empty, `%{GLOBAL}` or `global`.
fn is_global_group(group: &[u8]) -> bool {
    group.is_empty()
        || group.eq_ignore_ascii_case(b"%{GLOBAL}")
        || group.eq_ignore_ascii_case(b"global")
}

impl Runtime {
    /// Sets up the main interpreter and loads the `-m` script, if any. A
    /// script that fails to load is logged and retried on each request, so a
    /// fixed file brings the site back without a restart.
    pub fn new(opts: Options) -> Result<Runtime, String> {
        let interp = Interp::new()?;
        let preload = opts.preload.map(|spec| {
            let (target, callable) = split_preload(&spec);
            Preload {
                target,
                callable,
                module: None,
            }
        });
        let mut rt = Runtime {
            interps: vec![interp],
            groups: vec![Vec::new()],
            current: 0,
            preload,
            last: None,
            multiprocess: opts.multiprocess,
            max_groups: opts.max_groups,
            refused: Vec::new(),
        };
        if rt.preload.is_some() && opts.load_now && misconfigured().is_none() {
            if let Err(e) = rt.load_preload() {
                crate::error!("{e}");
            }
        }
        release_startup_garbage();
        Ok(rt)
    }

    /// The interpreter serving the current request.
    #[inline]
    pub fn interp(&mut self) -> &mut Interp {
        &mut self.interps[self.current]
    }

    /// Whether one application serves every request (`-m`).
    pub fn preloaded(&self) -> bool {
        self.preload.is_some()
    }

    /// Makes the interpreter of application group `group` current, creating
    /// it on first use.
    fn select_group(&mut self, group: &[u8]) -> Result<(), String> {
        let idx = if is_global_group(group) {
            0
        } else if let Some(i) = self.groups.iter().position(|g| g == group) {
            i
        } else if self.interps.len() > self.max_groups {
            return Err(self.refuse_group(group));
        } else {
            self.create_group(group)?
        };
        if idx != self.current {
            // SAFETY: GIL held; both thread states belong to this thread.
            unsafe { ffi::PyThreadState_Swap(self.interps[idx].tstate) };
            self.current = idx;
        }
        Ok(())
    }

    /// The error for a request naming a new group beyond LSAPI_MAX_APP_GROUPS
    /// (answered 500: serving it in another interpreter would silently mix
    /// applications that asked to be apart). Logged once per name.
    fn refuse_group(&mut self, group: &[u8]) -> String {
        let msg = format!(
            "application group {:?} not created: this process already has {} \
             (LSAPI_MAX_APP_GROUPS={}); answering 500",
            String::from_utf8_lossy(group),
            self.interps.len() - 1,
            self.max_groups
        );
        if !self.refused.iter().any(|g| g == group) && self.refused.len() < REFUSED_LOGGED {
            self.refused.push(group.to_vec());
            crate::error!("{msg}");
        }
        msg
    }

    /// A new sub-interpreter for `group`. On failure the current interpreter
    /// is unchanged.
    fn create_group(&mut self, group: &[u8]) -> Result<usize, String> {
        let name = String::from_utf8_lossy(group).into_owned();
        // SAFETY: GIL held. Py_NewInterpreter makes the new thread state
        // current; the previous one is restored on failure.
        unsafe {
            let previous = ffi::PyThreadState_Get();
            let tstate = ffi::Py_NewInterpreter();
            if tstate.is_null() {
                ffi::PyThreadState_Swap(previous);
                return Err(format!(
                    "cannot create the interpreter for application group {name:?}"
                ));
            }
            match Interp::new() {
                Ok(interp) => {
                    ffi::PyThreadState_Swap(previous);
                    self.interps.push(interp);
                    self.groups.push(group.to_vec());
                    crate::info!("created the interpreter for application group {name:?}");
                    Ok(self.interps.len() - 1)
                }
                Err(e) => {
                    ffi::Py_EndInterpreter(tstate);
                    ffi::PyThreadState_Swap(previous);
                    Err(format!("cannot set up application group {name:?}: {e}"))
                }
            }
        }
    }

    fn load_preload(&mut self) -> Result<Obj, String> {
        let p = self.preload.as_ref().expect("preload configured");
        if let Some(m) = &p.module {
            return Ok(m.clone());
        }
        let target = p.target.clone();
        let main = &mut self.interps[0];
        let module = if Path::new(&target).is_file() {
            let abs = std::fs::canonicalize(&target)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or(target);
            main.script(abs.as_bytes(), false)?
        } else if !target.contains('/') && !target.ends_with(".py") && !target.ends_with(".wsgi") {
            main.import(&target)?
        } else {
            return Err(format!("cannot load WSGI script {target}: no such file"));
        };
        self.preload.as_mut().expect("preload").module = Some(module.clone());
        Ok(module)
    }

    /// The application for a request, with its interpreter made current: the
    /// `-m` one (always in the main interpreter), or the script at
    /// `script_filename` in application group `group`. `callable` is
    /// WSGICallableObject (default `application`, unless `-m FILE:CALLABLE`
    /// names one).
    pub fn app(
        &mut self,
        group: &[u8],
        script_filename: &[u8],
        callable: Option<&[u8]>,
        reload: bool,
    ) -> Result<Obj, String> {
        if let Some(why) = misconfigured() {
            log_misconfigured(MISCONFIGURED_DETAIL.get().map_or(why, String::as_str));
            return Err(why.to_string());
        }
        let group = if self.preload.is_some() {
            b"".as_slice()
        } else {
            group
        };
        self.select_group(group)?;
        let callable_key = callable.unwrap_or(b"");
        if let Some(last) = &self.last {
            if !reload
                && last.interp == self.current
                && last.callable == callable_key
                && (self.preload.is_some() || last.script == script_filename)
            {
                return Ok(last.app.clone());
            }
        }
        let app = self.find_app(script_filename, callable, reload)?;
        self.last = Some(LastApp {
            interp: self.current,
            script: script_filename.to_vec(),
            callable: callable_key.to_vec(),
            app: app.clone(),
        });
        Ok(app)
    }

    fn find_app(
        &mut self,
        script_filename: &[u8],
        callable: Option<&[u8]>,
        reload: bool,
    ) -> Result<Obj, String> {
        if self.preload.is_some() {
            let module = self.load_preload()?;
            let name = self.preload.as_ref().and_then(|p| p.callable.clone());
            let name = name
                .as_deref()
                .map(str::as_bytes)
                .or(callable)
                .unwrap_or(b"application");
            return self.interps[0].callable(&module, name);
        }
        if script_filename.is_empty() {
            return Err("the request names no SCRIPT_FILENAME and no -m script was given".into());
        }
        let interp = self.interp();
        let module = interp.script(script_filename, reload)?;
        interp.callable(&module, callable.unwrap_or(b"application"))
    }
}

impl Runtime {
    /// Whether any application group (sub-interpreter) was created.
    pub fn has_groups(&self) -> bool {
        self.interps.len() > 1
    }

    /// Calls `f` with each interpreter current, the sub-interpreters in the
    /// order they were created and the main one last (as mod_wsgi runs exit
    /// work), passing the group's name (empty for the main interpreter). The
    /// main interpreter is current on return.
    pub fn each_interp(&mut self, mut f: impl FnMut(&str)) {
        self.last = None;
        for i in (1..self.interps.len()).chain([0]) {
            // SAFETY: GIL held on the serving thread, which owns every
            // interpreter's thread state.
            unsafe { ffi::PyThreadState_Swap(self.interps[i].tstate) };
            self.current = i;
            f(&String::from_utf8_lossy(&self.groups[i]));
        }
    }
}

impl Drop for Runtime {
    /// Returns to the main interpreter and leaves the sub-interpreters alive:
    /// `Py_EndInterpreter` aborts the process when an application thread is
    /// still running in one ("not the last thread"), and a process that is
    /// exiting gains nothing from tearing them down. Their Rust-held
    /// references are leaked with them, so no Python code runs in an
    /// interpreter that is not current.
    fn drop(&mut self) {
        self.last = None;
        for interp in self.interps.drain(1..) {
            std::mem::forget(interp);
        }
        // SAFETY: GIL held on the serving thread; the main thread state is ours.
        unsafe { ffi::PyThreadState_Swap(self.interps[0].tstate) };
        self.current = 0;
    }
}

/// Collects start-up garbage (compiling, .pth processing) and returns the
/// freed heap pages to the system, so every idle worker is smaller.
fn release_startup_garbage() {
    // SAFETY: GIL held; PyGC_Collect and malloc_trim have no preconditions.
    unsafe {
        ffi::PyGC_Collect();
        libc::malloc_trim(0);
    }
}

/// Splits `FILE[:CALLABLE]`.
fn split_preload(spec: &str) -> (String, Option<String>) {
    match spec.rsplit_once(':') {
        Some((file, callable))
            if !callable.is_empty()
                && !callable.contains('/')
                && callable.chars().all(|c| c.is_alphanumeric() || c == '_') =>
        {
            (file.to_string(), Some(callable.to_string()))
        }
        _ => (spec.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::venv_version;

    #[test]
    fn pyvenv_cfg_versions() {
        let venv = "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.12.1\n";
        assert_eq!(venv_version(venv).as_deref(), Some("3.12"));
        let uv =
            "home = /opt/py/bin\nimplementation = CPython\nuv = 0.4.0\nversion_info = 3.10.13\n";
        assert_eq!(venv_version(uv).as_deref(), Some("3.10"));
        // virtualenv writes both; the first wins and they agree.
        let both = "version_info = 3.13.0.final.0\nversion = 3.13.0\n";
        assert_eq!(venv_version(both).as_deref(), Some("3.13"));
        assert_eq!(venv_version("home = /usr/bin\n"), None);
        assert_eq!(venv_version("version = garbage\n"), None);
        assert_eq!(venv_version("executable = /x/version = 3.1\n"), None);
    }
}
