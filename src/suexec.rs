//! suEXEC daemon mode and never serving as root.
//!
//! Started as root with LSAPI_SECRET, the worker group stays root and each
//! child authenticates the user LiteSpeed names in the request's special env
//! (`\0SUEXEC_UGID`: uid and gid as native int32; `\0SUEXEC_AUTH`: a 16-byte
//! nonce and MD5(nonce ‖ secret ‖ ugid)) before switching to it. A request
//! without suEXEC credentials is served as LSAPI_DEFAULT_UID/GID (or
//! `nobody`); one whose credentials are wrong, or name a user below the
//! LSAPI_MIN_UID/LSAPI_MIN_GID floor, is refused and its connection dropped.
//! Later requests on the connection must name the same user (no credentials
//! naming the default user). Application code never runs as root, and each
//! child has its own session and, after the switch, its own session keyring.
//!
//! The secret lives in one anonymous page (never dumped, never swapped), is
//! read into it straight from the file descriptor, and the MD5 state runs in
//! that page too; before the user switch the page is wiped and unmapped and
//! the stack the hash ran on is overwritten, so no copy remains in a process
//! where tenant code can run.

use crate::config::Config;
use crate::lve::{self, Lve};
use std::ffi::CString;

/// Bytes of the shared secret used (the first 16 of the file).
const SECRET_LEN: usize = 16;
/// Offset in the secret page of the MD5 state (64: aligned for any field).
const HASH_OFF: usize = 64;
/// Size of the secret page, bytes (one page on every Linux target).
const PAGE: usize = 4096;

/// A user to serve as: uid and gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

impl std::fmt::Display for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// A suEXEC daemon: what its children need to admit a connection, from
/// start-up (as root) to each child's first request.
pub struct Daemon {
    secret: Secret,
    /// The user for requests without suEXEC credentials.
    default: Ids,
    floor: Floor,
    lve: Option<Lve>,
}

impl Daemon {
    /// Applies the root rules of LSAPI.md section 7. Started as root with
    /// LSAPI_SECRET: a suEXEC daemon (returned) whose children never keep
    /// the listener, since each serves one user. Started as root without it:
    /// switch to LSAPI_DEFAULT_UID/GID or `nobody` now. Not root: nothing to
    /// do.
    pub fn set_up(cfg: &mut Config) -> Result<Option<Daemon>, String> {
        if !is_root() {
            return Ok(None);
        }
        let default = default_ids(cfg)?;
        let Some(path) = &cfg.secret_file else {
            switch_user(default)
                .map_err(|e| format!("started as root and cannot drop privileges: {e}"))?;
            crate::info!("started as root; serving as {default}");
            return Ok(None);
        };
        let secret = Secret::load(path)?;
        if !cfg.process_group() {
            return Err(
                "suEXEC daemon mode (LSAPI_SECRET as root) needs LSAPI_CHILDREN > 1".into(),
            );
        }
        cfg.one_tenant_per_child();
        let lve = Lve::init(cfg.lve_enable)?;
        crate::info!(
            "suEXEC daemon mode: children switch to the authenticated user of each connection"
        );
        Ok(Some(Daemon {
            secret,
            default,
            floor: Floor::new(cfg),
            lve,
        }))
    }

    /// In a freshly forked child, before anything of a tenant runs: root
    /// stays only the saved uid until the final switch, and the child gets
    /// a session of its own (no terminal or session shared with root or
    /// another tenant; the tenant's own processes start in this child's
    /// group, ended by [`Daemon::child_exit`]). Returns the gate its
    /// requests pass; `after_switch` runs once the user switch is done (the
    /// embedding's per-user set-up, e.g. the tenant's PYTHONPATH).
    pub fn start_child(self, after_switch: fn()) -> Result<Gate, String> {
        hold_as(self.default)?;
        own_session()?;
        Ok(Gate {
            secret: Some(self.secret),
            default: self.default,
            floor: self.floor,
            lve: self.lve,
            after_switch,
            serving_as: None,
        })
    }

    /// In a daemon child about to exit: ends what the tenant started from
    /// it ([`end_tenant_group`]) once the exit work is done.
    pub fn child_exit() {
        crate::sys::before_exit_now(end_tenant_group);
    }
}

/// The suEXEC shared secret, in its own page; wiped and unmapped on drop.
/// Only a pointer moves: the bytes never leave the page.
pub struct Secret {
    page: *mut u8,
}

impl Secret {
    /// A fresh zeroed, locked, never-dumped page.
    fn map() -> Result<Secret, String> {
        // SAFETY: an anonymous private mapping owned by the returned Secret;
        // madvise/mlock only affect that range.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(format!(
                    "cannot map a page for the secret: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // Best effort: not in core dumps, not swapped out.
            libc::madvise(p, PAGE, libc::MADV_DONTDUMP);
            libc::mlock(p, PAGE);
            Ok(Secret { page: p.cast() })
        }
    }

    #[cfg(test)]
    fn from_bytes(b: &[u8; SECRET_LEN]) -> Secret {
        let s = Secret::map().unwrap();
        // SAFETY: the page is PAGE bytes long and ours.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), s.page, SECRET_LEN) };
        s
    }

    /// The secret bytes, inside the page.
    fn bytes(&self) -> &[u8] {
        // SAFETY: the page is live while self is, and its first SECRET_LEN
        // bytes are initialised (zeroed by mmap, then read).
        unsafe { std::slice::from_raw_parts(self.page, SECRET_LEN) }
    }

    /// Reads the secret file, opened once without following a symbolic
    /// link and checked on the open descriptor: a regular file owned by this
    /// (root) user, with no group or other permission bits, of at least 16
    /// bytes. The bytes go straight from the kernel into the secret page.
    pub fn load(path: &str) -> Result<Secret, String> {
        let c = CString::new(path).map_err(|_| format!("LSAPI_SECRET {path:?}: NUL in path"))?;
        // Whoever may write a directory above the file may swap it (or the
        // directory) between this check and the next start.
        let p = std::path::Path::new(path);
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::trust::root_trusted(dir).map_err(|e| {
                format!(
                    "LSAPI_SECRET {path}: {e}; the secret must lie in directories that root owns \
                     and nobody else can write"
                )
            })?;
        }
        let os = |what: &str| {
            format!(
                "LSAPI_SECRET {path}: {what}: {}",
                std::io::Error::last_os_error()
            )
        };
        // SAFETY: c is a valid C string; fstat fills a plain struct; fd is
        // closed on every path below.
        unsafe {
            let fd = libc::open(
                c.as_ptr(),
                libc::O_RDONLY
                    | libc::O_NOFOLLOW
                    | libc::O_CLOEXEC
                    | libc::O_NOCTTY
                    | libc::O_NONBLOCK,
            );
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::ELOOP) {
                    format!("LSAPI_SECRET {path} is a symbolic link; name the file itself")
                } else {
                    format!("LSAPI_SECRET {path}: {e}")
                });
            }
            let r = (|| {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::fstat(fd, &mut st) != 0 {
                    return Err(os("fstat"));
                }
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(format!("LSAPI_SECRET {path} is not a regular file"));
                }
                if st.st_uid != libc::geteuid() {
                    return Err(format!(
                        "LSAPI_SECRET {path} is owned by uid {}; it must belong to root",
                        st.st_uid
                    ));
                }
                if st.st_mode & 0o077 != 0 {
                    return Err(format!(
                        "LSAPI_SECRET {path} has mode {:04o}; it must not be accessible to group or others (chmod 600)",
                        st.st_mode & 0o7777
                    ));
                }
                if (st.st_size as u64) < SECRET_LEN as u64 {
                    return Err(format!(
                        "LSAPI_SECRET {path} holds {} bytes; at least {SECRET_LEN} are needed",
                        st.st_size
                    ));
                }
                let s = Secret::map()?;
                let mut got = 0;
                while got < SECRET_LEN {
                    let n = libc::read(fd, s.page.add(got).cast(), SECRET_LEN - got);
                    if n < 0
                        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                    {
                        continue;
                    }
                    if n <= 0 {
                        return Err(if n == 0 {
                            format!("LSAPI_SECRET {path} shrank while being read")
                        } else {
                            os("read")
                        });
                    }
                    got += n as usize;
                }
                Ok(s)
            })();
            libc::close(fd);
            r
        }
    }

    /// Checks the suEXEC entries at the end of a request's special env.
    pub fn authenticate<'a>(
        &self,
        special_env: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Auth {
        let (mut ugid, mut auth, mut present) = (None, None, false);
        for (key, value) in special_env {
            // The pair must be the last two entries, UGID then AUTH.
            match key {
                b"\0SUEXEC_UGID" => {
                    present = true;
                    ugid = Some(value);
                    auth = None;
                }
                b"\0SUEXEC_AUTH" if ugid.is_some() => auth = Some(value),
                _ => {
                    present |= key == b"\0SUEXEC_AUTH";
                    ugid = None;
                    auth = None;
                }
            }
        }
        if !present {
            return Auth::Absent;
        }
        let (Some(ugid), Some(auth)) = (ugid, auth) else {
            return Auth::Invalid("malformed suEXEC credentials");
        };
        if ugid.len() != 8 || auth.len() != 32 {
            return Auth::Invalid("malformed suEXEC credentials");
        }
        let expected = self.md5(&auth[..16], &ugid[..8]);
        if !constant_time_eq(&expected, &auth[16..32]) {
            return Auth::Invalid("failed authentication");
        }
        let uid = u32::from_ne_bytes(ugid[0..4].try_into().expect("4 bytes"));
        let gid = u32::from_ne_bytes(ugid[4..8].try_into().expect("4 bytes"));
        Auth::Valid(Ids { uid, gid })
    }

    /// MD5(nonce ‖ secret ‖ ugid), with the hash state inside the secret
    /// page (wiped after use): the secret is never copied to the stack by us.
    #[inline(never)]
    fn md5(&self, nonce: &[u8], ugid: &[u8]) -> [u8; 16] {
        use md5::{Digest, Md5};
        const { assert!(HASH_OFF + std::mem::size_of::<Md5>() <= PAGE) };
        const { assert!(HASH_OFF % std::mem::align_of::<Md5>() == 0) };
        let mut out = [0u8; 16];
        // SAFETY: the hash slot lies inside the live page, aligned (asserted
        // above), and holds no live value: it is written before use and
        // wiped after. Md5 owns no heap memory, so overwriting it leaks
        // nothing.
        unsafe {
            let slot = self.page.add(HASH_OFF).cast::<Md5>();
            slot.write(Md5::new());
            let h = &mut *slot;
            h.update(nonce);
            h.update(self.bytes());
            h.update(ugid);
            h.finalize_into_reset((&mut out).into());
            wipe(std::slice::from_raw_parts_mut(
                self.page.add(HASH_OFF),
                std::mem::size_of::<Md5>(),
            ));
        }
        out
    }
}

/// What a request's suEXEC entries say.
#[derive(Debug, PartialEq, Eq)]
pub enum Auth {
    /// No suEXEC credentials at all: the default user applies.
    Absent,
    /// Credentials present but wrong or malformed: refuse the request.
    Invalid(&'static str),
    /// Authentic credentials for this uid and gid (not yet checked against
    /// the floor).
    Valid(Ids),
}

impl std::fmt::Debug for Secret {
    /// Never prints the secret itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: the page is ours and live until munmap; nothing refers to
        // it after drop.
        unsafe {
            wipe(std::slice::from_raw_parts_mut(self.page, PAGE));
            libc::munlock(self.page.cast(), PAGE);
            libc::munmap(self.page.cast(), PAGE);
        }
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

/// Overwrites the stack below the caller's frame (16 KiB, far more than the
/// MD5 and authentication frames use), where spilled hash registers of the
/// compression function may remain.
#[inline(never)]
fn scrub_stack() {
    let mut area = [0u8; 16 * 1024];
    wipe(&mut area);
    std::hint::black_box(&area);
}

/// Compares without an early exit, so timing reveals nothing of the match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// The lowest uid and gid this worker will ever serve as (LSAPI_MIN_UID,
/// LSAPI_MIN_GID; defaults 11 and 10 as LiteSpeed's CGI limits; never 0).
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    pub uid: u32,
    pub gid: u32,
}

impl Floor {
    /// From the configuration; a floor of 0 is raised to 1 (root is never
    /// allowed).
    pub fn new(cfg: &Config) -> Floor {
        Floor {
            uid: cfg.min_uid.max(1),
            gid: cfg.min_gid.max(1),
        }
    }

    /// `Err` names why `uid:gid` may not be served as. u32::MAX is
    /// `(uid_t)-1`, which set*id calls read as "unchanged".
    pub fn check(&self, uid: u32, gid: u32) -> Result<(), String> {
        if uid < self.uid || uid == u32::MAX {
            return Err(format!(
                "uid {uid} is below LSAPI_MIN_UID={} or invalid",
                self.uid
            ));
        }
        if gid < self.gid || gid == u32::MAX {
            return Err(format!(
                "gid {gid} is below LSAPI_MIN_GID={} or invalid",
                self.gid
            ));
        }
        Ok(())
    }
}

/// LSAPI_DEFAULT_UID or LSAPI_DEFAULT_GID (`var`): a number, or the name of
/// a `what` ("user" or "group") that `lookup` resolves.
fn parse_id(
    var: &str,
    what: &str,
    v: &str,
    lookup: impl Fn(&std::ffi::CStr) -> Option<u32>,
) -> Result<u32, String> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u32>() {
        return Ok(n);
    }
    let c = CString::new(v).map_err(|_| format!("{var}={v:?} is not a {what}"))?;
    lookup(&c).ok_or_else(|| format!("{var}={v:?} is neither a number nor a known {what}"))
}

/// A uid from LSAPI_DEFAULT_UID: a number, or a user name that resolves.
fn parse_uid(v: &str) -> Result<u32, String> {
    parse_id("LSAPI_DEFAULT_UID", "user", v, |name| {
        // SAFETY: getpwnam with a NUL-terminated name returns NULL or a
        // pointer to a static record, read at once.
        unsafe {
            let pw = libc::getpwnam(name.as_ptr());
            (!pw.is_null()).then(|| (*pw).pw_uid)
        }
    })
}

/// A gid from LSAPI_DEFAULT_GID: a number, or a group name that resolves.
fn parse_gid(v: &str) -> Result<u32, String> {
    parse_id("LSAPI_DEFAULT_GID", "group", v, |name| {
        // SAFETY: getgrnam with a NUL-terminated name returns NULL or a
        // pointer to a static record, read at once.
        unsafe {
            let gr = libc::getgrnam(name.as_ptr());
            (!gr.is_null()).then(|| (*gr).gr_gid)
        }
    })
}

/// The user to serve as when a request carries no suEXEC identity (and
/// whenever a worker started as root has no secret): LSAPI_DEFAULT_UID/GID
/// (numbers or names that resolve), else `nobody` (and its group), checked
/// against the floor. Anything unusable is a start-up error.
pub fn default_ids(cfg: &Config) -> Result<Ids, String> {
    let nobody = || -> Result<Ids, String> {
        // SAFETY: getpwnam returns NULL or a pointer to a static record read
        // immediately.
        unsafe {
            let pw = libc::getpwnam(c"nobody".as_ptr());
            if pw.is_null() {
                return Err("no LSAPI_DEFAULT_UID set and no user 'nobody' exists".into());
            }
            Ok(Ids {
                uid: (*pw).pw_uid,
                gid: (*pw).pw_gid,
            })
        }
    };
    let uid = cfg.default_uid.as_deref().map(parse_uid).transpose()?;
    let gid = cfg.default_gid.as_deref().map(parse_gid).transpose()?;
    let ids = match (uid, gid) {
        (Some(uid), Some(gid)) => Ids { uid, gid },
        (Some(uid), None) => Ids {
            uid,
            gid: nobody().map_or(uid, |n| n.gid),
        },
        (None, Some(gid)) => Ids {
            uid: nobody()?.uid,
            gid,
        },
        (None, None) => nobody()?,
    };
    if ids.uid == 0 {
        return Err("refusing to serve as root (uid 0)".into());
    }
    Floor::new(cfg)
        .check(ids.uid, ids.gid)
        .map_err(|e| format!("the default user {ids}: {e}"))?;
    Ok(ids)
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 || libc::getuid() == 0 }
}

/// In a freshly forked daemon child: takes effective ids of the default
/// user, keeping root only as the saved set-user-ID, so that the request
/// path up to authentication does not run with root's effective rights.
/// [`switch_user`] regains root only to make the final switch.
fn hold_as(Ids { uid, gid }: Ids) -> Result<(), String> {
    // SAFETY: plain credential system calls with -1 meaning "unchanged".
    unsafe {
        if libc::setresgid(u32::MAX, gid, 0) != 0 || libc::setresuid(u32::MAX, uid, 0) != 0 {
            return Err(format!(
                "cannot take the placeholder ids {uid}:{gid}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// In a freshly forked daemon child, before anything of a tenant runs: a
/// session of its own (so no controlling terminal: `/dev/tty` cannot be
/// opened and TIOCSTI cannot push keystrokes into the starter's terminal,
/// and no tenant shares a session with root or another tenant), which also
/// makes it the leader of a process group of its own, so that whatever the
/// tenant's code starts (and does not move out with setsid/setpgid) can be
/// found and ended with it ([`end_tenant_group`]). It also becomes its
/// descendants' subreaper: an orphaned grandchild is reparented to it, so
/// "no children" at exit means nothing of the tenant is left.
fn own_session() -> Result<(), String> {
    // SAFETY: setsid on this process, forked and so never a group leader;
    // prctl with integer arguments.
    unsafe {
        if libc::setsid() < 0 {
            return Err(format!(
                "setsid in a daemon child: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    Ok(())
}

/// Whether any thread of this process has a child (from
/// /proc/self/task/TID/children; unreadable counts as yes).
fn has_children() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return true;
    };
    tasks
        .flatten()
        .any(|t| std::fs::read(t.path().join("children")).map_or(true, |c| !c.is_empty()))
}

/// At a daemon child's exit: SIGKILLs every other process of the group it
/// leads ([`own_session`]), i.e. every process the tenant started from it
/// that is still there. A session leader cannot leave its group, so the
/// members are found in /proc (passes repeat while a pass found any, so a
/// process forked during a pass is caught by the next; bounded); a child
/// without children (the usual case: as subreaper it would have any live
/// descendant as a child) skips the scan. The kills run as the tenant's
/// uid, so they reach nothing the tenant could not signal itself.
fn end_tenant_group() {
    let me = crate::sys::getpid();
    // SAFETY: getpgrp takes no arguments.
    if unsafe { libc::getpgrp() } != me || me <= 1 || !has_children() {
        return;
    }
    for _ in 0..16 {
        let mut found = false;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pid != me && process_group(pid) == Some(me) {
                found = true;
                let _ = crate::sys::kill(pid, libc::SIGKILL);
            }
        }
        if !found {
            return;
        }
    }
}

/// The process group of `pid`, from /proc/PID/stat (the fifth field; the
/// command name, second, may hold spaces and parentheses).
fn process_group(pid: i32) -> Option<i32> {
    let mut buf = [0u8; 512];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
        f.read(&mut buf).ok()?
    };
    let s = &buf[..n];
    let rest = &s[memchr::memrchr(b')', s)? + 1..];
    let mut f = rest.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let pgrp = f.nth(2)?;
    std::str::from_utf8(pgrp).ok()?.parse().ok()
}

/// After the switch to a tenant: a new, empty session keyring, so that keys
/// the tenant adds are not in the keyring it would otherwise share with root
/// and every other tenant (the one inherited from the starter).
fn fresh_session_keyring() -> Result<(), String> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a NULL name creates and joins an anonymous
    // keyring; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // Kernels without keyrings (or seccomp that forbids them) have no
        // keyring to share.
        if !matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) {
            return Err(format!("cannot join a new session keyring: {e}"));
        }
    }
    Ok(())
}

/// Undoes [`hold_as`]: root again as effective ids (only possible while
/// root is the real and saved uid).
fn regain_root() -> Result<(), String> {
    // SAFETY: plain credential system calls.
    unsafe {
        if libc::geteuid() != 0
            && libc::getuid() == 0
            && (libc::seteuid(0) != 0 || libc::setegid(0) != 0)
        {
            return Err(format!("seteuid(0): {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Becomes `uid:gid` for good: setgid, supplementary groups (initgroups when
/// the user's primary group is `gid`, else just `gid`), then setuid. Refuses
/// uid 0 and verifies that root cannot be regained. A process that holds
/// root only as its saved id (see [`hold_as`]) regains it first.
fn switch_user(Ids { uid, gid }: Ids) -> Result<(), String> {
    if uid == 0 {
        return Err("refusing to serve as root (uid 0)".into());
    }
    regain_root()?;
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
        if libc::getuid() != uid
            || libc::geteuid() != uid
            || libc::setuid(0) == 0
            || libc::setegid(0) == 0
        {
            return Err(format!(
                "could not drop root for good (now uid {})",
                libc::getuid()
            ));
        }
    }
    Ok(())
}

/// Why a request was not admitted; in each case the process leaves.
#[derive(Debug)]
pub enum Refusal {
    /// Drop the connection without an answer (logged with this reason).
    Drop(String),
    /// The account's LVE is at its limit: answer 508, then leave.
    Limit(String),
}

impl From<lve::Error> for Refusal {
    fn from(e: lve::Error) -> Refusal {
        match e {
            lve::Error::Limit(why) => Refusal::Limit(why),
            lve::Error::Jail(why) => Refusal::Drop(why),
        }
    }
}

/// The identity check a suEXEC daemon-mode child applies to each request of
/// its connection: the first authenticates and switches user for good; later
/// ones must name the same user.
pub struct Gate {
    /// Held until the first request is authenticated, then wiped.
    secret: Option<Secret>,
    default: Ids,
    floor: Floor,
    lve: Option<Lve>,
    /// Runs right after the switch to the first request's user.
    after_switch: fn(),
    serving_as: Option<Ids>,
}

impl Gate {
    /// Admits a request whose special env is `special_env`. `Err` means the
    /// request must not be served and the process must leave.
    pub fn admit<'a>(
        &mut self,
        special_env: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    ) -> Result<(), Refusal> {
        if let Some(current) = self.serving_as {
            // No identity means the default user: only the default user's
            // process may serve it.
            let requested = requested_ugid(special_env);
            let ids = requested.unwrap_or(self.default);
            if ids == current {
                return Ok(());
            }
            return Err(Refusal::Drop(format!(
                "request for {}:{}{} on a connection serving {current}",
                ids.uid as i32,
                ids.gid as i32,
                if requested.is_none() {
                    " (no suEXEC credentials: the default user)"
                } else {
                    ""
                },
            )));
        }
        let auth = {
            let secret = self.secret.take().expect("secret held until first request");
            let auth = secret.authenticate(special_env.clone());
            drop(secret);
            auth
        };
        scrub_stack();
        let mut ids = match auth {
            Auth::Valid(ids) => ids,
            Auth::Absent => self.default,
            Auth::Invalid(why) => {
                let Ids { uid, gid } = requested_ugid(special_env).unwrap_or(Ids {
                    uid: u32::MAX,
                    gid: u32::MAX,
                });
                return Err(Refusal::Drop(format!(
                    "request for {}:{} with {why}; refused",
                    uid as i32, gid as i32
                )));
            }
        };
        self.floor.check(ids.uid, ids.gid).map_err(|e| {
            Refusal::Drop(format!(
                "authenticated request for {}:{} refused: {e}",
                ids.uid as i32, ids.gid as i32
            ))
        })?;
        if let Some(lve) = &self.lve {
            // lve_enter and jail need root's effective ids.
            regain_root().map_err(Refusal::Drop)?;
            if lve.enter_and_jail(ids.uid)? == lve::Serve::Default {
                ids = self.default;
            }
        }
        switch_user(ids).map_err(Refusal::Drop)?;
        fresh_session_keyring().map_err(Refusal::Drop)?;
        (self.after_switch)();
        self.serving_as = Some(ids);
        Ok(())
    }
}

/// The ids a request's `\0SUEXEC_UGID` names, unauthenticated.
fn requested_ugid<'a>(special_env: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Option<Ids> {
    let (_, v) = special_env.filter(|(k, _)| *k == b"\0SUEXEC_UGID").last()?;
    let uid = i32::from_ne_bytes(v.get(0..4)?.try_into().ok()?);
    let gid = i32::from_ne_bytes(v.get(4..8)?.try_into().ok()?);
    Some(Ids {
        uid: uid as u32,
        gid: gid as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_bytes(b"0123456789abcdef")
    }

    fn md5(parts: &[&[u8]]) -> [u8; 16] {
        use md5::{Digest, Md5};
        let mut h = Md5::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    fn entries(uid: i32, gid: i32, nonce: [u8; 16], s: &Secret) -> (Vec<u8>, Vec<u8>) {
        let mut ugid = uid.to_ne_bytes().to_vec();
        ugid.extend_from_slice(&gid.to_ne_bytes());
        let mut auth = nonce.to_vec();
        auth.extend_from_slice(&md5(&[&nonce, s.bytes(), &ugid]));
        (ugid, auth)
    }

    #[test]
    fn in_page_md5_matches_rfc1321_and_leaves_no_state() {
        let s = secret();
        assert_eq!(s.md5(b"ab", b"c"), md5(&[b"ab", b"0123456789abcdef", b"c"]));
        let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(md5(&[b"ab", b"c"])), "900150983cd24fb0d6963f7d28e17f72");
        // SAFETY: the page is live and PAGE bytes long.
        let page = unsafe { std::slice::from_raw_parts(s.page, PAGE) };
        assert!(page[SECRET_LEN..].iter().all(|&b| b == 0));
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
        assert_eq!(
            s.authenticate(env.iter().copied()),
            Auth::Valid(Ids {
                uid: 1001,
                gid: 1002
            })
        );
    }

    #[test]
    fn forged_or_misplaced_credentials_are_invalid_not_absent() {
        let s = secret();
        let (ugid, mut auth) = entries(1001, 1002, [7; 16], &s);
        auth[20] ^= 1;
        let env = [
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
        ];
        assert!(matches!(
            s.authenticate(env.iter().copied()),
            Auth::Invalid(_)
        ));
        // Signed with another secret.
        let (ugid, auth) = entries(
            1001,
            1002,
            [7; 16],
            &Secret::from_bytes(b"fedcba9876543210"),
        );
        let env = [
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
        ];
        assert!(matches!(
            s.authenticate(env.iter().copied()),
            Auth::Invalid(_)
        ));
        // Wrong order, or not at the end.
        let (ugid, auth) = entries(1001, 1002, [7; 16], &s);
        let env = [
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
        ];
        assert!(matches!(
            s.authenticate(env.iter().copied()),
            Auth::Invalid(_)
        ));
        let env = [
            (b"\0SUEXEC_UGID".as_slice(), ugid.as_slice()),
            (b"\0SUEXEC_AUTH".as_slice(), auth.as_slice()),
            (b"LATE".as_slice(), b"1".as_slice()),
        ];
        assert!(matches!(
            s.authenticate(env.iter().copied()),
            Auth::Invalid(_)
        ));
        let env = [(b"\0SUEXEC_UGID".as_slice(), ugid.as_slice())];
        assert!(matches!(
            s.authenticate(env.iter().copied()),
            Auth::Invalid(_)
        ));
        assert_eq!(s.authenticate(std::iter::empty()), Auth::Absent);
        let env = [(b"OTHER".as_slice(), b"x".as_slice())];
        assert_eq!(s.authenticate(env.iter().copied()), Auth::Absent);
    }

    #[test]
    fn floors_refuse_root_and_system_ids() {
        let f = Floor { uid: 11, gid: 10 };
        assert!(f.check(1001, 1001).is_ok());
        assert!(f.check(11, 10).is_ok());
        assert!(f.check(0, 1001).is_err());
        assert!(f.check(1, 1001).is_err());
        assert!(f.check(1001, 0).is_err());
        assert!(f.check(u32::MAX, 1001).is_err());
        assert!(f.check(1001, u32::MAX).is_err());
    }

    #[test]
    fn default_ids_resolve_names_and_refuse_the_rest() {
        let cfg = |u: Option<&str>, g: Option<&str>| {
            Config::from_lookup(|k| match k {
                "LSAPI_DEFAULT_UID" => u.map(String::from),
                "LSAPI_DEFAULT_GID" => g.map(String::from),
                _ => None,
            })
        };
        assert_eq!(
            default_ids(&cfg(Some("4321"), Some("4322"))),
            Ok(Ids {
                uid: 4321,
                gid: 4322
            })
        );
        let nobody = default_ids(&cfg(Some("nobody"), Some("4322"))).unwrap();
        assert!(nobody.uid >= 11 && nobody.gid == 4322);
        assert!(default_ids(&cfg(Some("4321"), Some("no-such-group-x")))
            .unwrap_err()
            .contains("neither a number nor a known group"));
        assert!(default_ids(&cfg(Some("0"), Some("4322"))).is_err());
        assert!(default_ids(&cfg(Some("4321"), Some("0"))).is_err());
        assert!(default_ids(&cfg(Some("4321"), Some("root"))).is_err());
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
        assert_eq!(Secret::load(p).unwrap().bytes(), b"0123456789abcdef");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Secret::load(link.to_str().unwrap())
            .unwrap_err()
            .contains("symbolic link"));
        std::fs::write(&path, b"short").unwrap();
        assert!(Secret::load(p).unwrap_err().contains("at least 16"));
        assert!(Secret::load(dir.to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
