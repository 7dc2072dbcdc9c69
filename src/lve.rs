//! CloudLinux LVE and CageFS in suEXEC daemon mode, as lsapilib does it
//! (LSAPI.md section 7). `liblve.so.0` is loaded at run time (found the
//! usual way: ld.so.cache, LD_LIBRARY_PATH); without it LVE stays off and
//! that is logged. Per connection, before the user switch, the child enters
//! the account's LVE (508 when it is at its limit) and, for CageFS modes,
//! is jailed into the account's CageFS.

use std::ffi::{c_char, c_int, c_void, CStr};

type IsAvailable = unsafe extern "C" fn() -> c_int;
type InstanceInit = unsafe extern "C" fn(*mut c_void) -> c_int;
type Enter = unsafe extern "C" fn(*mut c_void, u32, i32, i32, *mut u32) -> c_int;
type Jail = unsafe extern "C" fn(*mut libc::passwd, *mut c_char) -> c_int;

/// LSAPI_LVE_ENABLE / LVE_ENABLE = 3: CageFS without suEXEC's user.
const CAGEFS_NO_SUEXEC: u8 = 3;

/// Why a connection cannot enter its account's LVE or CageFS.
#[derive(Debug)]
pub enum Error {
    /// lve_enter failed: the account is at its resource limit (508).
    Limit(String),
    /// The CageFS jail failed (the connection is dropped).
    Jail(String),
}

/// Whom a connection that entered its LVE (and CageFS) is served as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve {
    /// The user it authenticated as.
    User,
    /// Mode 3 ([`CAGEFS_NO_SUEXEC`]): the user is not in CageFS, so the
    /// default user.
    Default,
}

/// A loaded and initialised liblve instance.
pub struct Lve {
    mode: u8,
    /// The instance lve_instance_init filled; lives for the process.
    instance: *mut c_void,
    enter: Enter,
    jail: Option<Jail>,
}

/// `dlsym(lib, name)`, or None.
///
/// # Safety
/// `lib` is a live handle from dlopen.
unsafe fn sym(lib: *mut c_void, name: &CStr) -> Option<*mut c_void> {
    // SAFETY: `lib` is live (the caller's contract); `name` is NUL-terminated.
    let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

impl Lve {
    /// Loads and initialises LVE for `mode` (1 LVE, 2 LVE + CageFS, 3
    /// CageFS without the user switch). None (logged) when the mode is 0,
    /// the library is absent or LVE is unavailable; `Err` when the library
    /// is there but cannot be initialised.
    pub fn init(mode: u8) -> Result<Option<Lve>, String> {
        if mode == 0 {
            return Ok(None);
        }
        // SAFETY: dlopen/dlsym with valid C strings; every symbol is cast to
        // the signature liblve documents (LSAPI.md section 7); the instance
        // buffer is sized by lve_instance_init(NULL) as liblve requires and
        // never freed (it is used until the process exits).
        unsafe {
            let lib = libc::dlopen(c"liblve.so.0".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            if lib.is_null() {
                crate::warn!(
                    "LSAPI_LVE_ENABLE={mode} but liblve.so.0 cannot be loaded; LVE is off"
                );
                return Ok(None);
            }
            let Some(avail) = sym(lib, c"lve_is_available") else {
                crate::warn!("liblve.so.0 has no lve_is_available; LVE is off");
                return Ok(None);
            };
            let avail: IsAvailable = std::mem::transmute(avail);
            if avail() == 0 {
                crate::warn!("LVE is not available on this host; LVE is off");
                return Ok(None);
            }
            let (Some(init), Some(enter)) =
                (sym(lib, c"lve_instance_init"), sym(lib, c"lve_enter"))
            else {
                return Err("liblve.so.0 lacks lve_instance_init or lve_enter".into());
            };
            let init: InstanceInit = std::mem::transmute(init);
            let enter: Enter = std::mem::transmute(enter);
            let jail = if mode >= 2 {
                match sym(lib, c"jail") {
                    Some(j) => Some(std::mem::transmute::<*mut c_void, Jail>(j)),
                    None => {
                        return Err(
                            "LSAPI_LVE_ENABLE asks for CageFS but liblve.so.0 has no jail".into(),
                        )
                    }
                }
            } else {
                None
            };
            let size = init(std::ptr::null_mut());
            if size <= 0 {
                return Err(format!("lve_instance_init(NULL) returned {size}"));
            }
            let instance = libc::calloc(1, size as usize);
            if instance.is_null() {
                return Err("cannot allocate the LVE instance".into());
            }
            let rc = init(instance);
            if rc != 0 {
                libc::free(instance);
                return Err(format!(
                    "cannot initialise LVE: lve_instance_init returned {rc}"
                ));
            }
            crate::info!(
                "LVE enabled (mode {mode}{})",
                if jail.is_some() { ", CageFS" } else { "" }
            );
            Ok(Some(Lve {
                mode,
                instance,
                enter,
                jail,
            }))
        }
    }

    /// Before the switch to `uid`: enters the uid's LVE, then (CageFS) jails
    /// the process. Says whom to switch to: the default user when mode 3's
    /// jail says the user is not in CageFS.
    pub fn enter_and_jail(&self, uid: u32) -> Result<Serve, Error> {
        let mut cookie = 0u32;
        // SAFETY: the instance was initialised by lve_instance_init; cookie
        // is a valid out pointer.
        let rc = unsafe { (self.enter)(self.instance, uid, -1, -1, &mut cookie) };
        if rc < 0 {
            return Err(Error::Limit(format!(
                "lve_enter({}) failed ({rc}): the account reached its resource limit",
                uid
            )));
        }
        let Some(jail) = self.jail else {
            return Ok(Serve::User);
        };
        // SAFETY: getpwuid's record stays valid until the next getpw* call,
        // which happens after jail returns; errbuf is the 1024 bytes jail
        // may write, NUL-terminated by us.
        unsafe {
            let pw = libc::getpwuid(uid);
            if pw.is_null() {
                return Ok(Serve::User);
            }
            let mut errbuf = [0 as c_char; 1024];
            let rc = jail(pw, errbuf.as_mut_ptr());
            errbuf[1023] = 0;
            if rc < 0 {
                let msg = CStr::from_ptr(errbuf.as_ptr()).to_string_lossy();
                return Err(Error::Jail(format!(
                    "CageFS jail({}) failed ({rc}): {msg}",
                    uid
                )));
            }
            if rc == 1 && self.mode == CAGEFS_NO_SUEXEC {
                return Ok(Serve::Default);
            }
        }
        Ok(Serve::User)
    }
}
