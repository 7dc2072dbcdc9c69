//! One interpreter's state: its thread state, the request types, the
//! interned environ keys, the support module's functions, the request
//! objects kept for reuse and the WSGI scripts it loaded.

use super::super::objects::{self, create_types, Types};
use super::super::py::{self, ffi, intern, Obj};
use super::installation::readable;
use super::keys::Keys;
use std::collections::HashMap;
use std::ffi::CStr;
use std::ptr;

/// The objects of a request each interpreter keeps one of for reuse
/// ([`Interp::request_object`]); the value is the index in its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestObject {
    /// `wsgi.input`.
    Input,
    /// `wsgi.errors`.
    Errors,
    /// The `start_response` callable.
    StartResponse,
    /// The `write` callable `start_response` returns.
    Writer,
}

/// How many kinds of [`RequestObject`] there are.
const REQUEST_OBJECTS: usize = 4;

/// A loaded WSGI script.
struct Script {
    module: Obj,
    /// Modification time when loaded (seconds, nanoseconds).
    mtime: (i64, i64),
}

/// Everything one Python interpreter needs to serve requests.
pub struct Interp {
    /// This interpreter's thread state (for switching to it).
    pub(super) tstate: *mut ffi::PyThreadState,
    pub(in crate::wsgi) types: Types,
    pub(in crate::wsgi) keys: Keys,
    pub(in crate::wsgi) version: Obj,
    pub(in crate::wsgi) http: Obj,
    pub(in crate::wsgi) https: Obj,
    pub(in crate::wsgi) empty: Obj,
    pub(in crate::wsgi) cgi_1_1: Obj,
    pub(in crate::wsgi) close_name: Obj,
    pub(in crate::wsgi) file_wrapper: Obj,
    pub(in crate::wsgi) format_exception: Obj,
    load_script: Obj,
    import_module: Obj,
    /// Request objects kept for reuse while nobody else holds them.
    pub(in crate::wsgi) cached: [Option<Obj>; REQUEST_OBJECTS],
    /// ASGI applications: detection, scope, receive and send.
    pub(in crate::wsgi) asgi: super::super::asgi::PerInterp,
    scripts: HashMap<Vec<u8>, Script>,
}

static HELPER_SOURCE: &CStr = {
    const SRC: &str = concat!(include_str!("../helper.py"), "\0");
    match CStr::from_bytes_with_nul(SRC.as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("helper.py contains a NUL byte"),
    }
};

/// `_lswsgi.log_warning(msg)`: logs `msg` at warning level, returns None.
///
/// # Safety
/// Called by CPython as a METH_O function: GIL held, `arg` a live object.
unsafe extern "C" fn log_warning(
    _m: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held and `arg` live (CPython's calling contract).
    unsafe {
        crate::warn!("{}", py::to_string(arg));
        let n = ffi::Py_None();
        ffi::Py_INCREF(n);
        n
    }
}

struct MethodDef(ffi::PyMethodDef);
// SAFETY: immutable static data (pointers to a static string and a function).
unsafe impl Sync for MethodDef {}

static LOG_WARNING: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"log_warning".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunction: log_warning,
    },
    ml_flags: ffi::METH_O,
    ml_doc: ptr::null(),
});

impl Interp {
    /// Sets up the current interpreter: runs the support module, creates the
    /// request types, interns the environ keys, restricts signal handlers.
    pub fn new() -> Result<Interp, String> {
        // SAFETY: GIL held by the caller (right after init or interpreter switch).
        unsafe {
            let fail = |what: &str| {
                let f = ptr::null_mut();
                format!("{what}: {}", py::take_exception(f))
            };
            let module = Obj::owned(ffi::PyModule_New(c"_lswsgi".as_ptr()))
                .ok_or_else(|| fail("creating the support module"))?;
            let dict = ffi::PyModule_GetDict(module.ptr());
            ffi::PyDict_SetItemString(dict, c"__builtins__".as_ptr(), ffi::PyEval_GetBuiltins());
            Obj::owned(ffi::PyRun_String(
                HELPER_SOURCE.as_ptr(),
                ffi::Py_file_input,
                dict,
                dict,
            ))
            .ok_or_else(|| fail("running the support module"))?;
            let get = |name: &CStr| -> Result<Obj, String> {
                let p = ffi::PyDict_GetItemString(dict, name.as_ptr());
                if p.is_null() {
                    Err(format!("support module lacks {name:?}"))
                } else {
                    Ok(Obj::borrowed(p))
                }
            };
            let logger = Obj::owned(ffi::PyCFunction_NewEx(
                ptr::addr_of!(LOG_WARNING.0) as *mut ffi::PyMethodDef,
                ptr::null_mut(),
                ptr::null_mut(),
            ))
            .ok_or_else(|| fail("creating the log function"))?;
            Obj::owned(ffi::PyObject_CallOneArg(
                get(c"restrict_signals")?.ptr(),
                logger.ptr(),
            ))
            .ok_or_else(|| fail("restricting signal handlers"))?;

            let version = Obj::owned(ffi::Py_BuildValue(c"(ii)".as_ptr(), 1, 0))
                .ok_or_else(|| fail("building wsgi.version"))?;
            Ok(Interp {
                tstate: ffi::PyThreadState_Get(),
                types: create_types()?,
                keys: Keys::new(),
                version,
                http: intern(c"http"),
                https: intern(c"https"),
                empty: intern(c""),
                cgi_1_1: intern(c"CGI/1.1"),
                close_name: intern(c"close"),
                file_wrapper: get(c"FileWrapper")?,
                format_exception: get(c"format_exception")?,
                load_script: get(c"load_script")?,
                import_module: get(c"import_module")?,
                cached: Default::default(),
                asgi: super::super::asgi::PerInterp::new(get(c"asgi_serve")?, get(c"asgi_kind")?)?,
                scripts: HashMap::new(),
            })
        }
    }

    /// Formats the pending Python exception with its traceback and clears it.
    pub fn take_exception(&self) -> String {
        // SAFETY: GIL held.
        unsafe { py::take_exception(self.format_exception.ptr()) }
    }

    /// The cached request object of kind `which` if nothing else holds it,
    /// rebound to `generation`; otherwise a new one that replaces the cache.
    ///
    /// # Safety
    /// The GIL is held and this interpreter is current.
    pub(in crate::wsgi) unsafe fn request_object(
        &mut self,
        which: RequestObject,
        generation: u64,
    ) -> Option<Obj> {
        let i = which as usize;
        if let Some(o) = &self.cached[i] {
            // SAFETY: GIL held (caller); `o` is a live object of one of this
            // interpreter's request types.
            unsafe {
                if ffi::Py_REFCNT(o.ptr()) == 1 {
                    objects::rebind(o.ptr(), generation);
                    return Some(o.clone());
                }
            }
        }
        let t = match which {
            RequestObject::Input => self.types.input,
            RequestObject::Errors => self.types.errors,
            RequestObject::StartResponse => self.types.start_response,
            RequestObject::Writer => self.types.writer,
        };
        // SAFETY: GIL held (caller); `t` is one of this interpreter's types.
        let o = unsafe { Obj::owned(objects::new_object(t, generation)) }?;
        self.cached[i] = Some(o.clone());
        Some(o)
    }

    /// Loads (or returns the cached module of) the WSGI script at `path`.
    /// With `reload`, a script whose file changed since loading is run afresh.
    pub fn script(&mut self, path: &[u8], reload: bool) -> Result<Obj, String> {
        let path_str = std::str::from_utf8(path).map_err(|_| {
            format!(
                "script path {:?} is not UTF-8",
                String::from_utf8_lossy(path)
            )
        })?;
        if let Some(s) = self.scripts.get(path) {
            if !reload || file_mtime(path_str) == Some(s.mtime) {
                return Ok(s.module.clone());
            }
        }
        let mtime = file_mtime(path_str).ok_or_else(|| {
            format!("cannot load WSGI script {path_str}: no such file or not readable")
        })?;
        let name = format!("_lswsgi_script_{:016x}", fnv1a(path));
        // SAFETY: GIL held.
        let module = unsafe {
            let py_path = Obj::owned(ffi::PyUnicode_DecodeFSDefaultAndSize(
                path.as_ptr().cast(),
                path.len() as ffi::Py_ssize_t,
            ))
            .ok_or_else(|| self.take_exception())?;
            let py_name =
                Obj::owned(py::latin1(name.as_bytes())).ok_or_else(|| self.take_exception())?;
            let args = Obj::owned(ffi::PyTuple_Pack(2, py_path.ptr(), py_name.ptr()))
                .ok_or_else(|| self.take_exception())?;
            Obj::owned(ffi::PyObject_Call(
                self.load_script.ptr(),
                args.ptr(),
                ptr::null_mut(),
            ))
            .ok_or_else(|| {
                format!(
                    "cannot load WSGI script {path_str}:\n{}",
                    self.take_exception()
                )
            })?
        };
        self.scripts.insert(
            path.to_vec(),
            Script {
                module: module.clone(),
                mtime,
            },
        );
        Ok(module)
    }

    /// Imports a dotted module name (for `-m package.module`).
    pub fn import(&mut self, name: &str) -> Result<Obj, String> {
        // SAFETY: GIL held.
        unsafe {
            let n = Obj::owned(py::latin1(name.as_bytes())).ok_or_else(|| self.take_exception())?;
            Obj::owned(ffi::PyObject_CallOneArg(self.import_module.ptr(), n.ptr()))
                .ok_or_else(|| format!("cannot import {name}:\n{}", self.take_exception()))
        }
    }

    /// The attribute `callable` of `module`, which must be callable.
    pub fn callable(&self, module: &Obj, callable: &[u8]) -> Result<Obj, String> {
        let name = String::from_utf8_lossy(callable);
        // SAFETY: GIL held.
        unsafe {
            let attr = Obj::owned(py::latin1(callable)).ok_or_else(|| self.take_exception())?;
            let app =
                Obj::owned(ffi::PyObject_GetAttr(module.ptr(), attr.ptr())).ok_or_else(|| {
                    ffi::PyErr_Clear();
                    format!(
                        "WSGI callable {name:?} not found in {}",
                        py::to_string(module.ptr())
                    )
                })?;
            if ffi::PyCallable_Check(app.ptr()) == 0 {
                return Err(format!("WSGI callable {name:?} is not callable"));
            }
            Ok(app)
        }
    }
}

/// Modification time of a readable file.
fn file_mtime(path: &str) -> Option<(i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() || !readable(path) {
        return None;
    }
    Some((m.mtime(), m.mtime_nsec()))
}

/// FNV-1a: a stable, dependency-free hash for module names.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
    })
}
