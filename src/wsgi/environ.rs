//! The WSGI environ, built straight from the parsed request's borrowed views.
//!
//! Values are native strings decoded as latin-1 (PEP 3333). Common keys are
//! interned once per interpreter ([`Key`]); the dict is created at its final
//! size.

use super::interp::{Interp, Key, Keys, RequestObject};
use super::py::{self, ffi, latin1, str_latin1, Obj};
use lswsgi::lsapi::{known_header_slot, Request, KNOWN_HEADER_COUNT, SLOT_COOKIE, SLOT_HOST};

/// Keys [`build`] may add beyond the env list and the headers, for sizing
/// the dict: the eight `wsgi.*` keys and up to four CGI variables the
/// server left out.
const ADDED_KEYS: usize = 12;

/// Sets `d[k] = v` for an owned (possibly NULL) value; false on error.
///
/// # Safety
/// GIL held; `d` is a live dict, `k` a live str; `v` is NULL or an owned
/// reference, which this consumes.
#[inline]
unsafe fn set_owned(d: *mut ffi::PyObject, k: *mut ffi::PyObject, v: *mut ffi::PyObject) -> bool {
    if v.is_null() {
        return false;
    }
    // SAFETY: as the caller promises; `v` is released once stored.
    unsafe {
        let r = ffi::PyDict_SetItem(d, k, v);
        ffi::Py_DECREF(v);
        r == 0
    }
}

/// Sets `d[k] = v` for a borrowed value; false on error.
///
/// # Safety
/// GIL held; `d` is a live dict, `k` a live str, `v` a live object.
#[inline]
unsafe fn set(d: *mut ffi::PyObject, k: *mut ffi::PyObject, v: *mut ffi::PyObject) -> bool {
    // SAFETY: as the caller promises.
    unsafe { ffi::PyDict_SetItem(d, k, v) == 0 }
}

/// The CGI name of an HTTP header that is not one of the known ones:
/// `HTTP_` + upper case with `-` → `_`. Names with `_` or bytes outside the
/// HTTP token set are dropped (as Apache does), so `X_Forwarded_For` cannot
/// pose as `X-Forwarded-For`.
fn cgi_name(name: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.extend_from_slice(b"HTTP_");
    for &b in name {
        match b {
            b'-' => out.push(b'_'),
            b'a'..=b'z' => out.push(b - 32),
            b'A'..=b'Z' | b'0'..=b'9' => out.push(b),
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'.' | b'^' | b'`' | b'|'
            | b'~' => out.push(b),
            _ => return false,
        }
    }
    !name.is_empty()
}

/// Adds header `value` under `k`, joining a repeat to the earlier value with
/// `, ` (`; ` for Cookie), as HTTP requires for repeated fields.
///
/// # Safety
/// GIL held; `d` is a live dict, `k` a live str.
unsafe fn add_header(
    d: *mut ffi::PyObject,
    k: *mut ffi::PyObject,
    value: &[u8],
    cookie: bool,
) -> bool {
    // SAFETY: as the caller promises; `old` is borrowed from `d` and read
    // before `d` is changed.
    unsafe {
        let old = ffi::PyDict_GetItem(d, k);
        if old.is_null() {
            return set_owned(d, k, latin1(value));
        }
        let Some(old) = str_latin1(old) else {
            return set_owned(d, k, latin1(value));
        };
        let mut joined = Vec::with_capacity(old.len() + 2 + value.len());
        joined.extend_from_slice(old);
        joined.extend_from_slice(if cookie { b"; " } else { b", " });
        joined.extend_from_slice(value);
        set_owned(d, k, latin1(&joined))
    }
}

/// Facts about the request gathered while copying the env list.
#[derive(Default)]
struct Seen {
    path_info: bool,
    script_name: bool,
    method: bool,
    query: bool,
    server_name: bool,
    server_port: bool,
    gateway: bool,
    https: bool,
}

/// Builds the environ for `req`. `root_mount`: the application serves the
/// whole site (`-m`), so a request without PATH_INFO has its whole path in
/// PATH_INFO and an empty SCRIPT_NAME. Returns `None` with an exception set
/// on failure.
///
/// # Safety
/// The GIL is held and `interp` is the current interpreter.
pub(super) unsafe fn build(
    interp: &mut Interp,
    req: &Request<'_>,
    multiprocess: bool,
    root_mount: bool,
    generation: u64,
) -> Option<Obj> {
    // SAFETY: GIL held in `interp` (caller); every object is checked for
    // NULL before use and each reference is owned by an `Obj` or consumed by
    // `set_owned`; the key pointers are borrowed from `interp.keys`, which
    // lives (unchanged) for the whole call.
    unsafe {
        let size = req.env_count() + req.unknown_header_count() + KNOWN_HEADER_COUNT + ADDED_KEYS;
        let d = Obj::owned(py::presized_dict(size))?;
        let dp = d.ptr();
        let mut seen = Seen::default();
        // The key table is never modified while a request is built.
        let keys: *const Keys = &interp.keys;
        let k = |key: Key| (*keys).get(key);
        let header_key = |slot: usize| (*keys).header(slot);

        for (name, value) in req.env_iter() {
            if name.starts_with(b"LSAPI_") {
                continue;
            }
            let key = Key::of_env(name);
            match key {
                Some(Key::PathInfo) => seen.path_info = true,
                Some(Key::ScriptName) => seen.script_name = true,
                Some(Key::RequestMethod) => seen.method = true,
                Some(Key::QueryString) => seen.query = true,
                Some(Key::ServerName) => seen.server_name = true,
                Some(Key::ServerPort) => seen.server_port = true,
                Some(Key::GatewayInterface) => seen.gateway = true,
                Some(Key::Https) => {
                    seen.https = value.eq_ignore_ascii_case(b"on") || value == b"1";
                }
                _ => {}
            }
            let ok = match key.map(k) {
                Some(kp) => set_owned(dp, kp, latin1(value)),
                None => {
                    let kp = Obj::owned(latin1(name))?;
                    set_owned(dp, kp.ptr(), latin1(value))
                }
            };
            if !ok {
                return None;
            }
        }

        // SCRIPT_NAME + PATH_INFO must rebuild the request path.
        if !seen.script_name && !set_owned(dp, k(Key::ScriptName), latin1(req.script_name())) {
            return None;
        }
        if !seen.path_info {
            if root_mount {
                let script = ffi::PyDict_GetItem(dp, k(Key::ScriptName));
                if !script.is_null() {
                    ffi::Py_INCREF(script);
                    if !set_owned(dp, k(Key::PathInfo), script) {
                        return None;
                    }
                }
                if !set(dp, k(Key::ScriptName), interp.empty.ptr()) {
                    return None;
                }
            } else if !set(dp, k(Key::PathInfo), interp.empty.ptr()) {
                return None;
            }
        } else {
            // A root mount is SCRIPT_NAME "" (PEP 3333), never "/".
            let script = ffi::PyDict_GetItem(dp, k(Key::ScriptName));
            if !script.is_null()
                && str_latin1(script) == Some(b"/")
                && !set(dp, k(Key::ScriptName), interp.empty.ptr())
            {
                return None;
            }
        }
        if !seen.method {
            let m = if req.method().is_empty() {
                b"GET".as_slice()
            } else {
                req.method()
            };
            if !set_owned(dp, k(Key::RequestMethod), latin1(m)) {
                return None;
            }
        }
        if !seen.query && !set_owned(dp, k(Key::QueryString), latin1(req.query_string())) {
            return None;
        }
        if !seen.gateway && !set(dp, k(Key::GatewayInterface), interp.cgi_1_1.ptr()) {
            return None;
        }

        for (slot, value) in req.known_headers() {
            if !set_owned(dp, header_key(slot), latin1(value)) {
                return None;
            }
        }
        let mut name_buf = Vec::new();
        for (name, value) in req.unknown_headers() {
            let ok = match known_header_slot(name) {
                Some(slot) => add_header(dp, header_key(slot), value, slot == SLOT_COOKIE),
                None => {
                    if !cgi_name(name, &mut name_buf) {
                        continue;
                    }
                    let kp = Obj::owned(latin1(&name_buf))?;
                    add_header(dp, kp.ptr(), value, false)
                }
            };
            if !ok {
                return None;
            }
        }

        // PEP 3333 requires SERVER_NAME and SERVER_PORT.
        if !seen.server_name {
            let host = req.header(SLOT_HOST).unwrap_or(b"localhost");
            let host = match memchr::memrchr(b':', host) {
                Some(i) if !host.ends_with(b"]") => &host[..i],
                _ => host,
            };
            if !set_owned(dp, k(Key::ServerName), latin1(host)) {
                return None;
            }
        }
        if !seen.server_port {
            let port: &[u8] = if seen.https { b"443" } else { b"80" };
            if !set_owned(dp, k(Key::ServerPort), latin1(port)) {
                return None;
            }
        }

        let scheme = if seen.https {
            &interp.https
        } else {
            &interp.http
        };
        let (t, f) = (ffi::Py_True(), ffi::Py_False());
        let ok = set(dp, k(Key::WsgiVersion), interp.version.ptr())
            && set(dp, k(Key::WsgiUrlScheme), scheme.ptr())
            && set(dp, k(Key::WsgiMultithread), f)
            && set(
                dp,
                k(Key::WsgiMultiprocess),
                if multiprocess { t } else { f },
            )
            && set(dp, k(Key::WsgiRunOnce), f)
            && set(dp, k(Key::WsgiFileWrapper), interp.file_wrapper.ptr());
        if !ok {
            return None;
        }
        let input = interp.request_object(RequestObject::Input, generation)?;
        let errors = interp.request_object(RequestObject::Errors, generation)?;
        if !set(dp, k(Key::WsgiInput), input.ptr()) || !set(dp, k(Key::WsgiErrors), errors.ptr()) {
            return None;
        }
        Some(d)
    }
}
