//! ASGI 3.0 applications (HTTP spec 2.4, lifespan) in the same
//! single-threaded, blocking worker.
//!
//! The scope is built here from the parsed request, as the environ is for
//! WSGI. `receive` and `send` are request objects like start_response
//! (bound to their request's generation): they read the body from the
//! socket and write the response through the one [`super::response::Response`]
//! synchronously, with the GIL released around the blocking system calls,
//! so the awaitables the support module wraps them in complete at once. The
//! support module (helper.py) drives the application's coroutine on the
//! interpreter's event loop with `run_until_complete` and runs the lifespan
//! protocol; see its ASGI section for what happens to background tasks.

use super::objects::{is_live, make_type, new_object, none, read_body_bytes, rebind, stale};
use super::py::{self, bytes_of, ffi, intern, latin1, only_argument, raise, str_latin1, Obj};
use super::response::State;
use super::{ctx, log_request_error, Ctx};
use crate::config::AppInterface;
use lswsgi::lsapi::{Request, KNOWN_HEADERS};
use std::ffi::{c_void, CStr};
use std::ptr;

/// Most body bytes one `http.request` message carries: the body is read
/// from the socket in pieces of this size, whatever its total length.
pub(super) const CHUNK: usize = 64 * 1024;

/// Applications whose interface was detected, remembered per interpreter
/// (a reloaded script makes a new one; the oldest is forgotten).
const DETECTED_KEEP: usize = 8;

/// Interned keys and constant values for scopes and messages.
pub(super) struct Keys {
    k: Vec<Obj>,
    /// The 25 known header names, lower case, as bytes.
    header_names: Vec<Obj>,
}

// Indices into `Keys::k`.
const TYPE: usize = 0;
const ASGI: usize = 1;
const HTTP_VERSION: usize = 2;
const METHOD: usize = 3;
const SCHEME: usize = 4;
const PATH: usize = 5;
const RAW_PATH: usize = 6;
const ROOT_PATH: usize = 7;
const QUERY_STRING: usize = 8;
const HEADERS: usize = 9;
const CLIENT: usize = 10;
const SERVER: usize = 11;
const EXTENSIONS: usize = 12;
const BODY: usize = 13;
const MORE_BODY: usize = 14;
const STATUS: usize = 15;
const V_HTTP: usize = 16;
const V_HTTPS: usize = 17;
const V_REQUEST: usize = 18;
const V_DISCONNECT: usize = 19;
const V_PATHSEND: usize = 20;
const VERSION: usize = 21;
const SPEC_VERSION: usize = 22;
const V_3_0: usize = 23;
const V_2_4: usize = 24;

const KEY_NAMES: [&CStr; 25] = [
    c"type",
    c"asgi",
    c"http_version",
    c"method",
    c"scheme",
    c"path",
    c"raw_path",
    c"root_path",
    c"query_string",
    c"headers",
    c"client",
    c"server",
    c"extensions",
    c"body",
    c"more_body",
    c"status",
    c"http",
    c"https",
    c"http.request",
    c"http.disconnect",
    c"http.response.pathsend",
    c"version",
    c"spec_version",
    c"3.0",
    c"2.4",
];

impl Keys {
    #[inline]
    fn get(&self, i: usize) -> *mut ffi::PyObject {
        self.k[i].ptr()
    }
}

/// What one interpreter needs to serve ASGI applications.
pub(super) struct PerInterp {
    /// helper.asgi_serve(app, scope, rx, tx).
    serve: Obj,
    /// helper.asgi_kind(app) -> bool.
    kind: Obj,
    receive_type: *mut ffi::PyTypeObject,
    send_type: *mut ffi::PyTypeObject,
    /// receive and send objects kept for reuse while nobody else holds them.
    cached: [Option<Obj>; 2],
    /// Boxed: the request in flight reaches it through a raw pointer in
    /// [`Ctx`], which must not move while the interpreter lives.
    keys: Box<Keys>,
    detected: Vec<(Obj, bool)>,
}

impl PerInterp {
    /// Sets up ASGI support in the current interpreter from the support
    /// module's `asgi_serve` and `asgi_kind`. GIL held.
    ///
    /// # Safety
    /// GIL held, in the interpreter that will own the types.
    pub(super) unsafe fn new(serve: Obj, kind: Obj) -> Result<PerInterp, String> {
        // SAFETY: GIL held (the contract); the slots match each function's signature.
        unsafe {
            let header_names = KNOWN_HEADERS
                .iter()
                .map(|n| {
                    let lower = n.to_ascii_lowercase();
                    Obj::owned(ffi::PyBytes_FromStringAndSize(
                        lower.as_ptr().cast(),
                        lower.len() as ffi::Py_ssize_t,
                    ))
                    .ok_or_else(|| "cannot create the ASGI header names".to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PerInterp {
                serve,
                kind,
                receive_type: make_type(
                    c"lswsgi.Receive",
                    &[(ffi::Py_tp_call, receive_call as *mut c_void)],
                )?,
                send_type: make_type(
                    c"lswsgi.Send",
                    &[(ffi::Py_tp_call, send_call as *mut c_void)],
                )?,
                cached: [None, None],
                keys: Box::new(Keys {
                    k: KEY_NAMES.iter().map(|k| intern(k)).collect(),
                    header_names,
                }),
                detected: Vec::new(),
            })
        }
    }

    /// Whether `app` is to be called as an ASGI application. GIL held, this
    /// interpreter current.
    ///
    /// # Safety
    /// GIL held, this interpreter current; `app` is live.
    pub(super) unsafe fn is_asgi(&mut self, app: &Obj, iface: AppInterface) -> bool {
        // SAFETY: GIL held (the contract); every object is owned by an Obj.
        unsafe {
            match iface {
                AppInterface::Wsgi => return false,
                AppInterface::Asgi => return true,
                AppInterface::Auto => {}
            }
            if let Some((_, asgi)) = self.detected.iter().find(|(a, _)| a.ptr() == app.ptr()) {
                return *asgi;
            }
            let r = Obj::owned(ffi::PyObject_CallOneArg(self.kind.ptr(), app.ptr()));
            // A check that fails (an exotic __getattr__) leaves the WSGI default.
            let asgi = r.is_some_and(|r| ffi::PyObject_IsTrue(r.ptr()) == 1);
            ffi::PyErr_Clear();
            if self.detected.len() == DETECTED_KEEP {
                self.detected.remove(0);
            }
            self.detected.push((app.clone(), asgi));
            asgi
        }
    }

    /// A receive (`i` = 0) or send (1) object bound to `generation`: the
    /// cached one if nobody else holds it, else a new one.
    ///
    /// # Safety
    /// GIL held, this interpreter current.
    unsafe fn object(&mut self, i: usize, generation: u64) -> Option<Obj> {
        // SAFETY: GIL held (the contract); the cached objects are live instances of
        // this interpreter's types.
        unsafe {
            if let Some(o) = &self.cached[i] {
                if ffi::Py_REFCNT(o.ptr()) == 1 {
                    rebind(o.ptr(), generation);
                    return Some(o.clone());
                }
            }
            let t = [self.receive_type, self.send_type][i];
            let o = Obj::owned(new_object(t, generation))?;
            self.cached[i] = Some(o.clone());
            Some(o)
        }
    }

    /// The HTTP scope of `req`. `root_mount` as for the environ: the
    /// application serves the whole site (`-m`). `None` with an exception
    /// set on failure.
    ///
    /// # Safety
    /// GIL held, this interpreter current.
    pub(super) unsafe fn scope(&self, req: &Request<'_>, root_mount: bool) -> Option<Obj> {
        // SAFETY: GIL held (the contract); every object is owned by an Obj or a new
        // reference handed to the dict.
        unsafe {
            let k = &*self.keys;
            let d = Obj::owned(py::presized_dict(16))?;
            let set = |key: usize, v: *mut ffi::PyObject| -> Option<()> {
                if v.is_null() {
                    return None;
                }
                let r = ffi::PyDict_SetItem(d.ptr(), k.get(key), v);
                ffi::Py_DECREF(v);
                (r == 0).then_some(())
            };
            let borrowed = |v: *mut ffi::PyObject| {
                ffi::Py_INCREF(v);
                v
            };
            let bytes = |b: &[u8]| ffi::PyBytes_FromStringAndSize(b.as_ptr().cast(), b.len() as _);
            let utf8 = |b: &[u8]| {
                ffi::PyUnicode_DecodeUTF8(b.as_ptr().cast(), b.len() as _, c"replace".as_ptr())
            };
            let env = |name: &[u8]| req.env(name);

            set(TYPE, borrowed(k.get(V_HTTP)))?;
            let version = ffi::PyDict_New();
            set(ASGI, version)?;
            if ffi::PyDict_SetItem(version, k.get(VERSION), k.get(V_3_0)) != 0
                || ffi::PyDict_SetItem(version, k.get(SPEC_VERSION), k.get(V_2_4)) != 0
            {
                return None;
            }
            let http_version: &[u8] = match env(b"SERVER_PROTOCOL") {
                Some(b"HTTP/1.0") => b"1.0",
                Some(b"HTTP/2" | b"HTTP/2.0") => b"2",
                Some(b"HTTP/3" | b"HTTP/3.0") => b"3",
                _ => b"1.1",
            };
            set(HTTP_VERSION, latin1(http_version))?;
            let method = env(b"REQUEST_METHOD")
                .or(Some(req.method()))
                .filter(|m| !m.is_empty())
                .unwrap_or(b"GET");
            set(METHOD, latin1(method))?;
            let https = env(b"HTTPS").is_some_and(|v| v.eq_ignore_ascii_case(b"on") || v == b"1");
            set(
                SCHEME,
                borrowed(k.get(if https { V_HTTPS } else { V_HTTP })),
            )?;

            // The same SCRIPT_NAME / PATH_INFO split as the environ; ASGI's path
            // is the whole decoded path, root_path its mount point.
            let script = env(b"SCRIPT_NAME").unwrap_or(req.script_name());
            let (root, rest): (&[u8], &[u8]) = match env(b"PATH_INFO") {
                None if root_mount => (b"", script),
                None => (script, b""),
                Some(p) if script == b"/" => (b"", p),
                Some(p) => (script, p),
            };
            let mut full = Vec::with_capacity(root.len() + rest.len());
            full.extend_from_slice(root);
            full.extend_from_slice(rest);
            set(PATH, utf8(&full))?;
            set(ROOT_PATH, utf8(root))?;
            let raw = match env(b"REQUEST_URI") {
                Some(uri) => uri.split(|&b| b == b'?').next().unwrap_or(uri),
                None => &full,
            };
            set(RAW_PATH, bytes(raw))?;
            let query = env(b"QUERY_STRING").unwrap_or(req.query_string());
            set(QUERY_STRING, bytes(query))?;

            let headers = ffi::PyList_New(0);
            set(HEADERS, borrowed(headers))?;
            let push = |name: *mut ffi::PyObject, value: &[u8]| -> Option<()> {
                let pair = Obj::owned(ffi::PyTuple_New(2))?;
                let v = bytes(value);
                if name.is_null() || v.is_null() {
                    ffi::Py_XDECREF(v);
                    return None;
                }
                // PyTuple_SetItem steals both references.
                ffi::PyTuple_SetItem(pair.ptr(), 0, name);
                ffi::PyTuple_SetItem(pair.ptr(), 1, v);
                (ffi::PyList_Append(headers, pair.ptr()) == 0).then_some(())
            };
            let list_ok = (|| {
                for (slot, value) in req.known_headers() {
                    push(borrowed(k.header_names[slot].ptr()), value)?;
                }
                let mut lower = Vec::new();
                for (name, value) in req.unknown_headers() {
                    lower.clear();
                    lower.extend(name.iter().map(u8::to_ascii_lowercase));
                    push(bytes(&lower), value)?;
                }
                Some(())
            })();
            ffi::Py_DECREF(headers);
            list_ok?;

            let port = |p: Option<&[u8]>| {
                p.and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|p| p.trim().parse::<u16>().ok())
            };
            let pair = |host: &[u8], port: u16| {
                let h = latin1(host);
                if h.is_null() {
                    return h;
                }
                let t = ffi::Py_BuildValue(c"(Oi)".as_ptr(), h, i32::from(port));
                ffi::Py_DECREF(h);
                t
            };
            let client = match env(b"REMOTE_ADDR") {
                Some(a) => pair(a, port(env(b"REMOTE_PORT")).unwrap_or(0)),
                None => borrowed(ffi::Py_None()),
            };
            set(CLIENT, client)?;
            let host = env(b"SERVER_ADDR").or(env(b"SERVER_NAME"));
            let server = match host {
                Some(h) => pair(
                    h,
                    port(env(b"SERVER_PORT")).unwrap_or(if https { 443 } else { 80 }),
                ),
                None => borrowed(ffi::Py_None()),
            };
            set(SERVER, server)?;
            let ext = ffi::PyDict_New();
            set(EXTENSIONS, borrowed(ext))?;
            let ok = ffi::PyDict_SetItem(ext, k.get(V_PATHSEND), ffi::PyDict_New()) == 0;
            ffi::Py_DECREF(ext);
            ok.then_some(d)
        }
    }
}

/// Runs the ASGI application for the request in flight (the counterpart of
/// WSGI's `run_app`): a failure before anything went out is a 500, after
/// that the connection is dropped; a coroutine that returns before its
/// response is complete is treated the same way. `Err(what)`: the
/// application could not be run or raised; its exception is pending and the
/// caller fails the response with `what`. `a` is the interpreter's ASGI
/// state, `scope` the request's.
///
/// # Safety
/// GIL held; a request is active in `c` (set up by `serve`) and no reference to
/// its connection is live.
pub(super) unsafe fn run(
    a: &mut PerInterp,
    c: &Ctx,
    app: &Obj,
    scope: Obj,
) -> Result<(), &'static str> {
    // SAFETY: GIL held and a request active (the contract); every object is a live
    // reference owned by an Obj or borrowed from one that outlives its use; the
    // connection is reached only in with_conn closures that call no Python.
    unsafe {
        let generation = c.generation.get();
        let (Some(rx), Some(tx)) = (a.object(0, generation), a.object(1, generation)) else {
            return Err("cannot create the ASGI receive and send callables");
        };
        c.asgi_keys.set(&*a.keys);
        let serve = a.serve.clone();
        let r = ffi::PyObject_CallFunctionObjArgs(
            serve.ptr(),
            app.ptr(),
            scope.ptr(),
            rx.ptr(),
            tx.ptr(),
            ptr::null_mut::<ffi::PyObject>(),
        );
        drop((rx, tx, scope));
        let Some(_) = Obj::owned(r) else {
            return Err("the ASGI application raised an exception");
        };
        let what = match c.resp.state() {
            State::Ended | State::Abandoned { .. } => return Ok(()),
            State::Unstarted => "the ASGI application returned without sending http.response.start",
            _ => "the ASGI application returned before its response was complete",
        };
        // SAFETY: active request; no Python call inside.
        c.with_conn(|conn| {
            log_request_error(conn, what);
            c.resp.fail(conn, None);
        });
        Ok(())
    }
}

/// A new `{"type": "http.disconnect"}`.
///
/// # Safety
/// GIL held; `k` holds this interpreter's keys.
unsafe fn disconnect(k: &Keys) -> *mut ffi::PyObject {
    // SAFETY: GIL held (the contract); `k`'s keys are live.
    unsafe {
        let d = ffi::PyDict_New();
        if !d.is_null() && ffi::PyDict_SetItem(d, k.get(TYPE), k.get(V_DISCONNECT)) != 0 {
            ffi::Py_DECREF(d);
            return ptr::null_mut();
        }
        d
    }
}

/// `rx()`: the next `http.request` message with up to [`CHUNK`] body bytes
/// read from the socket; `http.disconnect` once the response is over or the
/// server closed the connection; None when the whole body was delivered and the
/// response is in progress
/// (the support module then waits for its end).
///
/// # Safety
/// Called by CPython only, as tp_call of the ASGI receive callable, with the
/// GIL held and live arguments.
unsafe extern "C" fn receive_call(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
    _kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        if !is_live(slf) {
            return stale("ASGI receive");
        }
        let c = ctx();
        // SAFETY: set by `run` for the request in flight; the Box outlives it.
        let k = &*c.asgi_keys.get();
        // SAFETY (with_conn): live object, so a request is active; no Python call.
        if c.with_conn(|conn| c.resp.is_over(conn)) {
            return disconnect(k);
        }
        if c.body_done.get() {
            return none();
        }
        let want = c.with_conn(|conn| conn.body_left()).min(CHUNK as u64) as usize;
        let b = match read_body_bytes(want) {
            Ok(b) => b,
            // The connection is marked broken; serve reports why.
            Err(_) => return disconnect(k),
        };
        if b.is_null() {
            return b;
        }
        let left = c.with_conn(|conn| conn.body_left());
        if left == 0 {
            c.body_done.set(true);
        }
        let d = ffi::PyDict_New();
        let more = if left > 0 {
            ffi::Py_True()
        } else {
            ffi::Py_False()
        };
        let ok = !d.is_null()
            && ffi::PyDict_SetItem(d, k.get(TYPE), k.get(V_REQUEST)) == 0
            && ffi::PyDict_SetItem(d, k.get(BODY), b) == 0
            && ffi::PyDict_SetItem(d, k.get(MORE_BODY), more) == 0;
        ffi::Py_DECREF(b);
        if !ok {
            ffi::Py_XDECREF(d);
            return ptr::null_mut();
        }
        d
    }
}

/// `tx(message)`: writes one response message. Returns True once the
/// response is over (so waiting receives get `http.disconnect`). Raises
/// OSError when the server went away (ASGI 2.4), RuntimeError for a message
/// out of order, TypeError/ValueError for a malformed one.
///
/// # Safety
/// Called by CPython only, as tp_call of the ASGI send callable, with the GIL
/// held and live arguments.
unsafe extern "C" fn send_call(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and live arguments (CPython's call); `slf` is an instance of the
    // type this slot belongs to, so is_live may read it; the connection is
    // reached only in with_conn closures that call no Python.
    unsafe {
        let Some(msg) = only_argument(args, kwargs) else {
            return raise(ffi::PyExc_TypeError, "send(message) takes one dict");
        };
        if ffi::PyDict_Check(msg) == 0 {
            return raise(ffi::PyExc_TypeError, "an ASGI message must be a dict");
        }
        if !is_live(slf) {
            return stale("ASGI send");
        }
        let c = ctx();
        // SAFETY: set by `run` for the request in flight; the Box outlives it.
        let k = &*c.asgi_keys.get();
        let kind = ffi::PyDict_GetItem(msg, k.get(TYPE));
        let kind = if kind.is_null() {
            None
        } else {
            str_latin1(kind)
        };
        let done = match kind {
            Some(b"http.response.start") => start(c, k, msg),
            Some(b"http.response.body") => body(c, k, msg),
            Some(b"http.response.pathsend") => pathsend(c, msg),
            _ => {
                raise(
                    ffi::PyExc_ValueError,
                    &format!(
                        "unexpected ASGI message type {} for an HTTP request",
                        if kind.is_none() {
                            "(none)".to_string()
                        } else {
                            py::to_string(ffi::PyDict_GetItem(msg, k.get(TYPE)))
                        }
                    ),
                );
                None
            }
        };
        match done {
            Some(true) => {
                ffi::Py_INCREF(ffi::Py_True());
                ffi::Py_True()
            }
            Some(false) => {
                ffi::Py_INCREF(ffi::Py_False());
                ffi::Py_False()
            }
            None => ptr::null_mut(),
        }
    }
}

/// Raises for a message that cannot be written now; `None` when it can.
///
/// # Safety
/// GIL held; a request is active in `c`.
unsafe fn refuse(c: &Ctx, what: &str) -> Option<()> {
    // SAFETY: GIL held, request active (the contract); the with_conn closure calls no Python.
    unsafe {
        let abandoned = c.with_conn(|conn| c.resp.abandoned(conn));
        match c.resp.state() {
            _ if abandoned => {}
            State::Ended => {
                raise(
                    ffi::PyExc_RuntimeError,
                    &format!("{what} sent after the response was complete"),
                );
                return Some(());
            }
            State::Unstarted => {
                raise(
                    ffi::PyExc_RuntimeError,
                    &format!("{what} sent before http.response.start"),
                );
                return Some(());
            }
            _ => return None,
        }
        raise(
            ffi::PyExc_OSError,
            "the web server closed the connection (the client is gone)",
        );
        Some(())
    }
}

/// Raises OSError for a write that failed: the response is abandoned and
/// the connection will be dropped.
///
/// # Safety
/// GIL held; a request is active in `c`.
unsafe fn lost(c: &Ctx, what: &str) {
    // SAFETY: GIL held, request active (the contract); the with_conn closure calls no Python.
    unsafe {
        // SAFETY (with_conn): active request; no Python call inside.
        c.with_conn(|conn| {
            if !conn.is_broken() {
                conn.set_broken("a response write failed");
            }
        });
        raise(
            ffi::PyExc_OSError,
            &format!("{what}: the web server connection was lost (the client is gone)"),
        );
    }
}

/// `http.response.start`: validates status and headers into the staged
/// head (nothing is written until the first body bytes or the end).
///
/// # Safety
/// GIL held; a request is active in `c`; `k` holds its interpreter's keys; `msg` is a live dict.
unsafe fn start(c: &Ctx, k: &Keys, msg: *mut ffi::PyObject) -> Option<bool> {
    // SAFETY: GIL held, request active (the contract); the connection is reached only
    // in with_conn closures that call no Python, never while headers are
    // iterated.
    unsafe {
        if c.resp.started() || c.resp.head_sent() {
            raise(
                ffi::PyExc_RuntimeError,
                "http.response.start sent a second time",
            );
            return None;
        }
        let status = ffi::PyDict_GetItem(msg, k.get(STATUS));
        if status.is_null() || ffi::PyLong_Check(status) == 0 {
            raise(
                ffi::PyExc_TypeError,
                "http.response.start needs an int status",
            );
            return None;
        }
        let code = ffi::PyLong_AsLong(status);
        if !(100..=999).contains(&code) {
            ffi::PyErr_Clear();
            raise(
                ffi::PyExc_ValueError,
                &format!("invalid HTTP status {}", py::to_string(status)),
            );
            return None;
        }
        // SAFETY (with_conn): active request; no Python call inside.
        c.with_conn(|conn| conn.head.clear());
        let headers = ffi::PyDict_GetItem(msg, k.get(HEADERS));
        let mut length = None;
        if !headers.is_null() {
            let it = Obj::owned(ffi::PyObject_GetIter(headers))?;
            let mut i = 0usize;
            loop {
                // Iterating may run Python code: no connection reference here.
                let Some(item) = Obj::owned(ffi::PyIter_Next(it.ptr())) else {
                    if !ffi::PyErr_Occurred().is_null() {
                        c.with_conn(|conn| conn.head.clear());
                        return None;
                    }
                    break;
                };
                let pair = Obj::owned(ffi::PySequence_Fast(
                    item.ptr(),
                    c"an ASGI header must be a (name, value) pair".as_ptr(),
                ));
                let Some(pair) = pair else {
                    c.with_conn(|conn| conn.head.clear());
                    return None;
                };
                let items = ffi::PySequence_Fast_ITEMS(pair.ptr());
                let n = ffi::PySequence_Fast_GET_SIZE(pair.ptr());
                if n != 2
                    || ffi::PyBytes_Check(*items) == 0
                    || ffi::PyBytes_Check(*items.add(1)) == 0
                {
                    c.with_conn(|conn| conn.head.clear());
                    raise(
                        ffi::PyExc_TypeError,
                        &format!("response header {i}: name and value must be bytes"),
                    );
                    return None;
                }
                let (name, value) = (bytes_of(*items), bytes_of(*items.add(1)));
                // SAFETY (with_conn): no Python call inside; `pair` keeps both alive.
                let pushed = c.with_conn(|conn| conn.head.push(name, value));
                if let Err(e) = pushed {
                    c.with_conn(|conn| conn.head.clear());
                    raise(
                        ffi::PyExc_ValueError,
                        &format!(
                            "response header {:?}: {e}",
                            String::from_utf8_lossy(&name[..name.len().min(64)])
                        ),
                    );
                    return None;
                }
                if name.eq_ignore_ascii_case(b"content-length") {
                    length = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok());
                }
                i += 1;
            }
        }
        c.resp.stage(code as u16, length);
        Some(false)
    }
}

/// The bytes of a `body` value: bytes, bytearray or absent (empty).
///
/// # Safety
/// GIL held; `o` is NULL or live and outlives the returned slice.
unsafe fn body_bytes<'a>(o: *mut ffi::PyObject) -> Option<&'a [u8]> {
    // SAFETY: GIL held; `o`'s type is checked before its data is read.
    unsafe {
        if o.is_null() {
            return Some(&[]);
        }
        if ffi::PyBytes_Check(o) != 0 {
            return Some(bytes_of(o));
        }
        if ffi::PyByteArray_Check(o) != 0 {
            return Some(std::slice::from_raw_parts(
                ffi::PyByteArray_AsString(o) as *const u8,
                ffi::PyByteArray_Size(o) as usize,
            ));
        }
        raise(
            ffi::PyExc_TypeError,
            "http.response.body's body must be bytes",
        );
        None
    }
}

/// `http.response.body`: streams the bytes, or with `more_body` false
/// sends head (if pending), bytes and RESP_END in one writev.
///
/// # Safety
/// As for `start`.
unsafe fn body(c: &Ctx, k: &Keys, msg: *mut ffi::PyObject) -> Option<bool> {
    // SAFETY: GIL held, request active (the contract); `msg`, held by the caller, keeps
    // `data` alive across the write; the with_conn closure calls no Python.
    unsafe {
        let data = body_bytes(ffi::PyDict_GetItem(msg, k.get(BODY)))?;
        let more = ffi::PyDict_GetItem(msg, k.get(MORE_BODY));
        let more = !more.is_null() && {
            match ffi::PyObject_IsTrue(more) {
                -1 => return None,
                t => t == 1,
            }
        };
        if refuse(c, "http.response.body").is_some() {
            return None;
        }
        // SAFETY (with_conn): active request; no Python call inside; `msg`
        // (held by the caller's argument tuple) keeps `data` alive.
        let ok = c.with_conn(|conn| {
            if more {
                data.is_empty() || c.resp.body(conn, data).is_ok()
            } else {
                c.resp.complete(conn, &[data]);
                c.resp.state() == State::Ended
            }
        });
        if !ok {
            lost(c, "http.response.body");
            return None;
        }
        Some(!more)
    }
}

/// `http.response.pathsend`: the file at `path` (absolute) goes out with
/// sendfile(2) after the head, then RESP_END; the response is complete.
///
/// # Safety
/// GIL held; a request is active in `c`; `msg` is a live dict.
unsafe fn pathsend(c: &Ctx, msg: *mut ffi::PyObject) -> Option<bool> {
    // SAFETY: GIL held, request active (the contract); `cpath` is a valid C string,
    // `st` a live local, and `fd` is closed once here; the with_conn closures
    // call no Python.
    unsafe {
        let path = ffi::PyDict_GetItemString(msg, c"path".as_ptr());
        if path.is_null() || ffi::PyUnicode_Check(path) == 0 {
            raise(
                ffi::PyExc_TypeError,
                "http.response.pathsend needs a str path",
            );
            return None;
        }
        if refuse(c, "http.response.pathsend").is_some() {
            return None;
        }
        let encoded = Obj::owned(ffi::PyUnicode_EncodeFSDefault(path))?;
        let Ok(cpath) = std::ffi::CString::new(bytes_of(encoded.ptr())) else {
            raise(ffi::PyExc_ValueError, "embedded NUL in the path");
            return None;
        };
        // SAFETY: a valid C string; the descriptor is closed below.
        let fd = libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            ffi::PyErr_SetFromErrnoWithFilenameObject(ffi::PyExc_OSError, path);
            return None;
        }
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) < 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            libc::close(fd);
            raise(
                ffi::PyExc_OSError,
                "http.response.pathsend: not a regular file",
            );
            return None;
        }
        let mut len = st.st_size.max(0) as u64;
        if let Some(cl) = c.resp.content_length() {
            len = len.min(cl);
        }
        // SAFETY (with_conn): active request; no Python call inside.
        let failed = c.with_conn(|conn| {
            let r = c.resp.file(conn, fd, 0, len);
            if r.is_ok() {
                c.resp.complete(conn, &[]);
            }
            r.err()
        });
        libc::close(fd);
        if let Some(e) = failed {
            c.with_conn(|conn| {
                log_request_error(conn, &format!("sending a file response failed: {e}"))
            });
        }
        if c.resp.state() != State::Ended {
            lost(c, "http.response.pathsend");
            return None;
        }
        Some(true)
    }
}
