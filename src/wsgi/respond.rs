//! Serving one request: parse → environ → application → response.
//!
//! Response bodies go out as they are produced (PEP 3333 forbids delaying a
//! block), except that a list or tuple result, whose blocks all exist
//! already, goes out with its header and RESP_END in a single writev.
//! Headers go out with the first non-empty block, or at the end.

use super::environ;
use super::interp::Runtime;
use super::py::{bytes_of, ffi, lookup_attr, Obj};
use super::{ctx, log_request_error, send_body, Ctx};
use lswsgi::conn::{write_req_received, Conn, ConnError, WRITE_FAILED};

/// Where a response body stands after the application's result was consumed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Every block went out; the head (if still pending) and RESP_END remain.
    Complete,
    /// The response, RESP_END included, is already on the wire.
    Ended,
    /// It failed; the failure was logged and answered (500 or dropped).
    Failed,
}
use lswsgi::lsapi::Request;
use std::ptr;

const ERROR_PAGE: &[u8] =
    b"<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>\
<body><h1>Internal Server Error</h1><p>The application failed to handle this request; \
details are in the error log.</p></body></html>\n";

/// Serves the request whose packet is at `range` in the connection's buffer,
/// including reading or draining its body. `Err` means the connection must
/// be dropped (the caller logs why); a failure inside the application is not
/// an error here — it becomes a 500 response.
pub(crate) fn serve(
    rt: &mut Runtime,
    conn: &mut Conn,
    range: (usize, usize),
) -> Result<(), ConnError> {
    // SAFETY: main thread with the GIL; `c` is not used across Python calls
    // except through fields re-read after them.
    let c = unsafe { ctx() };
    c.generation += 1;
    let generation = c.generation;
    let ack = conn.ack_due();
    let (environ, app, body_len) = {
        let req = Request::parse(conn.packet(range))?;
        // Acknowledged once valid and before anything slow (loading the
        // script, the application itself) can run: see write_req_received.
        if ack {
            if let Err(e) = write_req_received(conn.fd()) {
                conn.set_broken(WRITE_FAILED);
                return Err(e.into());
            }
        }
        let reload = req
            .env(b"WSGIScriptReloading")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"on"));
        let callable = req.env(b"WSGICallableObject").filter(|v| !v.is_empty());
        let group = req.env(b"WSGIApplicationGroup").unwrap_or(b"");
        let app = rt.app(group, req.script_filename(), callable, reload);
        let (multiprocess, root_mount) = (rt.multiprocess, rt.preloaded());
        // SAFETY: GIL held.
        let environ =
            unsafe { environ::build(rt.interp(), &req, multiprocess, root_mount, generation) };
        (environ, app, req.body_len())
    };
    conn.begin_body(body_len);
    c.conn = conn;
    c.types = rt.interp().types;
    c.active = true;
    c.status = 0;
    c.headers_sent = false;

    match (environ, app) {
        (_, Err(msg)) => {
            log_request_error(conn, &msg);
            send_error_page(c);
        }
        (None, _) => {
            let msg = rt.interp().take_exception();
            log_request_error(conn, &format!("cannot build the WSGI environ:\n{msg}"));
            send_error_page(c);
        }
        // SAFETY: GIL held; objects are live references.
        (Some(environ), Ok(app)) => unsafe { run_app(rt, c, &app, environ) },
    }
    c.active = false;
    c.conn = ptr::null_mut();
    c.writer = ptr::null_mut();
    if let Some(why) = conn.fault() {
        return Err(ConnError::Abandoned(why));
    }
    conn.drain_body()
}

/// Calls the application and writes whatever it produces.
unsafe fn run_app(rt: &mut Runtime, c: &mut Ctx, app: &Obj, environ: Obj) {
    let Some(writer) = rt.interp().request_object(3, c.generation) else {
        app_failed(rt, c, "cannot create the write callable");
        return;
    };
    c.writer = writer.ptr();
    let Some(start_response) = rt.interp().request_object(2, c.generation) else {
        app_failed(rt, c, "cannot create start_response");
        return;
    };
    let result = ffi::PyObject_CallFunctionObjArgs(
        app.ptr(),
        environ.ptr(),
        start_response.ptr(),
        ptr::null_mut::<ffi::PyObject>(),
    );
    drop(start_response);
    drop(environ);
    let Some(result) = Obj::owned(result) else {
        app_failed(rt, c, "the application raised an exception");
        return;
    };
    let rtype = ffi::Py_TYPE(result.ptr());
    let body = if rtype == ptr::addr_of_mut!(ffi::PyList_Type)
        || rtype == ptr::addr_of_mut!(ffi::PyTuple_Type)
    {
        send_sequence(rt, c, &result)
    } else if rtype.cast() == rt.interp().file_wrapper.ptr() {
        match send_file_wrapper(c, &result) {
            Some(body) => body,
            None => send_iterable(rt, c, &result),
        }
    } else {
        send_iterable(rt, c, &result)
    };
    // PEP 3333: close() is called whatever happened, once iteration is over.
    // (Plain lists and tuples have none: skip the lookup.)
    let close = if rtype == ptr::addr_of_mut!(ffi::PyList_Type)
        || rtype == ptr::addr_of_mut!(ffi::PyTuple_Type)
    {
        None
    } else {
        lookup_attr(result.ptr(), rt.interp().close_name.ptr()).unwrap_or_else(|()| {
            ffi::PyErr_Clear();
            None
        })
    };
    if let Some(close) = close {
        let r = ffi::PyObject_CallNoArgs(close.ptr());
        drop(close);
        if r.is_null() {
            if body == Body::Failed {
                log_request_error(&mut *c.conn, &rt.interp().take_exception());
            } else {
                app_failed(rt, c, "the response's close() raised an exception");
                if !c.headers_sent {
                    return; // answered with a 500
                }
            }
        } else {
            ffi::Py_DECREF(r);
        }
    }
    drop(result);
    if body == Body::Complete {
        finish(c);
    }
}

/// Ends a response whose body was sent in full: head (if no block was sent)
/// and RESP_END.
unsafe fn finish(c: &mut Ctx) {
    if (*c.conn).is_broken() {
        return;
    }
    if c.status == 0 {
        log_request_error(
            &mut *c.conn,
            "the application returned without calling start_response",
        );
        send_error_page(c);
        return;
    }
    let conn = c.begin_write();
    conn.push_end();
    let _ = conn.flush();
}

/// A list or tuple of bytes: head, every block and RESP_END in one writev.
unsafe fn send_sequence(rt: &mut Runtime, c: &mut Ctx, seq: &Obj) -> Body {
    let n = ffi::PySequence_Fast_GET_SIZE(seq.ptr());
    let items = ffi::PySequence_Fast_ITEMS(seq.ptr());
    for i in 0..n as usize {
        if ffi::PyBytes_Check(*items.add(i)) == 0 {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"response body blocks must be bytes".as_ptr(),
            );
            app_failed(rt, c, "invalid response body");
            return Body::Failed;
        }
    }
    if c.status == 0 {
        return Body::Complete; // finish() reports the missing start_response
    }
    let conn = c.begin_write();
    for i in 0..n as usize {
        // The sequence holds every block alive until after the flush.
        conn.push_body(bytes_of(*items.add(i)));
    }
    conn.push_end();
    let _ = conn.flush();
    Body::Ended
}

/// Any other iterable: each non-empty block is sent as it is produced.
unsafe fn send_iterable(rt: &mut Runtime, c: &mut Ctx, result: &Obj) -> Body {
    let Some(it) = Obj::owned(ffi::PyObject_GetIter(result.ptr())) else {
        app_failed(rt, c, "the application's result is not iterable");
        return Body::Failed;
    };
    loop {
        let item = ffi::PyIter_Next(it.ptr());
        if item.is_null() {
            if !ffi::PyErr_Occurred().is_null() {
                app_failed(rt, c, "the application raised an exception while iterating");
                return Body::Failed;
            }
            return Body::Complete;
        }
        let item = Obj::owned(item).expect("non-null");
        if ffi::PyBytes_Check(item.ptr()) == 0 {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"response body blocks must be bytes".as_ptr(),
            );
            app_failed(rt, c, "invalid response body");
            return Body::Failed;
        }
        let data = bytes_of(item.ptr());
        if data.is_empty() {
            continue;
        }
        if c.status == 0 {
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"body produced before start_response was called".as_ptr(),
            );
            app_failed(rt, c, "invalid response");
            return Body::Failed;
        }
        if send_body(c, data).is_err() {
            // The server went away: stop producing; close() still runs.
            return Body::Failed;
        }
    }
}

/// wsgi.file_wrapper over a real file: the rest of the file from its current
/// position goes out with sendfile(2). `None` (nothing sent) when the
/// file-like has no usable descriptor; the caller then iterates it.
unsafe fn send_file_wrapper(c: &mut Ctx, wrapper: &Obj) -> Option<Body> {
    let Some(filelike) = Obj::owned(ffi::PyObject_GetAttrString(
        wrapper.ptr(),
        c"filelike".as_ptr(),
    )) else {
        ffi::PyErr_Clear();
        return None;
    };
    let call = |name: &std::ffi::CStr| -> Option<i64> {
        let r = ffi::PyObject_CallMethod(filelike.ptr(), name.as_ptr(), ptr::null());
        if r.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let v = ffi::PyLong_AsLongLong(r);
        ffi::Py_DECREF(r);
        if v == -1 && !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        Some(v)
    };
    let fd = call(c"fileno").and_then(|f| i32::try_from(f).ok())?;
    let mut st: libc::stat = std::mem::zeroed();
    if libc::fstat(fd, &mut st) < 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    // The Python-level position accounts for buffered reads the app made.
    let pos = call(c"tell")
        .unwrap_or_else(|| libc::lseek(fd, 0, libc::SEEK_CUR))
        .max(0);
    if c.status == 0 {
        return Some(Body::Complete); // finish() reports the missing start_response
    }
    let conn = c.begin_write();
    if conn.flush().is_err() {
        return Some(Body::Failed);
    }
    let len = (st.st_size - pos).max(0) as u64;
    if let Err(e) = conn.send_file(fd, pos, len) {
        log_request_error(conn, &format!("sending a file response failed: {e}"));
        return Some(Body::Failed);
    }
    Some(Body::Complete)
}

/// Logs the pending Python exception with `what`; answers 500 if the headers
/// have not gone out, otherwise abandons the response (the connection is
/// dropped without RESP_END so the server knows the body is incomplete).
unsafe fn app_failed(rt: &mut Runtime, c: &mut Ctx, what: &str) {
    let trace = rt.interp().take_exception();
    let conn = &mut *c.conn;
    log_request_error(conn, &format!("{what}:\n{trace}"));
    if c.headers_sent {
        conn.set_broken("the application failed after the response headers were sent");
    } else {
        send_error_page(c);
    }
}

/// A complete 500 response (header, page, RESP_END) in one writev.
fn send_error_page(c: &mut Ctx) {
    // SAFETY: `c.conn` is the live connection while a request is active.
    let conn = unsafe { &mut *c.conn };
    if conn.is_broken() {
        return;
    }
    let mut len_buf = [0u8; 20];
    let len = fmt_usize(ERROR_PAGE.len(), &mut len_buf);
    conn.head.clear();
    let _ = conn.head.push(b"Content-Type", b"text/html; charset=utf-8");
    let _ = conn.head.push(b"Content-Length", len);
    conn.head.finish(500);
    conn.begin_write();
    conn.push_head();
    // SAFETY: ERROR_PAGE is static.
    unsafe { conn.push_body(ERROR_PAGE) };
    conn.push_end();
    let _ = conn.flush();
    c.headers_sent = true;
    c.status = 500;
}

/// Formats `n` in decimal into `buf`.
fn fmt_usize(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}
