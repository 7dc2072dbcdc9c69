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
///
/// # Safety
/// GIL held; `o` and `name` (a str) are live.
#[inline]
pub unsafe fn lookup_attr(
    o: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> Result<Option<Obj>, ()> {
    // SAFETY: GIL held and live arguments (the contract); `out` is a live local.
    unsafe {
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
}

/// An owned (strong) reference; dropped with Py_DECREF.
#[derive(Debug)]
pub struct Obj(NonNull<ffi::PyObject>);

impl Obj {
    /// Takes ownership of a new reference; `None` if `p` is NULL (an
    /// exception is then set).
    ///
    /// # Safety
    /// `p` is NULL or a new (owned) reference, and the GIL is held whenever the Obj is dropped.
    #[inline]
    pub unsafe fn owned(p: *mut ffi::PyObject) -> Option<Obj> {
        // Ownership of `p` passes to the Obj (the contract).
        NonNull::new(p).map(Obj)
    }

    /// Takes a new reference to a borrowed, non-NULL pointer.
    ///
    /// # Safety
    /// GIL held; `p` is a live, non-NULL object.
    #[inline]
    pub unsafe fn borrowed(p: *mut ffi::PyObject) -> Obj {
        // SAFETY: GIL held and `p` non-NULL (the contract).
        unsafe {
            ffi::Py_INCREF(p);
            Obj(NonNull::new_unchecked(p))
        }
    }

    /// The raw pointer (still owned by `self`).
    #[inline]
    pub fn ptr(&self) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }
}

impl Clone for Obj {
    fn clone(&self) -> Self {
        // SAFETY: `self` holds a live, non-NULL reference, and an Obj exists
        // only where the GIL is held (Obj::owned's contract).
        unsafe { Obj::borrowed(self.ptr()) }
    }
}

impl Drop for Obj {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `self` owns this reference, released once; the GIL is held
        // wherever an Obj is dropped (Obj::owned's contract).
        unsafe { ffi::Py_DECREF(self.0.as_ptr()) }
    }
}

/// A new `str` decoded from latin-1 bytes (the WSGI rule for native strings).
///
/// # Safety
/// GIL held.
#[inline]
pub unsafe fn latin1(b: &[u8]) -> *mut ffi::PyObject {
    // SAFETY: GIL held (the contract); every pointer passed to the C API is a live object.
    unsafe {
        ffi::PyUnicode_DecodeLatin1(b.as_ptr().cast(), b.len() as ffi::Py_ssize_t, ptr::null())
    }
}

/// An interned `str` for a static name.
///
/// # Safety
/// GIL held.
pub unsafe fn intern(s: &CStr) -> Obj {
    // SAFETY: GIL held (the contract); every pointer passed to the C API is a live object.
    unsafe { Obj::owned(ffi::PyUnicode_InternFromString(s.as_ptr())).expect("interning a str") }
}

/// The bytes of a `str` whose characters are all below 256 (its latin-1
/// encoding, borrowed from the object), or `None` for other strings or types.
///
/// # Safety
/// GIL held; `o` is live and outlives the returned slice.
#[inline]
pub unsafe fn str_latin1<'a>(o: *mut ffi::PyObject) -> Option<&'a [u8]> {
    // SAFETY: GIL held, `o` live (the contract); a 1-byte-kind str stores GET_LENGTH
    // bytes at PyUnicode_DATA.
    unsafe {
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
}

/// The contents of a `bytes` object, borrowed.
///
/// # Safety
/// GIL held; `o` is a live bytes object that outlives the returned slice.
#[inline]
pub unsafe fn bytes_of<'a>(o: *mut ffi::PyObject) -> &'a [u8] {
    // SAFETY: `o` is a bytes object (the contract): AS_STRING points at its bytes_len bytes.
    unsafe { std::slice::from_raw_parts(ffi::PyBytes_AS_STRING(o) as *const u8, bytes_len(o)) }
}

/// Length of a `bytes` object.
///
/// # Safety
/// GIL held; `o` is a live bytes object.
#[inline]
pub unsafe fn bytes_len(o: *mut ffi::PyObject) -> usize {
    // SAFETY: `o` is a bytes object (the contract).
    unsafe { ffi::PyBytes_Size(o) as usize }
}

/// A new, uninitialised `bytes` of `len` bytes, or NULL with MemoryError set.
///
/// # Safety
/// GIL held.
pub unsafe fn new_bytes(len: usize) -> *mut ffi::PyObject {
    // SAFETY: GIL held (the contract); every pointer passed to the C API is a live object.
    unsafe { ffi::PyBytes_FromStringAndSize(ptr::null(), len as ffi::Py_ssize_t) }
}

/// Shrinks a `bytes` made by [`new_bytes`] to `len`; NULL (and the object
/// freed) on failure.
///
/// # Safety
/// GIL held; `b` came from [`new_bytes`] and nobody else holds it.
pub unsafe fn shrink_bytes(mut b: *mut ffi::PyObject, len: usize) -> *mut ffi::PyObject {
    // SAFETY: `b` is an unshared bytes object (the contract), as _PyBytes_Resize requires.
    unsafe {
        if _PyBytes_Resize(&mut b, len as ffi::Py_ssize_t) < 0 {
            return ptr::null_mut();
        }
        b
    }
}

/// A dict with room for `n` items without resizing.
///
/// # Safety
/// GIL held.
#[inline]
pub unsafe fn presized_dict(n: usize) -> *mut ffi::PyObject {
    // SAFETY: GIL held (the contract); every pointer passed to the C API is a live object.
    unsafe { _PyDict_NewPresized(n as ffi::Py_ssize_t) }
}

/// Raises `exc` with `msg`; returns NULL for convenient `return`.
///
/// # Safety
/// GIL held.
pub unsafe fn raise(exc: *mut ffi::PyObject, msg: &str) -> *mut ffi::PyObject {
    // SAFETY: GIL held (the contract); every pointer passed to the C API is a live object.
    unsafe {
        let m = latin1(msg.as_bytes());
        if !m.is_null() {
            ffi::PyErr_SetObject(exc, m);
            ffi::Py_DECREF(m);
        }
        ptr::null_mut()
    }
}

/// The one positional argument of a call slot's `(args, kwargs)`, or None
/// when there are more, fewer or keyword arguments.
///
/// # Safety
/// GIL held; `args` is a live tuple, `kwargs` null or a live dict (as
/// CPython passes them to tp_call).
pub unsafe fn only_argument(
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> Option<*mut ffi::PyObject> {
    // SAFETY: live tuple and dict (the contract); item 0 exists when the size is 1.
    unsafe {
        let keywords = !kwargs.is_null() && ffi::PyDict_Size(kwargs) != 0;
        (ffi::PyTuple_GET_SIZE(args) == 1 && !keywords).then(|| ffi::PyTuple_GET_ITEM(args, 0))
    }
}

/// `str(o)` as a Rust string (lossy), for log lines.
///
/// # Safety
/// GIL held; `o` is live.
pub unsafe fn to_string(o: *mut ffi::PyObject) -> String {
    // SAFETY: GIL held, `o` live (the contract); the UTF-8 data is copied before `s` is released.
    unsafe {
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
}

/// Takes the pending exception and formats it with its traceback using
/// `formatter` (a Python callable taking the exception). Clears the error.
///
/// # Safety
/// GIL held; `formatter` is NULL or a live callable.
pub unsafe fn take_exception(formatter: *mut ffi::PyObject) -> String {
    // SAFETY: GIL held (the contract); every fetched reference is released once here.
    unsafe {
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
}
