//! suEXEC daemon mode and never serving as root.
//!
//! Started as root with LSAPI_SECRET, the worker group stays root and each
//! child authenticates the user LiteSpeed names in the request's special env
//! (`\0SUEXEC_UGID`: uid and gid as native int32; `\0SUEXEC_AUTH`: a 16-byte
//! nonce and MD5(nonce ‖ secret ‖ ugid)) before switching to it. Anything
//! that fails falls back to LSAPI_DEFAULT_UID/GID or `nobody`: application
//! code never runs as root.

use crate::config::Config;
use std::ffi::CString;

/// Bytes of the shared secret used (the first 16 of the file).
const SECRET_LEN: usize = 16;

/// The suEXEC shared secret, wiped from memory when dropped.
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// Reads the secret file: a regular file, not readable or writable by
    /// group or others, of at least 16 bytes.
    pub fn load(path: &str) -> Result<Secret, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("LSAPI_SECRET {path}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("LSAPI_SECRET {path} is not a regular file"));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "LSAPI_SECRET {path} has mode {:04o}; it must not be accessible to group or others (chmod 600)",
                meta.mode() & 0o7777
            ));
        }
        let mut data = std::fs::read(path).map_err(|e| format!("LSAPI_SECRET {path}: {e}"))?;
        if data.len() < SECRET_LEN {
            wipe(&mut data);
            return Err(format!(
                "LSAPI_SECRET {path} holds {} bytes; at least {SECRET_LEN} are needed",
                data.len()
            ));
        }
        let mut s = [0u8; SECRET_LEN];
        s.copy_from_slice(&data[..SECRET_LEN]);
        wipe(&mut data);
        Ok(Secret(s))
    }

    /// Checks the suEXEC entries at the end of a request's special env and
    /// returns the authenticated `(uid, gid)`; `None` if absent or forged.
    pub fn authenticate<'a>(
        &self,
        special_env: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Option<(u32, u32)> {
        let (mut ugid, mut auth) = (None, None);
        for (key, value) in special_env {
            // The pair must be the last two entries, UGID then AUTH.
            match key {
                b"\0SUEXEC_UGID" => {
                    ugid = Some(value);
                    auth = None;
                }
                b"\0SUEXEC_AUTH" if ugid.is_some() => auth = Some(value),
                _ => {
                    ugid = None;
                    auth = None;
                }
            }
        }
        let (ugid, auth) = (ugid?, auth?);
        if ugid.len() < 8 || auth.len() < 32 {
            return None;
        }
        let expected = md5(&[&auth[..16], &self.0, &ugid[..8]]);
        if !constant_time_eq(&expected, &auth[16..32]) {
            return None;
        }
        let uid = i32::from_ne_bytes(ugid[0..4].try_into().ok()?);
        let gid = i32::from_ne_bytes(ugid[4..8].try_into().ok()?);
        (uid > 0 && gid >= 0).then_some((uid as u32, gid as u32))
    }
}

impl std::fmt::Debug for Secret {
    /// Never prints the secret itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites `b` with zeros in a way the optimiser may not remove.
fn wipe(b: &mut [u8]) {
    for x in b.iter_mut() {
        // SAFETY: a valid, aligned pointer to a byte we own.
        unsafe { std::ptr::write_volatile(x, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// MD5 over the concatenation of `parts`.
fn md5(parts: &[&[u8]]) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Compares without an early exit, so timing reveals nothing of the match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user to serve as when no authenticated one is available:
/// LSAPI_DEFAULT_UID/GID, else `nobody` (and its group).
pub fn default_ids(cfg: &Config) -> Result<(u32, u32), String> {
    let nobody = || -> Result<(u32, u32), String> {
        // SAFETY: getpwnam returns NULL or a pointer to a static record read
        // immediately.
        unsafe {
            let pw = libc::getpwnam(c"nobody".as_ptr());
            if pw.is_null() {
                return Err("no LSAPI_DEFAULT_UID set and no user 'nobody' exists".into());
            }
            Ok(((*pw).pw_uid, (*pw).pw_gid))
        }
    };
    match (cfg.default_uid, cfg.default_gid) {
        (Some(u), Some(g)) => Ok((u, g)),
        (Some(u), None) => Ok((u, nobody().map(|(_, g)| g).unwrap_or(u))),
        (None, Some(g)) => Ok((nobody()?.0, g)),
        (None, None) => nobody(),
    }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 || libc::getuid() == 0 }
}

/// Becomes `uid:gid` for good: setgid, supplementary groups (initgroups when
/// the user's primary group is `gid`, else just `gid`), then setuid. Refuses
/// uid 0 and verifies that root cannot be regained.
pub fn switch_user(uid: u32, gid: u32) -> Result<(), String> {
    if uid == 0 {
        return Err("refusing to serve as root (uid 0)".into());
    }
    // SAFETY: plain credential system calls; getpwuid's record is read at once.
    unsafe {
        if libc::setgid(gid) != 0 {
            return Err(format!(
                "setgid({gid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        let pw = libc::getpwuid(uid);
        let groups_ok = if !pw.is_null() && (*pw).pw_gid == gid {
            let name = CString::from(std::ffi::CStr::from_ptr((*pw).pw_name));
            libc::initgroups(name.as_ptr(), gid) == 0
        } else {
            libc::setgroups(1, &gid) == 0
        };
        if !groups_ok {
            return Err(format!(
                "setting supplementary groups for {uid}:{gid}: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(uid) != 0 {
            return Err(format!(
                "setuid({uid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::getuid() != uid || libc::geteuid() != uid || libc::setuid(0) == 0 {
            return Err(format!(
                "could not drop root for good (now uid {})",
                libc::getuid()
            ));
        }
    }
    Ok(())
}

/// The identity check a suEXEC daemon-mode child applies to each request of
/// its connection: the first authenticates and switches user for good; later
/// ones must name the same user.
pub struct Gate {
    /// Held until the first request is authenticated, then wiped.
    secret: Option<Secret>,
    default: (u32, u32),
    serving_as: Option<(u32, u32)>,
}

impl Gate {
    /// A gate that authenticates with `secret`, falling back to `default`.
    pub fn new(secret: Secret, default: (u32, u32)) -> Gate {
        Gate {
            secret: Some(secret),
            default,
            serving_as: None,
        }
    }

    /// Admits a request whose special env is `special_env`. `Err` means the
    /// request must not be served and the process must leave.
    pub fn admit<'a>(
        &mut self,
        special_env: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    ) -> Result<(), String> {
        if let Some(current) = self.serving_as {
            return match requested_ugid(special_env) {
                Some(ids) if ids != current => Err(format!(
                    "request for {}:{} on a connection serving {}:{}",
                    ids.0, ids.1, current.0, current.1
                )),
                _ => Ok(()),
            };
        }
        let secret = self.secret.take().expect("secret held until first request");
        let ids = match secret.authenticate(special_env.clone()) {
            Some(ids) => ids,
            None => {
                let why = if requested_ugid(special_env).is_some() {
                    "failed authentication"
                } else {
                    "no suEXEC identity"
                };
                crate::warn!(
                    "request with {why}: serving as the default user {}:{}",
                    self.default.0,
                    self.default.1
                );
                self.default
            }
        };
        drop(secret);
        switch_user(ids.0, ids.1)?;
        self.serving_as = Some(ids);
        Ok(())
    }
}

/// The `(uid, gid)` a request's `\0SUEXEC_UGID` names, unauthenticated.
fn requested_ugid<'a>(
    special_env: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Option<(u32, u32)> {
    let (_, v) = special_env.filter(|(k, _)| *k == b"\0SUEXEC_UGID").last()?;
    let uid = i32::from_ne_bytes(v.get(0..4)?.try_into().ok()?);
    let gid = i32::from_ne_bytes(v.get(4..8)?.try_into().ok()?);
    Some((uid as u32, gid as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret(*b"0123456789abcdef")
    }

    fn entries(uid: i32, gid: i32, nonce: [u8; 16], s: &Secret) -> (Vec<u8>, Vec<u8>) {
        let mut ugid = uid.to_ne_bytes().to_vec();
        ugid.extend_from_slice(&gid.to_ne_bytes());
        let mut auth = nonce.to_vec();
        auth.extend_from_slice(&md5(&[&nonce, &s.0, &ugid]));
        (ugid, auth)
    }

    #[test]
    fn md5_matches_rfc1321() {
        let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(md5(&[b""])), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(md5(&[b"ab", b"c"])), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn authentic_request_yields_its_user() {
        let s = secret();
        let (ugid, auth) = entries(1001, 1002, [7; 16], &s);
        let env = [
            (b"OTHER".as_slice(), b"x".as_slice()),
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
        ];
        assert_eq!(s.authenticate(env.iter().copied()), Some((1001, 1002)));
    }

    #[test]
    fn forged_missing_or_root_requests_are_refused() {
        let s = secret();
        let (ugid, mut auth) = entries(1001, 1002, [7; 16], &s);
        auth[20] ^= 1;
        let env = [
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
        ];
        assert_eq!(s.authenticate(env.iter().copied()), None);
        // Signed with another secret.
        let (ugid, auth) = entries(1001, 1002, [7; 16], &Secret(*b"fedcba9876543210"));
        let env = [
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
        ];
        assert_eq!(s.authenticate(env.iter().copied()), None);
        // Root is never an authenticated user.
        let (ugid, auth) = entries(0, 0, [1; 16], &s);
        let env = [
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
        ];
        assert_eq!(s.authenticate(env.iter().copied()), None);
        // Wrong order, or not at the end.
        let (ugid, auth) = entries(1001, 1002, [7; 16], &s);
        let env = [
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
        ];
        assert_eq!(s.authenticate(env.iter().copied()), None);
        let env = [
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
            (b"LATE".as_slice(), b"1".as_slice()),
        ];
        assert_eq!(s.authenticate(env.iter().copied()), None);
        assert_eq!(s.authenticate(std::iter::empty()), None);
    }

    #[test]
    fn secret_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lswsgi-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, b"0123456789abcdefXYZ").unwrap();
        let p = path.to_str().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Secret::load(p).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&Secret::load(p).unwrap().0, b"0123456789abcdef");
        std::fs::write(&path, b"short").unwrap();
        assert!(Secret::load(p).unwrap_err().contains("at least 16"));
        assert!(Secret::load(dir.to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
