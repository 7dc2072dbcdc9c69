//! The environ keys every interpreter interns once: one list names each key,
//! gives its place in the interned table and, for the CGI variables
//! LiteSpeed sends, its lookup by name. The known headers' CGI names come
//! from the protocol layer's table ([`KNOWN_HEADER_CGI`]), by slot.

use super::super::py::{ffi, intern, Obj};
use lswsgi::lsapi::{KNOWN_HEADER_CGI, KNOWN_HEADER_COUNT};
use std::ffi::{CStr, CString};

/// Declares [`Key`], its names ([`NAMES`]) and [`Key::of_env`] from one list:
/// first the CGI variables looked up by name in the request's env list, then
/// the keys only the worker sets.
macro_rules! environ_keys {
    (
        from_env { $($ev:ident = $en:literal,)* }
        set_by_worker { $($wv:ident = $wn:literal,)* }
    ) => {
        /// A common environ key: its index in [`NAMES`] and in each
        /// interpreter's [`Keys`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Key {
            $(#[doc = concat!("`", stringify!($ev), "`")] $ev,)*
            $(#[doc = concat!("`", stringify!($wv), "`")] $wv,)*
        }

        /// The name of each [`Key`], in declaration order.
        const NAMES: &[&CStr] = &[$($en,)* $($wn,)*];

        impl Key {
            /// The key for a name from the request's env list, if it is one
            /// of the common CGI variables.
            #[inline]
            #[allow(non_upper_case_globals)]
            pub fn of_env(name: &[u8]) -> Option<Key> {
                // Constant patterns: the same comparisons as byte literals.
                $(const $ev: &[u8] = $en.to_bytes();)*
                match name {
                    $($ev => Some(Key::$ev),)*
                    _ => None,
                }
            }
        }
    };
}

environ_keys! {
    from_env {
        RequestMethod = c"REQUEST_METHOD",
        QueryString = c"QUERY_STRING",
        ScriptName = c"SCRIPT_NAME",
        PathInfo = c"PATH_INFO",
        ScriptFilename = c"SCRIPT_FILENAME",
        RequestUri = c"REQUEST_URI",
        ServerName = c"SERVER_NAME",
        ServerPort = c"SERVER_PORT",
        ServerProtocol = c"SERVER_PROTOCOL",
        ServerSoftware = c"SERVER_SOFTWARE",
        ServerAddr = c"SERVER_ADDR",
        ServerAdmin = c"SERVER_ADMIN",
        RemoteAddr = c"REMOTE_ADDR",
        RemotePort = c"REMOTE_PORT",
        DocumentRoot = c"DOCUMENT_ROOT",
        Https = c"HTTPS",
        GatewayInterface = c"GATEWAY_INTERFACE",
    }
    set_by_worker {
        WsgiVersion = c"wsgi.version",
        WsgiUrlScheme = c"wsgi.url_scheme",
        WsgiInput = c"wsgi.input",
        WsgiErrors = c"wsgi.errors",
        WsgiMultithread = c"wsgi.multithread",
        WsgiMultiprocess = c"wsgi.multiprocess",
        WsgiRunOnce = c"wsgi.run_once",
        WsgiFileWrapper = c"wsgi.file_wrapper",
    }
}

/// How many [`Key`]s there are.
const KEY_COUNT: usize = NAMES.len();

/// One interpreter's interned environ keys: every [`Key`], and the CGI name
/// of each known header by slot.
pub struct Keys {
    named: [Obj; KEY_COUNT],
    headers: [Obj; KNOWN_HEADER_COUNT],
}

impl Keys {
    /// Interns every key in the current interpreter.
    ///
    /// # Safety
    /// The GIL is held and the interpreter the keys are for is current.
    pub unsafe fn new() -> Keys {
        Keys {
            named: std::array::from_fn(|i| {
                // SAFETY: the caller holds the GIL in the right interpreter.
                unsafe { intern(NAMES[i]) }
            }),
            headers: std::array::from_fn(|slot| {
                let name = CString::new(KNOWN_HEADER_CGI[slot]).expect("a CGI name has no NUL");
                // SAFETY: as above.
                unsafe { intern(&name) }
            }),
        }
    }

    /// The interned `key` (borrowed: valid while this table lives).
    #[inline]
    pub fn get(&self, key: Key) -> *mut ffi::PyObject {
        self.named[key as usize].ptr()
    }

    /// The interned CGI name of known header `slot` (`< KNOWN_HEADER_COUNT`).
    #[inline]
    pub fn header(&self, slot: usize) -> *mut ffi::PyObject {
        self.headers[slot].ptr()
    }
}
