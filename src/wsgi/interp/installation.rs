//! Finding the Python installation to run and starting it: the standard
//! library of the Python the worker was built against (or another
//! installation of that version), a virtualenv's Python and whether it
//! matches, the build for another Python to exec instead, and what a suEXEC
//! daemon's root parent may trust of it all ([`crate::trust`]).

use super::super::py::ffi;
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

/// Whether this process may read `path` (access(2) with its real ids).
pub(super) fn readable(path: &str) -> bool {
    CString::new(path)
        // SAFETY: `c` is a valid C string for the duration of the call.
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
/// trusted path; otherwise a regular, executable file that group and others
/// cannot write ([`crate::trust::may_exec_build`]).
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
            && crate::trust::may_exec_build(c, &m, crate::suexec::is_root());
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

/// [`misconfigured`], logging the start-up problem again (see
/// [`log_misconfigured`]) when there is one: for each request refused.
pub(super) fn misconfigured_again() -> Option<&'static str> {
    let why = misconfigured()?;
    log_misconfigured(MISCONFIGURED_DETAIL.get().map_or(why, String::as_str));
    Some(why)
}

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
            crate::trust::python_path(Path::new(&bin), "LS_PYTHONBIN")?;
            // Its directory's parent: a virtualenv or an installation prefix.
            if let Some(prefix) = Path::new(&bin).parent().and_then(Path::parent) {
                crate::trust::python_prefix(prefix, BUILD_VERSION, "LS_PYTHONBIN")?;
            }
        }
        return Ok((bin, None));
    }
    if let Some(home) = env("PYTHONHOME") {
        if isolated {
            // The environment is ignored when isolated: pass it explicitly.
            crate::trust::python_prefix(Path::new(&home), BUILD_VERSION, "PYTHONHOME")?;
            return Ok((BUILD_EXECUTABLE.into(), Some(home)));
        }
        return Ok((BUILD_EXECUTABLE.into(), None));
    }
    if readable(&format!("{BUILD_STDLIB}/os.py")) {
        if isolated {
            // The installation the worker was built against (stdlib =
            // PREFIX/lib/pythonX.Y).
            if let Some(prefix) = Path::new(BUILD_STDLIB).parent().and_then(Path::parent) {
                crate::trust::python_prefix(prefix, BUILD_VERSION, "the Python prefix")?;
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
                if let Err(e) = crate::trust::python_prefix(
                    Path::new(&prefix),
                    BUILD_VERSION,
                    "the Python prefix",
                ) {
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

/// `Err` describing `st` when it is an error or an exit, naming `what`.
///
/// # Safety
/// `st` comes from a CPython initialisation call (its strings are NULL or
/// static C strings).
unsafe fn status_error(what: &str, st: ffi::PyStatus) -> Result<(), String> {
    // SAFETY: PyStatus_Exception only reads the struct.
    if unsafe { ffi::PyStatus_Exception(st) } == 0 {
        return Ok(());
    }
    let msg = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: non-NULL status strings are static C strings (caller).
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
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
/// [`crate::trust::root_trusted`] or it is dropped (logged). A relative entry
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
        match crate::trust::root_trusted(&abs) {
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
