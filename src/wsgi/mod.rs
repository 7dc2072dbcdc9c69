//! The Python side: the embedded interpreter, WSGI scripts, and serving one
//! request (PEP 3333) from a parsed LSAPI request to a written response.
//!
//! The worker is single-threaded and holds the GIL except while it waits for
//! the next request (so application threads can run then). Per-request state
//! lives in one process-wide [`Ctx`], reached from the request objects'
//! methods through [`ctx`]; it is only ever touched on the main thread with
//! the GIL held, and no Rust reference to it is kept across a call into
//! Python.

mod environ;
pub mod interp;
mod objects;
pub mod py;
mod respond;

use lswsgi::conn::Conn;
use objects::Types;
use std::cell::UnsafeCell;
use std::io;

pub use interp::{init_python, Options, Runtime};

/// State of the request in flight.
pub struct Ctx {
    /// The connection being served (valid while `active`).
    conn: *mut Conn,
    /// Incremented per request; request objects remember theirs.
    generation: u64,
    /// A request is in flight.
    active: bool,
    /// Status code given to start_response; 0 = not called yet.
    status: u16,
    /// RESP_HEADER has gone out.
    headers_sent: bool,
    /// LSAPI_STDERR_LOG is set: wsgi.errors goes to fd 2, not the server.
    errors_to_fd2: bool,
    /// The thread that runs requests.
    main_thread: libc::pthread_t,
    /// Types of the interpreter serving the request.
    types: Types,
    /// Scratch for wsgi.input.readline lines that span buffer refills.
    line: Vec<u8>,
    /// The `write` callable for the request in flight (a new reference is
    /// handed out by start_response).
    writer: *mut py::ffi::PyObject,
}

impl Ctx {
    /// Starts a write on the request's connection with the response head in
    /// front if it has not gone out yet.
    ///
    /// # Safety
    /// A request is active (`conn` points at its live connection).
    unsafe fn begin_write(&mut self) -> &mut Conn {
        let conn = &mut *self.conn;
        conn.begin_write();
        if !self.headers_sent {
            conn.head.finish(self.status);
            conn.push_head();
            self.headers_sent = true;
        }
        conn
    }

    /// A new reference to this request's `write` callable.
    unsafe fn writer(&self) -> *mut py::ffi::PyObject {
        py::ffi::Py_INCREF(self.writer);
        self.writer
    }

    /// Whether the caller runs on the thread that serves requests.
    #[inline]
    fn on_main_thread(&self) -> bool {
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_equal(libc::pthread_self(), self.main_thread) != 0 }
    }
}

struct Global(UnsafeCell<Ctx>);
// SAFETY: only touched with the GIL held on the main thread (see module doc);
// `on_main_thread` guards the entry points other Python threads could reach.
unsafe impl Sync for Global {}

static CTX: Global = Global(UnsafeCell::new(Ctx {
    conn: std::ptr::null_mut(),
    generation: 0,
    active: false,
    status: 0,
    headers_sent: false,
    errors_to_fd2: false,
    main_thread: 0,
    types: Types {
        input: std::ptr::null_mut(),
        errors: std::ptr::null_mut(),
        start_response: std::ptr::null_mut(),
        writer: std::ptr::null_mut(),
    },
    line: Vec::new(),
    writer: std::ptr::null_mut(),
}));

/// The process-wide request context.
///
/// # Safety
/// GIL held, main thread (or only reading `active`/`generation` to decide
/// that the caller is not the main thread's request), and the returned
/// reference not kept across calls into Python.
#[allow(clippy::mut_from_ref)]
#[inline]
unsafe fn ctx() -> &'static mut Ctx {
    &mut *CTX.0.get()
}

/// Sends `data` as body bytes, preceded by the response head if it has not
/// gone out yet, in one writev.
unsafe fn send_body(c: &mut Ctx, data: &[u8]) -> io::Result<()> {
    let conn = c.begin_write();
    conn.push_body(data);
    conn.flush()
}

/// Writes an error-log line for the request in flight: to the server's log
/// (STDERR_STREAM) when a request is active and wsgi.errors goes there, to
/// fd 2 otherwise.
pub fn log_request_error(conn: &mut Conn, msg: &str) {
    // SAFETY: main thread with the GIL, no Python call while `c` is used.
    let to_server = unsafe {
        let c = ctx();
        c.active && !c.errors_to_fd2
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

/// Sets up [`Ctx`] for the process: the thread that serves requests and where
/// wsgi.errors goes.
pub fn init_context(errors_to_fd2: bool) {
    // SAFETY: called once before serving, on the main thread.
    unsafe {
        let c = ctx();
        c.main_thread = libc::pthread_self();
        c.errors_to_fd2 = errors_to_fd2;
        c.line = Vec::with_capacity(1024);
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

// ---- ProcessGroup support: fork hygiene and child exit -------------------

/// Forks with the interpreter's fork protocol (PyOS_BeforeFork, then
/// PyOS_AfterFork_Parent or PyOS_AfterFork_Child, which also runs
/// `os.register_at_fork` hooks). Returns 0 in the child, the child's pid in
/// the parent. Main thread with the GIL.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: main thread holding the GIL, as the PyOS_* fork calls require.
    unsafe {
        py::ffi::PyOS_BeforeFork();
        let pid = libc::fork();
        if pid == 0 {
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
        ctx().main_thread = libc::pthread_self();
    }
}

/// Moves every object the garbage collector tracks into its permanent
/// generation (`gc.freeze()`, Python ≥ 3.7), so collections in forked
/// children never write to pages shared with the parent. Returns how many
/// objects were frozen, or `None` where gc.freeze does not exist.
pub fn gc_freeze() -> Option<usize> {
    // SAFETY: main thread with the GIL; every reference is owned by an Obj.
    unsafe {
        let gc = py::Obj::owned(py::ffi::PyImport_ImportModule(c"gc".as_ptr()))?;
        let call = |name: &std::ffi::CStr| {
            let f = py::ffi::PyObject_GetAttrString(gc.ptr(), name.as_ptr());
            let f = py::Obj::owned(f)?;
            py::Obj::owned(py::ffi::PyObject_CallNoArgs(f.ptr()))
        };
        let frozen = call(c"freeze").and_then(|_| call(c"get_freeze_count"));
        let n = frozen.map(|n| py::ffi::PyLong_AsSsize_t(n.ptr()));
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
