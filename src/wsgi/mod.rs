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

use crate::conn::Conn;
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
    let conn = &mut *c.conn;
    conn.begin_write();
    if !c.headers_sent {
        conn.head.finish(c.status);
        conn.push_head();
        c.headers_sent = true;
    }
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

/// Shuts the interpreter down, running `atexit` handlers.
pub fn finalize() {
    // SAFETY: main thread with the GIL, no request in flight.
    unsafe {
        py::ffi::Py_FinalizeEx();
    }
}
