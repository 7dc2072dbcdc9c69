//! Small helpers over the CPython C API: owned references, latin-1 strings,
//! exceptions as text.
//!
//! Every function here must be called with the GIL held (the worker holds it
//! all the time except while waiting for the next request).

pub use pyo3_ffi as ffi;
use std::ffi::CStr;
use std::ptr::{self, NonNull};

extern "C" {
    // Exported by libpython but not declared public by pyo3-ffi.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> i32;
    fn _PyDict_NewPresized(minused: ffi::Py_ssize_t) -> *mut ffi::PyObject;
    #[cfg(not(lswsgi_py313))]
    fn _PyObject_LookupAttr(
        o: *mut ffi::PyObject,
        name: *mut ffi::PyObject,
        result: *mut *mut ffi::PyObject,
    ) -> std::ffi::c_int;
}

/// `getattr(o, name)` without raising AttributeError when it is missing (an
/// exception costs more than the rest of a small request). `Err` leaves
/// another exception set.
#[inline]
pub unsafe fn lookup_attr(
    o: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> Result<Option<Obj>, ()> {
    let mut out = ptr::null_mut();
    #[cfg(not(lswsgi_py313))]
    let r = _PyObject_LookupAttr(o, name, &mut out);
    #[cfg(lswsgi_py313)]
    let r = ffi::PyObject_GetOptionalAttr(o, name, &mut out);
    match r {
        r if r < 0 => Err(()),
        _ => Ok(Obj::owned(out)),
    }
}

/// An owned (strong) reference; dropped with Py_DECREF.
#[derive(Debug)]
pub struct Obj(NonNull<ffi::PyObject>);

impl Obj {
    /// Takes ownership of a new reference; `None` if `p` is NULL (an
    /// exception is then set).
    #[inline]
    pub unsafe fn owned(p: *mut ffi::PyObject) -> Option<Obj> {
        NonNull::new(p).map(Obj)
    }

    /// Takes a new reference to a borrowed, non-NULL pointer.
    #[inline]
    pub unsafe fn borrowed(p: *mut ffi::PyObject) -> Obj {
        ffi::Py_INCREF(p);
        Obj(NonNull::new_unchecked(p))
    }

    /// The raw pointer (still owned by `self`).
    #[inline]
    pub fn ptr(&self) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }
}

impl Clone for Obj {
    fn clone(&self) -> Self {
        unsafe { Obj::borrowed(self.ptr()) }
    }
}

impl Drop for Obj {
    #[inline]
    fn drop(&mut self) {
        unsafe { ffi::Py_DECREF(self.0.as_ptr()) }
    }
}

/// A new `str` decoded from latin-1 bytes (the WSGI rule for native strings).
#[inline]
pub unsafe fn latin1(b: &[u8]) -> *mut ffi::PyObject {
    ffi::PyUnicode_DecodeLatin1(b.as_ptr().cast(), b.len() as ffi::Py_ssize_t, ptr::null())
}

/// An interned `str` for a static name.
pub unsafe fn intern(s: &CStr) -> Obj {
    Obj::owned(ffi::PyUnicode_InternFromString(s.as_ptr())).expect("interning a str")
}

/// The bytes of a `str` whose characters are all below 256 (its latin-1
/// encoding, borrowed from the object), or `None` for other strings or types.
#[inline]
pub unsafe fn str_latin1<'a>(o: *mut ffi::PyObject) -> Option<&'a [u8]> {
    // Exact str and subclasses (enum.StrEnum, …) alike: PyUnicode_DATA reads
    // a subclass's separately allocated data.
    if ffi::PyUnicode_Check(o) == 0 {
        return None;
    }
    if ffi::PyUnicode_KIND(o) != ffi::PyUnicode_1BYTE_KIND {
        return None;
    }
    let len = ffi::PyUnicode_GET_LENGTH(o) as usize;
    Some(std::slice::from_raw_parts(
        ffi::PyUnicode_DATA(o) as *const u8,
        len,
    ))
}

/// The contents of a `bytes` object, borrowed.
#[inline]
pub unsafe fn bytes_of<'a>(o: *mut ffi::PyObject) -> &'a [u8] {
    std::slice::from_raw_parts(ffi::PyBytes_AS_STRING(o) as *const u8, bytes_len(o))
}

/// Length of a `bytes` object.
#[inline]
pub unsafe fn bytes_len(o: *mut ffi::PyObject) -> usize {
    ffi::PyBytes_Size(o) as usize
}

/// A new, uninitialised `bytes` of `len` bytes, or NULL with MemoryError set.
pub unsafe fn new_bytes(len: usize) -> *mut ffi::PyObject {
    ffi::PyBytes_FromStringAndSize(ptr::null(), len as ffi::Py_ssize_t)
}

/// Shrinks a `bytes` made by [`new_bytes`] to `len`; NULL (and the object
/// freed) on failure.
pub unsafe fn shrink_bytes(mut b: *mut ffi::PyObject, len: usize) -> *mut ffi::PyObject {
    if _PyBytes_Resize(&mut b, len as ffi::Py_ssize_t) < 0 {
        return ptr::null_mut();
    }
    b
}

/// A dict with room for `n` items without resizing.
#[inline]
pub unsafe fn presized_dict(n: usize) -> *mut ffi::PyObject {
    _PyDict_NewPresized(n as ffi::Py_ssize_t)
}

/// Raises `exc` with `msg`; returns NULL for convenient `return`.
pub unsafe fn raise(exc: *mut ffi::PyObject, msg: &str) -> *mut ffi::PyObject {
    let m = latin1(msg.as_bytes());
    if !m.is_null() {
        ffi::PyErr_SetObject(exc, m);
        ffi::Py_DECREF(m);
    }
    ptr::null_mut()
}

/// `str(o)` as a Rust string (lossy), for log lines.
pub unsafe fn to_string(o: *mut ffi::PyObject) -> String {
    let s = ffi::PyObject_Str(o);
    if s.is_null() {
        ffi::PyErr_Clear();
        return "<unprintable>".into();
    }
    let mut len: ffi::Py_ssize_t = 0;
    let p = ffi::PyUnicode_AsUTF8AndSize(s, &mut len);
    let out = if p.is_null() {
        ffi::PyErr_Clear();
        "<unprintable>".into()
    } else {
        String::from_utf8_lossy(std::slice::from_raw_parts(p as *const u8, len as usize))
            .into_owned()
    };
    ffi::Py_DECREF(s);
    out
}

/// Takes the pending exception and formats it with its traceback using
/// `formatter` (a Python callable taking the exception). Clears the error.
pub unsafe fn take_exception(formatter: *mut ffi::PyObject) -> String {
    let (mut t, mut v, mut tb) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // Deprecated from 3.12 for PyErr_GetRaisedException, which older
    // versions lack; still supported by 3.12 and 3.13.
    #[allow(deprecated)]
    ffi::PyErr_Fetch(&mut t, &mut v, &mut tb);
    if t.is_null() {
        return "unknown error (no exception set)".into();
    }
    #[allow(deprecated)] // as PyErr_Fetch above
    ffi::PyErr_NormalizeException(&mut t, &mut v, &mut tb);
    if !tb.is_null() && !v.is_null() {
        ffi::PyException_SetTraceback(v, tb);
    }
    let text = if v.is_null() || formatter.is_null() {
        to_string(t)
    } else {
        let r = ffi::PyObject_CallOneArg(formatter, v);
        if r.is_null() {
            ffi::PyErr_Clear();
            to_string(v)
        } else {
            let s = to_string(r);
            ffi::Py_DECREF(r);
            s
        }
    };
    ffi::Py_XDECREF(t);
    ffi::Py_XDECREF(v);
    ffi::Py_XDECREF(tb);
    text
}
