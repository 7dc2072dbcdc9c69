//! Finding the application for a request: the `-m` one or a WSGI script,
//! in the main interpreter or the sub-interpreter of its application group
//! (created on first use, up to LSAPI_MAX_APP_GROUPS).

use super::super::py::{ffi, Obj};
use super::installation::{misconfigured, misconfigured_again};
use super::state::Interp;
use std::path::Path;

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
        if let Some(why) = misconfigured_again() {
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
