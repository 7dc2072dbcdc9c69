//! The Python side: the embedded interpreter, WSGI scripts, and serving one
//! request (PEP 3333) from a parsed LSAPI request to a written response.
//!
//! The worker is single-threaded and holds the GIL except while it waits for
//! the next request (so application threads can run then).
//!
//! # Request state and aliasing
//! Per-request state lives in one process-wide [`Ctx`], reached from
//! `serve` and from the request objects' methods (start_response, write,
//! wsgi.input, wsgi.errors) through [`ctx`], which hands out only shared
//! references: every field is a `Cell`, so no `&mut Ctx` ever exists. The
//! connection is held as a raw pointer and reached only through
//! [`Ctx::with_conn`], whose closure gets a `&mut Conn` that lives for that
//! closure alone and must not call into Python (no Python code runs, so no
//! callback can reach the connection while that `&mut` lives, and
//! `with_conn` is never nested). `serve` turns the `&mut Conn` it is given
//! into that raw pointer at once and keeps no reference across a call into
//! Python. All of it is touched only with the GIL held, which serialises
//! the main thread with any application thread that calls a request object.

mod asgi;
mod environ;
pub mod errpage;
pub mod immortal;
pub mod interp;
mod objects;
pub mod py;
mod respond;
mod response;

use crate::config::AppInterface;
use lswsgi::conn::Conn;
use response::{Response, State};
use std::cell::Cell;
use std::io;

pub use interp::{adopt_pythonpath, init_python, Options, Runtime};

/// State of the request in flight (see the module doc for the rules).
pub struct Ctx {
    /// The connection being served (valid while `active`).
    conn: Cell<*mut Conn>,
    /// Incremented per request; request objects remember theirs.
    generation: Cell<u64>,
    /// A request is in flight.
    active: Cell<bool>,
    /// The response of the request in flight and what of it went out.
    resp: Response,
    /// LSAPI_STDERR_LOG is set: wsgi.errors goes to fd 2, not the server.
    errors_to_fd2: Cell<bool>,
    /// The thread that runs requests.
    main_thread: Cell<libc::pthread_t>,
    /// Scratch for wsgi.input.readline lines that span buffer refills
    /// (taken out while in use, put back after).
    line: Cell<Vec<u8>>,
    /// The `write` callable for the request in flight (a new reference is
    /// handed out by start_response).
    writer: Cell<*mut py::ffi::PyObject>,
    /// LSAPI_APP_INTERFACE: how applications are called.
    interface: Cell<AppInterface>,
    /// ASGI: the last `http.request` message (more_body false) went out.
    body_done: Cell<bool>,
    /// ASGI: the scope and message keys of the interpreter serving the
    /// request in flight (null when none is).
    asgi_keys: Cell<*const asgi::Keys>,
}

/// Capacity the readline scratch is cut back to between requests (bytes).
const LINE_KEEP: usize = 64 * 1024;

impl Ctx {
    /// Runs `f` on the connection of the request in flight.
    ///
    /// # Safety
    /// A request is active (`conn` points at its live connection), and `f`
    /// neither calls into Python nor calls `with_conn` again: the `&mut Conn`
    /// it gets is then the only reference to the connection while it lives.
    #[inline]
    unsafe fn with_conn<R>(&self, f: impl FnOnce(&mut Conn) -> R) -> R {
        debug_assert!(self.active.get() && !self.conn.get().is_null());
        // SAFETY: `conn` points at the live connection and this `&mut` is
        // its only reference while `f` runs (the contract).
        f(unsafe { &mut *self.conn.get() })
    }

    /// A new reference to this request's `write` callable.
    ///
    /// # Safety
    /// GIL held; a request is active (its `write` callable is set).
    unsafe fn writer(&self) -> *mut py::ffi::PyObject {
        // SAFETY: GIL held and `writer` a live object (the contract).
        unsafe {
            let w = self.writer.get();
            py::ffi::Py_INCREF(w);
            w
        }
    }

    /// Whether the caller runs on the thread that serves requests.
    #[inline]
    fn on_main_thread(&self) -> bool {
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_equal(libc::pthread_self(), self.main_thread.get()) != 0 }
    }

    /// Cuts the readline scratch back if one request grew it.
    fn trim_scratch(&self) {
        let line = self.line.take();
        if line.capacity() > LINE_KEEP {
            self.line.set(Vec::with_capacity(1024));
        } else {
            self.line.set(line);
        }
    }
}

struct Global(Ctx);
// SAFETY: only touched with the GIL held (see module doc), which orders every
// access; `on_main_thread` keeps other threads away from the connection.
unsafe impl Sync for Global {}

static CTX: Global = Global(Ctx {
    conn: Cell::new(std::ptr::null_mut()),
    generation: Cell::new(0),
    active: Cell::new(false),
    resp: Response::new(),
    errors_to_fd2: Cell::new(false),
    main_thread: Cell::new(0),
    line: Cell::new(Vec::new()),
    writer: Cell::new(std::ptr::null_mut()),
    interface: Cell::new(AppInterface::Auto),
    body_done: Cell::new(false),
    asgi_keys: Cell::new(std::ptr::null()),
});

/// The process-wide request context.
///
/// # Safety
/// GIL held.
#[inline]
unsafe fn ctx() -> &'static Ctx {
    &CTX.0
}

/// Writes an error-log line for the request in flight: to the server's log
/// (STDERR_STREAM) while a request is active, its response not yet ended,
/// and wsgi.errors goes there; to fd 2 otherwise. After RESP_END the server
/// takes the next packets as the next request's, so nothing more of this
/// request may go there.
pub fn log_request_error(conn: &mut Conn, msg: &str) {
    // SAFETY: GIL held by every caller (main thread, serving).
    let to_server = unsafe {
        let c = ctx();
        c.active.get() && !c.errors_to_fd2.get() && c.resp.state() != State::Ended
    };
    if to_server && conn.fd() >= 0 {
        let mut line = String::with_capacity(msg.len() + 24);
        line.push_str("[lswsgi] ");
        line.push_str(msg);
        if !line.ends_with('\n') {
            line.push('\n');
        }
        if conn.write_stderr(line.as_bytes()).is_ok() {
            return;
        }
    }
    crate::error!("{msg}");
}

/// Sets up [`Ctx`] for the process: the thread that serves requests, where
/// wsgi.errors goes and which interface applications speak.
pub fn init_context(errors_to_fd2: bool, interface: AppInterface) {
    // SAFETY: called once before serving, on the main thread with the GIL.
    unsafe {
        let c = ctx();
        c.main_thread.set(libc::pthread_self());
        c.errors_to_fd2.set(errors_to_fd2);
        c.interface.set(interface);
        c.line.set(Vec::with_capacity(1024));
    }
}

pub(crate) use respond::serve;

/// Runs `f` with the GIL released, so application threads can run while the
/// worker blocks. `f` must not touch Python.
pub fn without_gil<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: called on the main thread holding the GIL; restored before return.
    unsafe {
        let state = py::ffi::PyEval_SaveThread();
        let r = f();
        py::ffi::PyEval_RestoreThread(state);
        r
    }
}

/// The connection's blocking hook while a request is served: the GIL is
/// released around each blocking read or write, so application threads keep
/// running while the worker waits on the server. The system call touches no
/// Python state, and other threads cannot reach the connection (request
/// objects check `on_main_thread`).
fn release_gil(f: &mut dyn FnMut()) {
    without_gil(f)
}

// ---- ProcessGroup support: fork hygiene and child exit -------------------

/// Forks with the interpreter's fork protocol (PyOS_BeforeFork, then
/// PyOS_AfterFork_Parent or PyOS_AfterFork_Child, which also runs
/// `os.register_at_fork` hooks). Returns 0 in the child, the child's pid in
/// the parent. Main thread with the GIL.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: main thread holding the GIL, as the PyOS_* fork calls require.
    unsafe {
        py::ffi::PyOS_BeforeFork();
        let parent = libc::getpid();
        let pid = libc::fork();
        if pid == 0 {
            // Before the application's at-fork hooks, which may hang: the
            // child dies with its parent (and at once if it already has).
            if !crate::status::die_with_parent(parent, libc::SIGKILL) {
                libc::_exit(1);
            }
            py::ffi::PyOS_AfterFork_Child();
            after_fork();
            return Ok(0);
        }
        let err = io::Error::last_os_error();
        py::ffi::PyOS_AfterFork_Parent();
        if pid < 0 {
            return Err(err);
        }
        Ok(pid)
    }
}

/// Re-derives per-process request state in a freshly forked child: the
/// thread that serves requests is the one that called fork.
pub fn after_fork() {
    // SAFETY: the forked child has only this thread; no request is in flight.
    unsafe {
        ctx().main_thread.set(libc::pthread_self());
    }
}

/// Moves every object the garbage collector tracks into its permanent
/// generation (`gc.freeze()`, Python ≥ 3.7), so collections in forked
/// children never write to pages shared with the parent. Returns how many
/// objects were frozen, or `None` where gc.freeze does not exist.
pub fn gc_freeze() -> Option<usize> {
    // SAFETY: main thread with the GIL; every reference is owned by an Obj.
    unsafe {
        let count = || {
            let gc = py::Obj::owned(py::ffi::PyImport_ImportModule(c"gc".as_ptr()))?;
            let call = |name: &std::ffi::CStr| {
                let f = py::ffi::PyObject_GetAttrString(gc.ptr(), name.as_ptr());
                let f = py::Obj::owned(f)?;
                py::Obj::owned(py::ffi::PyObject_CallNoArgs(f.ptr()))
            };
            let n = call(c"freeze").and_then(|_| call(c"get_freeze_count"))?;
            Some(py::ffi::PyLong_AsSsize_t(n.ptr()))
        };
        let n = count();
        // Whichever step failed (no gc.freeze before 3.7), nothing stays pending.
        py::ffi::PyErr_Clear();
        n.map(|n| n.max(0) as usize)
    }
}

/// How a process ends once its exit work is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `Py_FinalizeEx` the main interpreter when no application group was
    /// created (a Worker-mode process, a group parent), then exit.
    Finalize,
    /// `_exit` straight away: a forked child, whose teardown would only copy
    /// pages shared with the parent in order to free them.
    Exit,
}

/// What the watchdog reports if the deadline passes: the stage in progress.
static STAGE: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn set_stage(s: String) {
    *STAGE.lock().unwrap_or_else(|e| e.into_inner()) = s;
}

/// Ends the process with `code`: in every interpreter (application groups
/// first, the main one last) waits for non-daemon threads
/// (`threading._shutdown`), runs the `atexit` handlers and flushes
/// sys.stdout and sys.stderr; then finalizes or exits as `end` says. No
/// sub-interpreter is ever ended (see `Runtime`'s Drop), and a main
/// interpreter that has groups is not finalized either (from Python 3.13
/// `Py_FinalizeEx` ends the remaining sub-interpreters itself). All of it runs
/// under a deadline of `timeout_secs` (LSAPI_SHUTDOWN_TIMEOUT): past it a
/// watchdog thread logs the stage that hung and `_exit`s with `code`.
/// Main thread with the GIL, no request in flight.
pub fn shutdown(mut rt: Runtime, end: End, timeout_secs: u64, code: i32) -> ! {
    let deadline = std::time::Duration::from_secs(timeout_secs);
    set_stage("starting".into());
    let spawned = std::thread::Builder::new()
        .name("lswsgi-shutdown".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            let stage = STAGE.lock().unwrap_or_else(|e| e.into_inner()).clone();
            crate::error!(
                "shutdown not done after {timeout_secs} s (LSAPI_SHUTDOWN_TIMEOUT), while \
                 {stage}; exiting now"
            );
            crate::sys::exit_now(code)
        });
    if let Err(e) = spawned {
        // Without a watchdog the exit work could hang for ever: skip it.
        crate::error!("cannot start the shutdown watchdog ({e}); exiting without exit work");
        crate::sys::exit_now(code);
    }
    rt.each_interp(|group| {
        let which = if group.is_empty() {
            "the main interpreter".to_string()
        } else {
            format!("application group {group:?}")
        };
        set_stage(format!("running the exit work of {which}"));
        run_exit_hooks(&which);
    });
    let finalize = end == End::Finalize && !rt.has_groups();
    drop(rt);
    if finalize {
        set_stage("finalizing the main interpreter".into());
        // SAFETY: main thread with the GIL, main interpreter current, no
        // sub-interpreter exists, no request in flight.
        unsafe { py::ffi::Py_FinalizeEx() };
    }
    crate::sys::exit_now(code)
}

/// What a normal interpreter exit does that applications rely on — wait for
/// non-daemon threads, run `atexit` handlers, flush sys.stdout and
/// sys.stderr — for the current interpreter, without tearing it down.
fn run_exit_hooks(which: &str) {
    // SAFETY: main thread with the GIL, no request in flight; references are
    // owned by Obj or borrowed from sys.modules for the duration of a call.
    unsafe {
        let call_in = |module: *mut py::ffi::PyObject, name: &std::ffi::CStr| {
            let f = py::ffi::PyObject_GetAttrString(module, name.as_ptr());
            if let Some(f) = py::Obj::owned(f) {
                if py::Obj::owned(py::ffi::PyObject_CallNoArgs(f.ptr())).is_none() {
                    crate::error!(
                        "at exit of {which}, {name:?} failed: {}",
                        py::take_exception(std::ptr::null_mut())
                    );
                }
            }
            py::ffi::PyErr_Clear();
        };
        let modules = py::ffi::PyImport_GetModuleDict();
        let threading = py::ffi::PyDict_GetItemString(modules, c"threading".as_ptr());
        if !threading.is_null() {
            set_stage(format!("waiting for the non-daemon threads of {which}"));
            call_in(threading, c"_shutdown");
        }
        set_stage(format!("running the atexit handlers of {which}"));
        if let Some(atexit) = py::Obj::owned(py::ffi::PyImport_ImportModule(c"atexit".as_ptr())) {
            call_in(atexit.ptr(), c"_run_exitfuncs");
        }
        py::ffi::PyErr_Clear();
        for stream in [c"stdout", c"stderr"] {
            let s = py::ffi::PySys_GetObject(stream.as_ptr());
            if !s.is_null() {
                call_in(s, c"flush");
            }
        }
    }
}
