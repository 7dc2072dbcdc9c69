//! The request objects an application sees: `wsgi.input`, `wsgi.errors`,
//! `start_response` and the `write` callable it returns.
//!
//! They are heap types made with `PyType_FromSpec` once per interpreter (not
//! pyo3 classes, whose type objects are process-wide statics and so unsound
//! across sub-interpreters). An instance holds only the generation number of
//! the request it was made for; every method checks it against the request in
//! flight ([`super::ctx`]), so an object kept past its request can never touch
//! another request's connection: stale input and start_response raise, stale
//! errors write to fd 2.

use super::ctx;
use super::py::{self, bytes_of, ffi, only_argument, raise, str_latin1};
use lswsgi::conn::ConnError;
use std::ffi::{c_int, c_void};
use std::ptr;

/// Instance layout shared by all four types.
#[repr(C)]
pub struct ReqObject {
    ob_base: ffi::PyObject,
    generation: u64,
}

/// The four type objects of one interpreter (owned by it for its life).
#[derive(Clone, Copy)]
pub struct Types {
    /// `wsgi.input`.
    pub input: *mut ffi::PyTypeObject,
    /// `wsgi.errors`.
    pub errors: *mut ffi::PyTypeObject,
    /// `start_response`.
    pub start_response: *mut ffi::PyTypeObject,
    /// The `write` callable.
    pub writer: *mut ffi::PyTypeObject,
}

/// A new instance of `t` bound to request `generation`.
///
/// # Safety
/// GIL held; `t` is one of this interpreter's [`Types`] (a `ReqObject` layout).
pub unsafe fn new_object(t: *mut ffi::PyTypeObject, generation: u64) -> *mut ffi::PyObject {
    // SAFETY: GIL held; `t`'s basicsize is a ReqObject's, so a non-NULL `o` points at one.
    unsafe {
        let o = ffi::PyType_GenericAlloc(t, 0);
        if !o.is_null() {
            (*(o as *mut ReqObject)).generation = generation;
        }
        o
    }
}

/// Rebinds an instance to a new request (used to reuse cached objects that
/// nobody else holds).
///
/// # Safety
/// GIL held; `o` is a live instance of one of the [`Types`].
pub unsafe fn rebind(o: *mut ffi::PyObject, generation: u64) {
    // SAFETY: `o` is a live ReqObject (the contract).
    unsafe {
        (*(o as *mut ReqObject)).generation = generation;
    }
}

/// # Safety
/// Called by CPython only, as tp_dealloc of a [`Types`] instance whose last reference went.
unsafe extern "C" fn dealloc(o: *mut ffi::PyObject) {
    // SAFETY: `o` is that instance, freed exactly once here; its type stays alive until
    // the DECREF that follows.
    unsafe {
        let t = ffi::Py_TYPE(o);
        ffi::PyObject_Free(o.cast());
        // Instances of heap types own a reference to their type.
        ffi::Py_DECREF(t.cast());
    }
}

/// Whether `o` belongs to the request in flight.
///
/// # Safety
/// GIL held; `o` is a live instance of one of the [`Types`].
#[inline]
pub(super) unsafe fn is_live(o: *mut ffi::PyObject) -> bool {
    // SAFETY: GIL held; `o` is a live ReqObject (the contract).
    unsafe {
        let c = ctx();
        c.active.get()
            && c.generation.get() == (*(o as *mut ReqObject)).generation
            && c.on_main_thread()
    }
}

/// # Safety
/// GIL held.
pub(super) unsafe fn stale(what: &str) -> *mut ffi::PyObject {
    // SAFETY: GIL held (the contract); every pointer passed to the C API is a live object.
    unsafe {
        raise(
            ffi::PyExc_RuntimeError,
            &format!("{what} used outside the request it belongs to"),
        )
    }
}

/// # Safety
/// GIL held.
unsafe fn conn_error(e: ConnError) -> *mut ffi::PyObject {
    // SAFETY: GIL held (the contract); every pointer passed to the C API is a live object.
    unsafe {
        raise(
            ffi::PyExc_OSError,
            &format!("lost the request body from the web server: {e}"),
        )
    }
}

/// Optional size argument: absent, None or negative → -1.
///
/// # Safety
/// GIL held; `args` points at `nargs` live arguments (METH_FASTCALL).
unsafe fn size_arg(args: *mut *mut ffi::PyObject, nargs: ffi::Py_ssize_t) -> Option<isize> {
    // SAFETY: GIL held; `*args` is read only when `nargs` is 1 (the contract).
    unsafe {
        if nargs > 1 {
            raise(ffi::PyExc_TypeError, "expected at most one argument");
            return None;
        }
        if nargs == 0 || *args == ffi::Py_None() {
            return Some(-1);
        }
        let n = ffi::PyLong_AsSsize_t(*args);
        if n == -1 && !ffi::PyErr_Occurred().is_null() {
            return None;
        }
        Some(n.max(-1))
    }
}

// ---- wsgi.input -----------------------------------------------------------

/// The size argument of a wsgi.input method on a live object; `None` with
/// an exception set otherwise.
///
/// # Safety
/// As for `size_arg`; `slf` is a wsgi.input instance.
unsafe fn input_args(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> Option<isize> {
    // SAFETY: the contract of size_arg and is_live.
    unsafe {
        let size = size_arg(args, nargs)?;
        if !is_live(slf) {
            stale("wsgi.input");
            return None;
        }
        Some(size)
    }
}

/// # Safety
/// Called by CPython only, as wsgi.input.read (METH_FASTCALL), with the GIL
/// held and live arguments.
unsafe extern "C" fn input_read(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        let Some(size) = input_args(slf, args, nargs) else {
            return ptr::null_mut();
        };
        let c = ctx();
        // SAFETY (with_conn): live object, so a request is active; no Python call.
        let left = c.with_conn(|conn| conn.body_left());
        let want = if size < 0 {
            left
        } else {
            left.min(size as u64)
        };
        if want > isize::MAX as u64 {
            return raise(
                ffi::PyExc_MemoryError,
                "request body too large to read at once",
            );
        }
        read_body_bytes(want as usize).unwrap_or_else(|e| conn_error(e))
    }
}

/// A new bytes object holding the next `want` body bytes, fewer only where
/// the body ends; NULL with an exception set if it cannot be made. `Err`
/// (the bytes object freed) when reading the body failed.
///
/// # Safety
/// GIL held; a request is active.
pub(super) unsafe fn read_body_bytes(want: usize) -> Result<*mut ffi::PyObject, ConnError> {
    // SAFETY: GIL held, request active (the contract); `b` is not visible to
    // Python until returned, and its uninitialised storage is written only as
    // MaybeUninit, then cut to what was read; the with_conn closure calls no
    // Python.
    unsafe {
        let b = py::new_bytes(want);
        if b.is_null() {
            return Ok(b);
        }
        let dst = std::slice::from_raw_parts_mut(
            ffi::PyBytes_AS_STRING(b) as *mut std::mem::MaybeUninit<u8>,
            want,
        );
        let read = ctx().with_conn(|conn| {
            let mut got = 0;
            while got < want {
                match conn.read_body_uninit(&mut dst[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => return Err(e),
                }
            }
            Ok(got)
        });
        match read {
            Ok(got) if got < want => Ok(py::shrink_bytes(b, got)),
            Ok(_) => Ok(b),
            Err(e) => {
                ffi::Py_DECREF(b);
                Err(e)
            }
        }
    }
}

/// Reads one line of at most `limit` bytes (`-1`: no limit), newline included.
/// The caller checked that the object is live (a request is active).
///
/// # Safety
/// GIL held; a request is active (the caller checked its object is live).
unsafe fn read_line(limit: isize) -> *mut ffi::PyObject {
    // SAFETY: GIL held, request active (the contract); the with_conn closure creates
    // bytes objects, which allocates but runs no Python code.
    unsafe {
        let c = ctx();
        let limit = if limit < 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let mut line = c.line.take();
        line.clear();
        // SAFETY (with_conn): a request is active; bytes objects are created
        // inside, which allocates but runs no Python code.
        let r = c.with_conn(|conn| {
            while line.len() < limit {
                let avail = conn.fill_body()?;
                if avail.is_empty() {
                    break;
                }
                let window = &avail[..avail.len().min(limit - line.len())];
                let (take, done) = match memchr::memchr(b'\n', window) {
                    Some(i) => (i + 1, true),
                    None => (window.len(), false),
                };
                if done && line.is_empty() {
                    // The whole line is buffered: one copy, straight into the result.
                    let r = ffi::PyBytes_FromStringAndSize(
                        window.as_ptr().cast(),
                        take as ffi::Py_ssize_t,
                    );
                    conn.consume_body(take);
                    return Ok(r);
                }
                line.extend_from_slice(&window[..take]);
                conn.consume_body(take);
                if done {
                    break;
                }
            }
            Ok(ffi::PyBytes_FromStringAndSize(
                line.as_ptr().cast(),
                line.len() as ffi::Py_ssize_t,
            ))
        });
        c.line.set(line);
        match r {
            Ok(b) => b,
            Err(e) => conn_error(e),
        }
    }
}

/// # Safety
/// Called by CPython only, as wsgi.input.readline (METH_FASTCALL), with the GIL
/// held and live arguments.
unsafe extern "C" fn input_readline(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        let Some(size) = input_args(slf, args, nargs) else {
            return ptr::null_mut();
        };
        if size == 0 {
            return ffi::PyBytes_FromStringAndSize(ptr::null(), 0);
        }
        read_line(size)
    }
}

/// # Safety
/// Called by CPython only, as wsgi.input.readlines (METH_FASTCALL), with the
/// GIL held and live arguments.
unsafe extern "C" fn input_readlines(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        let Some(hint) = input_args(slf, args, nargs) else {
            return ptr::null_mut();
        };
        let list = ffi::PyList_New(0);
        if list.is_null() {
            return list;
        }
        let mut total = 0usize;
        loop {
            let line = read_line(-1);
            if line.is_null() {
                ffi::Py_DECREF(list);
                return line;
            }
            let n = py::bytes_len(line);
            if n == 0 {
                ffi::Py_DECREF(line);
                break;
            }
            let r = ffi::PyList_Append(list, line);
            ffi::Py_DECREF(line);
            if r < 0 {
                ffi::Py_DECREF(list);
                return ptr::null_mut();
            }
            total += n;
            if hint > 0 && total >= hint as usize {
                break;
            }
        }
        list
    }
}

/// # Safety
/// Called by CPython only, as tp_iter of wsgi.input, with the GIL held and live arguments.
unsafe extern "C" fn input_iter(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        ffi::Py_INCREF(slf);
        slf
    }
}

/// # Safety
/// Called by CPython only, as tp_iternext of wsgi.input, with the GIL held and live arguments.
unsafe extern "C" fn input_next(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        if !is_live(slf) {
            return stale("wsgi.input");
        }
        let line = read_line(-1);
        if !line.is_null() && py::bytes_len(line) == 0 {
            ffi::Py_DECREF(line);
            return ptr::null_mut(); // end of iteration, no exception set
        }
        line
    }
}

// ---- wsgi.errors ----------------------------------------------------------

/// Routes error-log text: to the server's log while this object's request
/// is in flight (and the server should get it), to fd 2 otherwise.
///
/// # Safety
/// GIL held; `slf` is a live wsgi.errors instance.
unsafe fn errors_emit(slf: *mut ffi::PyObject, text: &[u8]) {
    // SAFETY: GIL held, `slf` a live ReqObject (the contract); the with_conn closure
    // calls no Python.
    unsafe {
        if text.is_empty() {
            return;
        }
        let c = ctx();
        // SAFETY (with_conn): live object, so a request is active; no Python call.
        if is_live(slf)
            && !c.errors_to_fd2.get()
            && c.with_conn(|conn| conn.write_stderr(text)).is_ok()
        {
            return;
        }
        crate::sys::write_all_fd(2, text);
    }
}

/// The bytes to log for a str (UTF-8) or bytes object; NULL-equivalent `None`
/// with TypeError set otherwise.
///
/// # Safety
/// GIL held; `o` is live and outlives the returned slice.
unsafe fn text_arg<'a>(o: *mut ffi::PyObject) -> Option<&'a [u8]> {
    // SAFETY: GIL held; `o` is live (the contract) and its type is checked before its data is read.
    unsafe {
        if ffi::PyBytes_Check(o) != 0 {
            return Some(bytes_of(o));
        }
        if ffi::PyUnicode_Check(o) != 0 {
            let mut len: ffi::Py_ssize_t = 0;
            let p = ffi::PyUnicode_AsUTF8AndSize(o, &mut len);
            if p.is_null() {
                return None;
            }
            return Some(std::slice::from_raw_parts(p as *const u8, len as usize));
        }
        raise(ffi::PyExc_TypeError, "wsgi.errors.write() takes a str");
        None
    }
}

/// # Safety
/// Called by CPython only, as wsgi.errors.write (METH_O), with the GIL held and live arguments.
unsafe extern "C" fn errors_write(
    slf: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        match text_arg(arg) {
            Some(t) => {
                errors_emit(slf, t);
                ffi::PyLong_FromSsize_t(t.len() as ffi::Py_ssize_t)
            }
            None => ptr::null_mut(),
        }
    }
}

/// # Safety
/// Called by CPython only, as wsgi.errors.writelines (METH_O), with the GIL
/// held and live arguments.
unsafe extern "C" fn errors_writelines(
    slf: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        let it = ffi::PyObject_GetIter(arg);
        if it.is_null() {
            return it;
        }
        loop {
            let item = ffi::PyIter_Next(it);
            if item.is_null() {
                break;
            }
            let ok = match text_arg(item) {
                Some(t) => {
                    errors_emit(slf, t);
                    true
                }
                None => false,
            };
            ffi::Py_DECREF(item);
            if !ok {
                break;
            }
        }
        ffi::Py_DECREF(it);
        if !ffi::PyErr_Occurred().is_null() {
            return ptr::null_mut();
        }
        none()
    }
}

/// # Safety
/// Called by CPython only, as wsgi.errors.flush (METH_NOARGS), with the GIL
/// held and live arguments.
unsafe extern "C" fn errors_flush(
    _slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe { none() }
}

/// # Safety
/// GIL held.
pub(super) unsafe fn none() -> *mut ffi::PyObject {
    // SAFETY: GIL held (the contract); every pointer passed to the C API is a live object.
    unsafe {
        let n = ffi::Py_None();
        ffi::Py_INCREF(n);
        n
    }
}

// ---- start_response and write --------------------------------------------

/// Parses `NNN reason`: three digits, a space, a reason without control bytes.
pub fn parse_status(s: &[u8]) -> Option<u16> {
    match s {
        [a, b, c, b' ', reason @ ..]
            if a.is_ascii_digit()
                && b.is_ascii_digit()
                && c.is_ascii_digit()
                && *a != b'0'
                && !reason.iter().any(|&x| x < 0x20 || x == 0x7f) =>
        {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// Validates `headers` (a list of `(str, str)` tuples, str subclasses
/// accepted) into the connection's response head. Returns the
/// Content-Length it gives, if any; on error an exception is set and the
/// head is left empty.
///
/// # Safety
/// GIL held; the request of a live start_response is active; `headers` is live.
unsafe fn stage_headers(headers: *mut ffi::PyObject) -> Result<Option<u64>, ()> {
    // SAFETY: GIL held, request active (the contract); the with_conn closure only
    // checks types and borrows str data, running no Python code.
    unsafe {
        if ffi::PyList_Check(headers) == 0 && ffi::PyTuple_Check(headers) == 0 {
            raise(ffi::PyExc_TypeError, "response headers must be a list");
            return Err(());
        }
        // A list or tuple (or subclass): PySequence_Fast returns it as is.
        let fast = py::Obj::owned(ffi::PySequence_Fast(headers, c"".as_ptr())).ok_or(())?;
        let n = ffi::PySequence_Fast_GET_SIZE(fast.ptr()) as usize;
        let items = ffi::PySequence_Fast_ITEMS(fast.ptr());
        let c = ctx();
        // SAFETY (with_conn): a live start_response, so a request is active;
        // only type checks and borrowed str data inside, no Python code. The
        // exception is raised after the closure.
        let r = c.with_conn(|conn| {
            conn.head.clear();
            let mut length = None;
            for i in 0..n {
                let item = *items.add(i);
                if ffi::PyTuple_Check(item) == 0 || ffi::PyTuple_GET_SIZE(item) != 2 {
                    return Err((
                        ffi::PyExc_TypeError,
                        format!("response header {i} is not a (name, value) tuple"),
                    ));
                }
                let (name, value) = (
                    ffi::PyTuple_GET_ITEM(item, 0),
                    ffi::PyTuple_GET_ITEM(item, 1),
                );
                let (Some(n), Some(v)) = (str_latin1(name), str_latin1(value)) else {
                    return Err((
                        ffi::PyExc_TypeError,
                        format!("response header {i}: name and value must be latin-1 str"),
                    ));
                };
                if let Err(e) = conn.head.push(n, v) {
                    return Err((
                        ffi::PyExc_ValueError,
                        format!(
                            "response header {:?}: {e}",
                            String::from_utf8_lossy(&n[..n.len().min(64)])
                        ),
                    ));
                }
                if n.eq_ignore_ascii_case(b"content-length") {
                    length = std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.trim().parse().ok());
                }
            }
            Ok(length)
        });
        match r {
            Ok(length) => Ok(length),
            Err((exc, msg)) => {
                c.with_conn(|conn| conn.head.clear());
                raise(exc, &msg);
                Err(())
            }
        }
    }
}

/// start_response's arguments by position or keyword (PEP 3333 names), or
/// `None` with TypeError set.
///
/// # Safety
/// GIL held; `args` is a live tuple and `kwargs` a live dict or NULL (tp_call's arguments).
#[allow(clippy::type_complexity)]
unsafe fn start_response_args(
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> Option<[*mut ffi::PyObject; 3]> {
    // SAFETY: GIL held; `args` is a tuple and `kwargs` a dict or NULL (the contract),
    // read within their sizes.
    unsafe {
        const USAGE: &str = "start_response(status, response_headers, exc_info=None)";
        let nargs = ffi::PyTuple_GET_SIZE(args) as usize;
        if nargs > 3 {
            raise(ffi::PyExc_TypeError, USAGE);
            return None;
        }
        let mut a = [ptr::null_mut(); 3];
        for (i, slot) in a.iter_mut().enumerate().take(nargs) {
            *slot = ffi::PyTuple_GET_ITEM(args, i as ffi::Py_ssize_t);
        }
        if !kwargs.is_null() {
            let (mut pos, mut key, mut value) = (0, ptr::null_mut(), ptr::null_mut());
            while ffi::PyDict_Next(kwargs, &mut pos, &mut key, &mut value) != 0 {
                let i = [c"status", c"response_headers", c"exc_info"]
                    .iter()
                    .position(|name| {
                        ffi::PyUnicode_Check(key) != 0
                            && ffi::PyUnicode_CompareWithASCIIString(key, name.as_ptr()) == 0
                    });
                match i {
                    Some(i) if a[i].is_null() => a[i] = value,
                    Some(_) => {
                        raise(
                            ffi::PyExc_TypeError,
                            &format!("{USAGE}: argument {} given twice", py::to_string(key)),
                        );
                        return None;
                    }
                    None => {
                        raise(
                            ffi::PyExc_TypeError,
                            &format!(
                                "{USAGE}: unexpected keyword argument {}",
                                py::to_string(key)
                            ),
                        );
                        return None;
                    }
                }
            }
        }
        if a[0].is_null() || a[1].is_null() {
            raise(ffi::PyExc_TypeError, USAGE);
            return None;
        }
        Some(a)
    }
}

/// # Safety
/// Called by CPython only, as tp_call of start_response, with the GIL held and live arguments.
unsafe extern "C" fn start_response_call(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        let Some([status, headers, exc_info]) = start_response_args(args, kwargs) else {
            return ptr::null_mut();
        };
        if !is_live(slf) {
            return stale("start_response");
        }
        let c = ctx();
        let has_exc = !exc_info.is_null() && exc_info != ffi::Py_None();
        if has_exc {
            if c.resp.head_sent() {
                // PEP 3333: too late to change the response; re-raise the error.
                if ffi::PyTuple_Check(exc_info) == 0 || ffi::PyTuple_GET_SIZE(exc_info) != 3 {
                    return raise(ffi::PyExc_TypeError, "exc_info must be a 3-tuple");
                }
                if ffi::PyTuple_GET_ITEM(exc_info, 0) == ffi::Py_None() {
                    // sys.exc_info() outside an except block: nothing to re-raise.
                    return raise(
                        ffi::PyExc_RuntimeError,
                        "start_response called after the headers were sent",
                    );
                }
                // PyErr_Restore takes new references; a None traceback is NULL.
                let item = |n| {
                    let o = ffi::PyTuple_GET_ITEM(exc_info, n);
                    if o == ffi::Py_None() {
                        ptr::null_mut()
                    } else {
                        ffi::Py_INCREF(o);
                        o
                    }
                };
                // Deprecated from 3.12 (PyErr_SetRaisedException is 3.12+ only).
                #[allow(deprecated)]
                ffi::PyErr_Restore(item(0), item(1), item(2));
                return ptr::null_mut();
            }
        } else if c.resp.started() {
            return raise(
                ffi::PyExc_RuntimeError,
                "start_response called a second time without exc_info",
            );
        }
        if c.resp.head_sent() {
            return raise(
                ffi::PyExc_RuntimeError,
                "start_response called after the response was sent",
            );
        }
        let code = match str_latin1(status).and_then(parse_status) {
            Some(code) => code,
            None => {
                return raise(
                    ffi::PyExc_ValueError,
                    &format!(
                        "invalid status {:?}: expected a str like '200 OK'",
                        py::to_string(status)
                    ),
                )
            }
        };
        match stage_headers(headers) {
            Ok(length) => c.resp.stage(code, length),
            Err(()) => {
                c.resp.unstage();
                return ptr::null_mut();
            }
        }
        c.writer()
    }
}

/// # Safety
/// Called by CPython only, as tp_call of the write callable, with the GIL held and live arguments.
unsafe extern "C" fn write_call(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        let Some(data) = only_argument(args, kwargs) else {
            return raise(ffi::PyExc_TypeError, "write(data) takes one bytes argument");
        };
        if ffi::PyBytes_Check(data) == 0 {
            return raise(ffi::PyExc_TypeError, "write() argument must be bytes");
        }
        if !is_live(slf) {
            return stale("write");
        }
        let c = ctx();
        if !c.resp.started() {
            return raise(
                ffi::PyExc_RuntimeError,
                "write() called before start_response",
            );
        }
        let d = bytes_of(data);
        if !d.is_empty() || !c.resp.head_sent() {
            // SAFETY (with_conn): live object, so a request is active; no Python
            // call inside (`data` is kept alive by the argument tuple).
            if let Err(e) = c.with_conn(|conn| c.resp.body(conn, d)) {
                return raise(
                    ffi::PyExc_OSError,
                    &format!("connection to the web server lost: {e}"),
                );
            }
        }
        none()
    }
}

// ---- type creation --------------------------------------------------------

/// A method table entry.
const fn method(
    name: &'static std::ffi::CStr,
    f: ffi::PyMethodDefPointer,
    flags: c_int,
) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: f,
        ml_flags: flags,
        ml_doc: ptr::null(),
    }
}

/// Method tables live for the process (types in any interpreter point at them).
struct Tables {
    input: [ffi::PyMethodDef; 4],
    errors: [ffi::PyMethodDef; 4],
}

// SAFETY: immutable after construction; only raw pointers to static strings
// and functions.
unsafe impl Sync for Tables {}

static TABLES: Tables = Tables {
    input: [
        method(
            c"read",
            ffi::PyMethodDefPointer {
                PyCFunctionFast: input_read,
            },
            ffi::METH_FASTCALL,
        ),
        method(
            c"readline",
            ffi::PyMethodDefPointer {
                PyCFunctionFast: input_readline,
            },
            ffi::METH_FASTCALL,
        ),
        method(
            c"readlines",
            ffi::PyMethodDefPointer {
                PyCFunctionFast: input_readlines,
            },
            ffi::METH_FASTCALL,
        ),
        ffi::PyMethodDef::zeroed(),
    ],
    errors: [
        method(
            c"write",
            ffi::PyMethodDefPointer {
                PyCFunction: errors_write,
            },
            ffi::METH_O,
        ),
        method(
            c"writelines",
            ffi::PyMethodDefPointer {
                PyCFunction: errors_writelines,
            },
            ffi::METH_O,
        ),
        method(
            c"flush",
            ffi::PyMethodDefPointer {
                PyCFunction: errors_flush,
            },
            ffi::METH_NOARGS,
        ),
        ffi::PyMethodDef::zeroed(),
    ],
};

/// # Safety
/// GIL held, in the interpreter that will own the type; `extra` holds slots
/// valid for a `ReqObject` type.
pub(super) unsafe fn make_type(
    name: &'static std::ffi::CStr,
    extra: &[(c_int, *mut c_void)],
) -> Result<*mut ffi::PyTypeObject, String> {
    // SAFETY: GIL held (the contract); `spec` and `slots` outlive PyType_FromSpec,
    // which copies them; the method tables are static.
    unsafe {
        let mut slots: Vec<ffi::PyType_Slot> = vec![ffi::PyType_Slot {
            slot: ffi::Py_tp_dealloc,
            pfunc: dealloc as *mut c_void,
        }];
        slots.extend(
            extra
                .iter()
                .map(|&(slot, pfunc)| ffi::PyType_Slot { slot, pfunc }),
        );
        slots.push(ffi::PyType_Slot {
            slot: 0,
            pfunc: ptr::null_mut(),
        });
        let mut spec = ffi::PyType_Spec {
            name: name.as_ptr(),
            basicsize: std::mem::size_of::<ReqObject>() as c_int,
            itemsize: 0,
            #[cfg(lswsgi_py310)]
            flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as u32,
            #[cfg(not(lswsgi_py310))]
            flags: ffi::Py_TPFLAGS_DEFAULT as u32,
            slots: slots.as_mut_ptr(),
        };
        // The spec and slots are copied into the type; only the method tables
        // (static) are referenced afterwards.
        let t = ffi::PyType_FromSpec(&mut spec);
        if t.is_null() {
            return Err(format!("cannot create type {name:?}"));
        }
        // Before 3.10 a heap type inherits object's tp_new, so Python code could
        // make a ReqObject with no request behind it; clearing tp_new after
        // creation is what DISALLOW_INSTANTIATION does.
        // SAFETY: t is the type just created (not yet shared); tp_new is a plain
        // slot of the non-limited PyTypeObject.
        #[cfg(not(lswsgi_py310))]
        {
            (*t.cast::<ffi::PyTypeObject>()).tp_new = None;
        }
        Ok(t.cast())
    }
}

/// Creates the four types in the current interpreter.
///
/// # Safety
/// GIL held, in the interpreter that will own the types.
pub unsafe fn create_types() -> Result<Types, String> {
    // SAFETY: GIL held (the contract); the slots match each function's signature.
    unsafe {
        Ok(Types {
            input: make_type(
                c"lswsgi.Input",
                &[
                    (ffi::Py_tp_methods, TABLES.input.as_ptr() as *mut c_void),
                    (ffi::Py_tp_iter, input_iter as *mut c_void),
                    (ffi::Py_tp_iternext, input_next as *mut c_void),
                ],
            )?,
            errors: make_type(
                c"lswsgi.Errors",
                &[(ffi::Py_tp_methods, TABLES.errors.as_ptr() as *mut c_void)],
            )?,
            start_response: make_type(
                c"lswsgi.StartResponse",
                &[(ffi::Py_tp_call, start_response_call as *mut c_void)],
            )?,
            writer: make_type(
                c"lswsgi.Write",
                &[(ffi::Py_tp_call, write_call as *mut c_void)],
            )?,
        })
    }
}
