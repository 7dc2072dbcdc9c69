//! Serving one request: parse → environ → application → response.
//!
//! Response bodies go out as they are produced (PEP 3333 forbids delaying a
//! block), except that a list or tuple result, whose blocks all exist
//! already, goes out with its header and RESP_END in a single writev.
//! Headers go out with the first non-empty block, or at the end.
//!
//! What of a response has gone out is owned by the one
//! [`super::response::Response`] of the request context, whose transitions
//! are the only way to write it.

use super::environ;
use super::interp::{RequestObject, Runtime};
use super::py::{bytes_of, ffi, lookup_attr, Obj};
use super::{ctx, log_request_error, Ctx};
use lswsgi::conn::{write_req_received, Conn, ConnError, WRITE_FAILED};
use lswsgi::lsapi::Request;
use std::ptr;

/// Debug builds: no Python exception may be pending when control returns to
/// the serve loop.
#[inline]
fn assert_no_exception() {
    debug_assert!(
        // SAFETY: GIL held (the serve loop's caller holds it).
        unsafe { ffi::PyErr_Occurred().is_null() },
        "a Python exception was left pending"
    );
}

/// Serves the request whose packet is at `range` in the connection's buffer,
/// including reading or draining its body. `Err` means the connection must
/// be dropped (the caller logs why); a failure inside the application is not
/// an error here — it becomes a 500 response. `uri`, when given, receives
/// the REQUEST_URI (for the slow-request log), so the packet is parsed once.
pub(crate) fn serve(
    rt: &mut Runtime,
    conn: &mut Conn,
    range: (usize, usize),
    uri: Option<&mut String>,
) -> Result<(), ConnError> {
    let ack = conn.ack_due();
    // From here the connection is reached only through this raw pointer (and
    // `Ctx::with_conn` once the request is active): see the module doc of
    // `wsgi` for why no reference to it may live across a call into Python.
    let conn: *mut Conn = conn;
    // SAFETY: GIL held; Ctx hands out shared references only.
    let c = unsafe { ctx() };
    c.generation.set(c.generation.get() + 1);
    let generation = c.generation.get();
    // The packet is borrowed (shared) while the request is not yet active: no
    // `&mut Conn` is made anywhere until `active` is set below.
    // SAFETY: `conn` is live for this call; see above.
    let packet = unsafe { (*conn).packet(range) };
    let req = Request::parse(packet)?;
    if let Some(uri) = uri {
        uri.clear();
        uri.push_str(&String::from_utf8_lossy(
            req.env(b"REQUEST_URI").unwrap_or_default(),
        ));
    }
    // Acknowledged once valid and before anything slow (loading the script,
    // the application itself) can run: see write_req_received.
    // SAFETY: as above.
    if ack && write_req_received(unsafe { (*conn).fd() }).is_err() {
        // SAFETY: the packet borrow is not used again.
        unsafe { (*conn).set_broken(WRITE_FAILED) };
        return Err(ConnError::Abandoned(WRITE_FAILED));
    }
    let reload = req
        .env(b"WSGIScriptReloading")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"on"));
    let callable = req.env(b"WSGICallableObject").filter(|v| !v.is_empty());
    let group = req.env(b"WSGIApplicationGroup").unwrap_or(b"");
    let app = rt.app(group, req.script_filename(), callable, reload);
    let (multiprocess, root_mount) = (rt.multiprocess, rt.preloaded());
    // SAFETY: GIL held.
    let asgi = app
        .as_ref()
        .is_ok_and(|app| unsafe { rt.interp().asgi.is_asgi(app, c.interface.get()) });
    // The environ, or for an ASGI application the scope, of this request.
    let environ = match &app {
        // SAFETY: GIL held.
        Ok(_) if asgi => unsafe { rt.interp().asgi.scope(&req, root_mount) },
        // SAFETY: GIL held.
        Ok(_) => unsafe { environ::build(rt.interp(), &req, multiprocess, root_mount, generation) },
        Err(_) => None,
    };
    let body_len = req.body_len();
    // The packet is not used past this point.
    // SAFETY: `conn` is live; no other reference to it exists now.
    // Blocking reads and writes of this request release the GIL.
    unsafe {
        (*conn).begin_body(body_len);
        (*conn).set_blocking_hook(Some(super::release_gil));
    }
    c.conn.set(conn);
    c.active.set(true);
    c.body_done.set(false);
    c.resp.begin();

    match (environ, app) {
        (_, Err(msg)) => {
            // A site that cannot run at all says so on the page (and is
            // logged once a minute by the runtime, not per request).
            let site_wide = super::interp::misconfigured();
            // SAFETY: active request; no Python call inside.
            unsafe {
                ffi::PyErr_Clear();
                c.with_conn(|conn| {
                    if site_wide.is_none() {
                        log_request_error(conn, &msg);
                    }
                    c.resp
                        .fail(conn, site_wide.or_else(|| super::errpage::shown(&msg)));
                });
            }
        }
        (None, _) => {
            let msg = rt.interp().take_exception();
            // SAFETY: as above.
            unsafe {
                c.with_conn(|conn| {
                    let what = if asgi {
                        "cannot build the ASGI scope"
                    } else {
                        "cannot build the WSGI environ"
                    };
                    c.resp.app_failed(conn, what, &msg);
                })
            };
        }
        // SAFETY: GIL held; objects are live references.
        (Some(scope), Ok(app)) if asgi => unsafe {
            if let Err(what) = super::asgi::run(&mut rt.interp().asgi, c, &app, scope) {
                app_failed(rt, c, what);
            }
        },
        // SAFETY: GIL held; objects are live references.
        (Some(environ), Ok(app)) => unsafe { run_app(rt, c, &app, environ) },
    }
    // SAFETY: still active; no Python call inside.
    let fault = unsafe {
        c.with_conn(|conn| {
            c.resp.close(conn);
            conn.fault()
        })
    };
    c.active.set(false);
    c.conn.set(ptr::null_mut());
    c.writer.set(ptr::null_mut());
    c.asgi_keys.set(ptr::null());
    c.trim_scratch();
    assert_no_exception();
    // SAFETY: the request is over; this is the only reference.
    let conn = unsafe { &mut *conn };
    let r = match fault {
        Some(why) => Err(ConnError::Abandoned(why)),
        None => conn.drain_body(),
    };
    conn.set_blocking_hook(None);
    r
}

/// Calls the application and writes whatever it produces. Never holds a
/// reference to the connection across a call into Python.
///
/// # Safety
/// GIL held; a request is active in `c` (set up by `serve`) and no reference to
/// its connection is live.
unsafe fn run_app(rt: &mut Runtime, c: &Ctx, app: &Obj, environ: Obj) {
    // SAFETY: GIL held and a request active (the contract); every object is a live
    // reference owned by an Obj or borrowed from one that outlives its use; the
    // connection is reached only in with_conn closures that call no Python.
    unsafe {
        let generation = c.generation.get();
        let Some(writer) = rt
            .interp()
            .request_object(RequestObject::Writer, generation)
        else {
            app_failed(rt, c, "cannot create the write callable");
            return;
        };
        c.writer.set(writer.ptr());
        let Some(start_response) = rt
            .interp()
            .request_object(RequestObject::StartResponse, generation)
        else {
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
        let plain = rtype == ptr::addr_of_mut!(ffi::PyList_Type)
            || rtype == ptr::addr_of_mut!(ffi::PyTuple_Type);
        if plain {
            send_sequence(rt, c, &result);
        } else if rtype.cast() == rt.interp().file_wrapper.ptr() {
            if !send_file_wrapper(c, &result) {
                send_iterable(rt, c, &result);
            }
        } else {
            send_iterable(rt, c, &result);
        }
        // PEP 3333: close() is called whatever happened, once iteration is over.
        // (Plain lists and tuples have none: skip the lookup.)
        let close = if plain {
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
                // A 500 if nothing went out yet; abandoned if the body is partly
                // out; only logged if the response already ended.
                app_failed(rt, c, "the response's close() raised an exception");
            } else {
                ffi::Py_DECREF(r);
            }
        }
        drop(result);
    }
}

/// A list or tuple of bytes: head, every block and RESP_END in one writev.
///
/// # Safety
/// As for `run_app`; `seq` is a list or tuple.
unsafe fn send_sequence(rt: &mut Runtime, c: &Ctx, seq: &Obj) {
    // SAFETY: as run_app; `seq` is a list or tuple, so PySequence_Fast_ITEMS holds its
    // `n` items, which it keeps alive past the flush.
    unsafe {
        let n = ffi::PySequence_Fast_GET_SIZE(seq.ptr()) as usize;
        let items = ffi::PySequence_Fast_ITEMS(seq.ptr());
        for i in 0..n {
            if ffi::PyBytes_Check(*items.add(i)) == 0 {
                ffi::PyErr_SetString(
                    ffi::PyExc_TypeError,
                    c"response body blocks must be bytes".as_ptr(),
                );
                app_failed(rt, c, "invalid response body");
                return;
            }
        }
        if !c.resp.started() {
            return; // Response::close reports the missing start_response
        }
        // The sequence holds every block alive until after the flush. Few blocks
        // (the common case) need no allocation.
        let mut small: [&[u8]; 8] = [&[]; 8];
        let mut many = Vec::new();
        let blocks: &[&[u8]] = if n <= small.len() {
            for (i, b) in small.iter_mut().enumerate().take(n) {
                *b = bytes_of(*items.add(i));
            }
            &small[..n]
        } else {
            many.extend((0..n).map(|i| bytes_of(*items.add(i))));
            &many
        };
        // SAFETY: active request; no Python call inside.
        c.with_conn(|conn| c.resp.complete(conn, blocks));
    }
}

/// Any other iterable: each non-empty block is sent as it is produced.
///
/// # Safety
/// GIL held; a request is active in `c` (set up by `serve`) and no reference to
/// its connection is live.
unsafe fn send_iterable(rt: &mut Runtime, c: &Ctx, result: &Obj) {
    // SAFETY: GIL held and a request active (the contract); every object is a live
    // reference owned by an Obj or borrowed from one that outlives its use; the
    // connection is reached only in with_conn closures that call no Python.
    unsafe {
        let Some(it) = Obj::owned(ffi::PyObject_GetIter(result.ptr())) else {
            app_failed(rt, c, "the application's result is not iterable");
            return;
        };
        loop {
            let item = ffi::PyIter_Next(it.ptr());
            if item.is_null() {
                if !ffi::PyErr_Occurred().is_null() {
                    app_failed(rt, c, "the application raised an exception while iterating");
                }
                return;
            }
            let item = Obj::owned(item).expect("non-null");
            if ffi::PyBytes_Check(item.ptr()) == 0 {
                ffi::PyErr_SetString(
                    ffi::PyExc_TypeError,
                    c"response body blocks must be bytes".as_ptr(),
                );
                app_failed(rt, c, "invalid response body");
                return;
            }
            let data = bytes_of(item.ptr());
            if data.is_empty() {
                continue;
            }
            if !c.resp.started() {
                ffi::PyErr_SetString(
                    ffi::PyExc_RuntimeError,
                    c"body produced before start_response was called".as_ptr(),
                );
                app_failed(rt, c, "invalid response");
                return;
            }
            // SAFETY: active request; no Python call inside.
            if c.with_conn(|conn| c.resp.body(conn, data)).is_err() {
                // The server went away: stop producing; close() still runs.
                return;
            }
        }
    }
}

/// wsgi.file_wrapper over a real file (io.FileIO, or io.BufferedReader over
/// one, on a regular file), whose bytes are the file's bytes: the file from
/// its current position — up to the application's Content-Length when it
/// gave one — goes out with sendfile(2). `false` (nothing sent) for any
/// other file-like (gzip.open, BytesIO, …); the caller then iterates it with
/// read(block size).
///
/// # Safety
/// As for `run_app`; `wrapper` is the interpreter's wsgi.file_wrapper instance.
unsafe fn send_file_wrapper(c: &Ctx, wrapper: &Obj) -> bool {
    // SAFETY: as run_app; `st` is a live local for fstat, and `fd` stays open while
    // `filelike` lives (until after the send).
    unsafe {
        let attr = |o: *mut ffi::PyObject, name: &std::ffi::CStr| {
            let r = Obj::owned(ffi::PyObject_GetAttrString(o, name.as_ptr()));
            if r.is_none() {
                ffi::PyErr_Clear();
            }
            r
        };
        let Some(filelike) = attr(wrapper.ptr(), c"filelike") else {
            return false;
        };
        // The helper's FileWrapper class names the two io types (no import here).
        let (Some(fileio), Some(buffered)) = (
            attr(wrapper.ptr(), c"_fileio"),
            attr(wrapper.ptr(), c"_buffered"),
        ) else {
            return false;
        };
        let t = ffi::Py_TYPE(filelike.ptr()).cast::<ffi::PyObject>();
        if t == buffered.ptr() {
            match attr(filelike.ptr(), c"raw") {
                Some(raw) if ffi::Py_TYPE(raw.ptr()).cast() == fileio.ptr() => {}
                _ => return false,
            }
        } else if t != fileio.ptr() {
            return false;
        }
        let call = |name: &std::ffi::CStr| -> Option<i64> {
            let r = Obj::owned(ffi::PyObject_CallMethod(
                filelike.ptr(),
                name.as_ptr(),
                ptr::null(),
            ));
            let v = r.map(|r| ffi::PyLong_AsLongLong(r.ptr()));
            if !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            v
        };
        let Some(fd) = call(c"fileno").and_then(|f| i32::try_from(f).ok()) else {
            return false;
        };
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) < 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return false;
        }
        // The Python-level position accounts for buffered reads the app made.
        let Some(pos) = call(c"tell").filter(|&p| p >= 0) else {
            return false;
        };
        if !c.resp.started() {
            return true; // Response::close reports the missing start_response
        }
        let mut len = (st.st_size - pos).max(0) as u64;
        if let Some(cl) = c.resp.content_length() {
            len = len.min(cl);
        }
        // SAFETY: active request; no Python call inside.
        let failed = c.with_conn(|conn| c.resp.file(conn, fd, pos, len).err());
        if let Some(e) = failed {
            // SAFETY: active request; no Python call inside.
            c.with_conn(|conn| {
                log_request_error(conn, &format!("sending a file response failed: {e}"))
            });
        }
        true
    }
}

/// Logs the pending Python exception with `what` and fails the response
/// (a 500 if nothing went out, abandoned if part of it did).
///
/// # Safety
/// GIL held; a request is active and no reference to its connection is live.
unsafe fn app_failed(rt: &mut Runtime, c: &Ctx, what: &str) {
    // SAFETY: GIL held, request active (the contract); the with_conn closure calls no Python.
    unsafe {
        let trace = rt.interp().take_exception();
        // SAFETY: active request; no Python call inside.
        c.with_conn(|conn| c.resp.app_failed(conn, what, &trace));
    }
}
