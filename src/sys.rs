//! Thin wrappers over the system calls the worker needs, and the log line format.
//!
//! Every `unsafe` block here is a direct libc call whose arguments are plain
//! integers or pointers to live, correctly sized local buffers.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// Set by SIGTERM, SIGINT or SIGUSR1: stop accepting, finish, exit.
pub static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that set [`STOP`] (for the log line).
pub static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Log levels in the reference's style.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something odd that the worker handled.
    Warn,
    /// Life-cycle events.
    Info,
}

/// Writes one log line to fd 2: `YYYY-MM-DD HH:MM:SS.mmm [pid] [LEVEL] message`.
/// One write(2) per line, so lines from several processes do not interleave.
pub fn log(level: Level, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut line = Vec::with_capacity(160);
    let _ = write!(
        line,
        "{} [{}] [{}] {}",
        Timestamp,
        std::process::id(),
        match level {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
        },
        args
    );
    if line.last() != Some(&b'\n') {
        line.push(b'\n');
    }
    write_all_fd(2, &line);
}

/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::sys::log($crate::sys::Level::Error, format_args!($($t)*)) };
}
/// Logs at warning level.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::sys::log($crate::sys::Level::Warn, format_args!($($t)*)) };
}
/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::sys::log($crate::sys::Level::Info, format_args!($($t)*)) };
}

/// Local time with milliseconds.
struct Timestamp;

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: zeroed tm is a valid out-parameter; ts is a live local.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe {
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
            libc::localtime_r(&ts.tv_sec, &mut tm);
        }
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            ts.tv_nsec / 1_000_000
        )
    }
}

/// Writes all of `buf` to `fd`, retrying on EINTR; other errors drop the rest
/// (a log line that cannot be written has nowhere else to go).
pub fn write_all_fd(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a live slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        buf = &buf[n as usize..];
    }
}

/// Result of a libc call returning -1 on error.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Set by SIGUSR2: the ProcessGroup parent logs its child table.
pub static STATUS: AtomicBool = AtomicBool::new(false);
/// Write end of the self-pipe that wakes the ProcessGroup parent's poll on any
/// signal it handles; -1 when there is none (Worker mode, children).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// Writes one byte to the wake pipe, if any. Async-signal-safe: write(2) on a
/// non-blocking pipe (a full pipe is already awake), errno preserved so the
/// interrupted code never sees ours.
fn wake() {
    static BYTE: u8 = 1;
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: errno location is thread-local and valid; BYTE is static.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, (&BYTE as *const u8).cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::Relaxed);
    STOP.store(true, Ordering::Relaxed);
    wake();
}

extern "C" fn on_status_signal(_sig: libc::c_int) {
    STATUS.store(true, Ordering::Relaxed);
    wake();
}

extern "C" fn on_wake_signal(_sig: libc::c_int) {
    wake();
}

/// Installs the worker's signal dispositions: SIGPIPE ignored (a vanished
/// server is seen as EPIPE), SIGTERM/SIGINT/SIGUSR1 set [`STOP`], SIGUSR2 sets
/// [`STATUS`], SIGCHLD only wakes.
///
/// With SA_RESTART: a signal must not make a blocking call in application
/// code (a C extension's read, a database client) fail with EINTR; our own
/// reads and writes retry anyway. No wait loop depends on EINTR: poll(2) is
/// never restarted, so Worker mode and children still see STOP at once; the
/// group parent also has the self-pipe [`wake`] writes to; listeners are
/// non-blocking, so accept never blocks. Forked children inherit these
/// dispositions unchanged.
pub fn install_signal_handlers() {
    // SAFETY: sigaction with a zeroed struct, a valid handler and an empty mask.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        for (sig, handler) in [
            (libc::SIGTERM, on_stop_signal as *const () as usize),
            (libc::SIGINT, on_stop_signal as *const () as usize),
            (libc::SIGUSR1, on_stop_signal as *const () as usize),
            (libc::SIGUSR2, on_status_signal as *const () as usize),
            (libc::SIGCHLD, on_wake_signal as *const () as usize),
        ] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Creates the self-pipe the signal handlers write to; returns its read end
/// (non-blocking, close-on-exec) for the parent's poll.
pub fn open_wake_pipe() -> io::Result<RawFd> {
    let mut fds = [-1; 2];
    // SAFETY: fds is a live array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    WAKE_FD.store(fds[1], Ordering::Relaxed);
    Ok(fds[0])
}

/// Closes the self-pipe (in a forked child, which has no use for it).
pub fn close_wake_pipe(read_end: RawFd) {
    let w = WAKE_FD.swap(-1, Ordering::Relaxed);
    if w >= 0 {
        close(w);
    }
    close(read_end);
}

/// Reads and discards whatever is in a non-blocking descriptor (the wake pipe).
pub fn drain(fd: RawFd) {
    let mut buf = [0u8; 64];
    // SAFETY: buf is a live local.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Sets RLIMIT_CORE to 0 (no core files), unless `allow` is set.
pub fn limit_core_dumps(allow: bool) {
    if allow {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a live local.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) };
}

/// The parent process id.
pub fn getppid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getppid() }
}

/// This process's id.
pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getpid() }
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// exit(2) with this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) with integer arguments.
    cvt(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// The last thing [`exit_now`] does before `_exit`, set once per process.
static BEFORE_EXIT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Makes [`exit_now`] call `f` first, on every path out of this process
/// (a normal end, the shutdown watchdog). The first call wins.
pub fn before_exit_now(f: fn()) {
    let _ = BEFORE_EXIT.set(f);
}

/// Ends the process at once with `code`: no atexit handlers, no unwinding.
/// For forked children, whose inherited parent state must not be torn down.
pub fn exit_now(code: i32) -> ! {
    if let Some(f) = BEFORE_EXIT.get() {
        f();
    }
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Puts `fd` in non-blocking mode (for a listener shared by several
/// processes: the losers of a race for a connection get EAGAIN, not a block).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer descriptor.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Waits for events on `fds` for up to `timeout_ms` (-1: forever). Returns
/// the number of descriptors with events; 0 on time-out or EINTR.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: fds is a live slice of pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(r as usize)
}

/// Monotonic clock in milliseconds.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Waits until `fd` is readable, up to `timeout` (`None`: forever). Returns
/// `Ok(true)` when readable (or hung up), `Ok(false)` on time-out or EINTR.
pub fn poll_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0)
}

/// What fd 0 (or another descriptor) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A socket in the listening state: accept connections.
    Listener,
    /// A connected socket or a pipe: serve it.
    Connected,
    /// Anything else (a terminal, /dev/null, closed).
    Other,
}

/// Classifies `fd` the way LiteSpeed's library does: getpeername succeeds on a
/// connected socket; SO_ACCEPTCONN marks a listener.
pub fn fd_kind(fd: RawFd) -> FdKind {
    // SAFETY: storage and lengths are live locals of the right size.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) == 0
        {
            return FdKind::Connected;
        }
        let mut accepting: libc::c_int = 0;
        let mut optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut optlen,
        ) == 0
            && accepting != 0
        {
            return FdKind::Listener;
        }
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO {
            return FdKind::Connected;
        }
    }
    FdKind::Other
}

/// Moves `fd` to a new close-on-exec descriptor ≥ 3 and puts /dev/null in its
/// place, so application code reading fd 0 (sys.stdin) never touches the socket.
pub fn move_off_stdin(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: fcntl/open/dup2 on integer descriptors; the path is a C literal.
    unsafe {
        let moved = cvt(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3))?;
        let null = cvt(libc::open(c"/dev/null".as_ptr(), libc::O_RDWR))?;
        if null != fd {
            libc::dup2(null, fd);
            libc::close(null);
        }
        Ok(moved)
    }
}

/// Closes every descriptor above 2 the starter left open, except fd 3 when
/// it is a socket (LiteSpeed may hand a Worker-mode process an already
/// connected socket there). Called first thing, before anything is opened.
/// Returns whether fd 3 was kept, so that modes with no use for it (a suEXEC
/// daemon, whose children belong to tenants) can close it.
pub fn close_inherited_fds() -> bool {
    // SAFETY: fstat fills a plain struct.
    let fd3_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(3, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    let first = if fd3_socket { 4 } else { 3 };
    // SAFETY: close_range on descriptors nothing in this process uses yet;
    // the fallback closes them one by one.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        ) != 0
        {
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as RawFd;
            for fd in first..max {
                libc::close(fd);
            }
        }
    }
    fd3_socket
}

/// Puts /dev/null on fd 0 when it is a terminal (a worker started from a
/// shell with `-a ADDR`): application code must never read, or push input
/// into, the starter's terminal through `sys.stdin`.
pub fn stdin_never_a_terminal() {
    // SAFETY: isatty/open/dup2/close on integer descriptors; the path is a
    // C literal.
    unsafe {
        if libc::isatty(0) == 1 {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::close(null);
            }
        }
    }
}

/// `Err` (naming the culprit) unless root may trust `path`: it and every
/// directory above it belong to root and are not writable by group or
/// others (a sticky directory such as /tmp excepted: there others can
/// replace only their own entries). Walked one component at a time with
/// lstat, never following a link unchecked: a symbolic link must itself be
/// root's, in a trusted directory, and its target is walked the same way.
/// `path` must exist. The one "may root trust this path" rule of the worker
/// (log files, the secret, Python's prefix, `sys.path` of a daemon).
pub fn root_trusted(path: &std::path::Path) -> Result<(), String> {
    use std::ffi::OsString;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Component, PathBuf};
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("the current directory: {e}"))?
            .join(path)
    };
    let check = |p: &std::path::Path, m: &std::fs::Metadata| {
        let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
        let writable = m.mode() & 0o022 != 0 && !sticky_dir && !m.file_type().is_symlink();
        if m.uid() != 0 || writable {
            return Err(format!(
                "{} is owned by uid {} with mode {:04o}",
                p.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
        Ok(())
    };
    // Components still to walk, the next one last; `cur` is the walked,
    // link-free and trusted prefix.
    let mut todo: Vec<OsString> = Vec::new();
    let push = |todo: &mut Vec<OsString>, p: &std::path::Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                _ => {}
            }
        }
    };
    push(&mut todo, &abs);
    let mut cur = PathBuf::from("/");
    let root = std::fs::symlink_metadata(&cur).map_err(|e| format!("/: {e}"))?;
    check(&cur, &root)?;
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let m = std::fs::symlink_metadata(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        check(&next, &m)?;
        if m.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return Err(format!("{}: too many symbolic links", abs.display()));
            }
            let target =
                std::fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            push(&mut todo, &target);
            continue;
        }
        cur = next;
    }
    Ok(())
}

/// [`root_trusted`] for `dir` and everything in it, `depth` levels down,
/// without following links (a link inside must be root's; where it points
/// is not read as part of this tree). Nothing to check when `dir` does not
/// exist.
pub fn root_trusted_tree(dir: &std::path::Path, depth: u32) -> Result<(), String> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    root_trusted(dir)?;
    fn walk(d: &std::path::Path, depth: u32) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(d) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.uid() != 0 || (m.mode() & 0o022 != 0 && !m.file_type().is_symlink()) {
                return Err(format!(
                    "{} is owned by uid {} with mode {:04o}",
                    e.path().display(),
                    m.uid(),
                    m.mode() & 0o7777
                ));
            }
            if m.is_dir() && depth > 0 {
                walk(&e.path(), depth - 1)?;
            }
        }
        Ok(())
    }
    walk(dir, depth)
}

/// The bytes of each LSAPI_* entry of the environment block the kernel set
/// up at exec (what /proc/self/environ shows): pointer and length. Call
/// before anything changes the environment, so every entry is still in that
/// block.
pub fn original_lsapi_env() -> Vec<(*mut u8, usize)> {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    let mut out = Vec::new();
    // SAFETY: environ is the NULL-terminated array of NUL-terminated strings
    // glibc set up from the exec block; nothing has modified it yet and only
    // this thread runs.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let e = std::ffi::CStr::from_ptr(*p);
            if e.to_bytes().starts_with(b"LSAPI_") {
                out.push(((*p).cast(), e.to_bytes().len()));
            }
            p = p.add(1);
        }
    }
    out
}

/// Zeroes the entries [`original_lsapi_env`] found, once they are out of
/// the environment array, so that /proc/PID/environ no longer shows them.
///
/// # Safety
/// The entries must have been removed from `environ` (std::env::remove_var)
/// and nothing may still point into them.
pub unsafe fn wipe_env_block(entries: &[(*mut u8, usize)]) {
    for &(p, len) in entries {
        for i in 0..len {
            std::ptr::write_volatile(p.add(i), 0);
        }
    }
}

/// Points fd 1 at fd 2: a stray print must never reach the server's channel.
pub fn fold_stdout_into_stderr() {
    // SAFETY: dup2 on standard descriptors.
    unsafe { libc::dup2(2, 1) };
}

/// Opens `path` for appending and makes it fd 2 (and fd 1). Paths that lead
/// into /etc (after resolving `..` and symbolic links) are refused: a
/// misconfigured log must not overwrite system files. The file must be a
/// regular file (checked on the descriptor).
///
/// As root the log is where a privilege boundary lies, so three more rules
/// hold: the file itself is never a symbolic link (O_NOFOLLOW: a planted
/// link cannot make root create or append to its target) and has no other
/// hard links, and its directory is [`root_trusted`], so that nobody else
/// can swap the file or a directory above it for a link. Not root, a
/// symbolic or hard link gains nobody anything (a site owner's `stderr.log`
/// pointing into their own logs directory is followed).
pub fn redirect_stderr(path: &str) -> io::Result<()> {
    let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    if under_etc(path) {
        return Err(refuse("log files under /etc are refused".into()));
    }
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: geteuid takes no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let p = std::path::Path::new(path);
        let dir = match p.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => std::env::current_dir()?,
        };
        root_trusted(&dir).map_err(|e| {
            refuse(format!(
                "{e}; a root process only logs in directories that root owns and nobody else \
                 can write"
            ))
        })?;
    }
    let nofollow = if root { libc::O_NOFOLLOW } else { 0 };
    // SAFETY: c is a valid C string; fstat fills a plain struct; dup2/close
    // on integer descriptors; fd is closed on every path.
    unsafe {
        let fd = libc::open(
            c.as_ptr(),
            libc::O_WRONLY
                | libc::O_APPEND
                | libc::O_CREAT
                | libc::O_CLOEXEC
                | nofollow
                | libc::O_NOCTTY
                | libc::O_NONBLOCK,
            0o644,
        );
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                return Err(refuse(
                    "it is a symbolic link, which a root process does not follow; name the file \
                     itself"
                        .into(),
                ));
            }
            return Err(e);
        }
        let mut st: libc::stat = std::mem::zeroed();
        let why = if libc::fstat(fd, &mut st) != 0 {
            Some(io::Error::last_os_error().to_string())
        } else if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            Some("it is not a regular file".into())
        } else if root && st.st_nlink > 1 {
            Some("it has other hard links".into())
        } else {
            None
        };
        if let Some(why) = why {
            libc::close(fd);
            return Err(refuse(why));
        }
        // Back to blocking writes for the log itself.
        libc::fcntl(fd, libc::F_SETFL, libc::O_APPEND);
        libc::dup2(fd, 2);
        libc::dup2(fd, 1);
        libc::close(fd);
    }
    Ok(())
}

/// Whether `path` names /etc or something inside it, once made absolute and
/// its directory resolved (the file itself may not exist yet; a symbolic link
/// as the file is followed too).
fn under_etc(path: &str) -> bool {
    use std::path::{Path, PathBuf};
    let p = Path::new(path);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let resolved = std::fs::canonicalize(&abs).unwrap_or_else(|_| {
        match (abs.parent().map(std::fs::canonicalize), abs.file_name()) {
            (Some(Ok(dir)), Some(name)) => dir.join(name),
            _ => PathBuf::from(&abs),
        }
    });
    let etc = Path::new("/etc");
    resolved.starts_with(etc) || abs.starts_with(etc)
}

/// Closes a descriptor, ignoring errors (nothing useful can be done about them).
pub fn close(fd: RawFd) {
    // SAFETY: closing an integer descriptor we own.
    unsafe { libc::close(fd) };
}

/// Memory the process can still use, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// MemTotal, or the tightest cgroup limit when lower.
    pub total: u64,
    /// MemAvailable, or the least headroom left under a cgroup limit when lower.
    pub available: u64,
}

impl Memory {
    /// lsapilib's test for taking more connections in the same process:
    /// more than `threshold` bytes available, or more than a tenth of the total.
    pub fn enough(&self, threshold: u64) -> bool {
        self.available > threshold || self.available > self.total / 10
    }
}

/// Reads free memory: /proc/meminfo, narrowed by the memory cgroup the process
/// is in (on a shared host each account is limited by its cgroup, so
/// machine-wide free memory alone misleads). The cgroup's directories are found
/// once, at construction.
pub struct MemProbe {
    /// The process's cgroup directory and each ancestor up to the mount point,
    /// leaf first.
    levels: Vec<std::path::PathBuf>,
    /// cgroup v2 file names (memory.max, memory.current) rather than v1's.
    v2: bool,
}

impl MemProbe {
    /// Finds this process's memory cgroup from /proc/self/cgroup and
    /// /proc/self/mountinfo; without one, only /proc/meminfo is read.
    pub fn new() -> MemProbe {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let (levels, v2) = cgroup_levels(&read("/proc/self/cgroup"), &read("/proc/self/mountinfo"))
            .unwrap_or_default();
        MemProbe { levels, v2 }
    }

    /// Current total and available memory.
    pub fn read(&self) -> Memory {
        let mut m = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| parse_meminfo(&t))
            .unwrap_or(Memory {
                total: u64::MAX,
                available: u64::MAX,
            });
        for dir in &self.levels {
            let file = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
            let (limit, usage, stat) = if self.v2 {
                (
                    file("memory.max"),
                    file("memory.current"),
                    file("memory.stat"),
                )
            } else {
                (
                    file("memory.limit_in_bytes"),
                    file("memory.usage_in_bytes"),
                    file("memory.stat"),
                )
            };
            if let Some((limit, headroom)) =
                cgroup_headroom(limit.as_deref(), usage.as_deref(), stat.as_deref(), self.v2)
            {
                m.total = m.total.min(limit);
                m.available = m.available.min(headroom);
            }
        }
        m
    }
}

/// MemTotal and MemAvailable from /proc/meminfo text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Memory {
        total: field("MemTotal")?,
        available: field("MemAvailable").or_else(|| field("MemFree"))?,
    })
}

/// cgroup limits at or above this many bytes mean "no limit" (v1 reports
/// unlimited as about 2^63 rounded down to a page).
const NO_LIMIT: u64 = 1 << 60;

/// `(limit, headroom)` of one cgroup level from the contents of its limit,
/// usage and memory.stat files; `None` when it has no limit. Headroom counts
/// inactive file cache as free, since the kernel reclaims it before failing
/// an allocation.
pub fn cgroup_headroom(
    limit: Option<&str>,
    usage: Option<&str>,
    stat: Option<&str>,
    v2: bool,
) -> Option<(u64, u64)> {
    let limit: u64 = limit?.trim().parse().ok()?; // "max" (v2) fails here: no limit
    if limit >= NO_LIMIT {
        return None;
    }
    let usage: u64 = usage.and_then(|u| u.trim().parse().ok()).unwrap_or(0);
    let key = if v2 {
        "inactive_file"
    } else {
        "total_inactive_file"
    };
    let inactive = stat
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some((limit, limit.saturating_sub(usage.saturating_sub(inactive))))
}

/// The directories of the process's memory cgroup, leaf first up to the
/// controller's mount point, and whether they are cgroup v2: from the texts of
/// /proc/self/cgroup and /proc/self/mountinfo. A v1 memory hierarchy wins over
/// v2 (hybrid systems mount v2 without the memory controller).
pub fn cgroup_levels(cgroup: &str, mountinfo: &str) -> Option<(Vec<std::path::PathBuf>, bool)> {
    let mut v1_path = None;
    let mut v2_path = None;
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            v1_path = Some(path);
        } else if id == "0" && controllers.is_empty() {
            v2_path = Some(path);
        }
    }
    // mountinfo: id parent dev root mountpoint options [optional...] - fstype source superoptions
    let mount = |v2: bool| {
        mountinfo.lines().find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let superopts = post.nth(1).unwrap_or("");
            let ok = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && superopts.split(',').any(|o| o == "memory")
            };
            ok.then(|| (pre.get(3).copied(), pre.get(4).copied()))
                .and_then(|(root, point)| Some((root?, point?)))
        })
    };
    let (path, v2, (root, point)) = match (v1_path, v2_path) {
        (Some(p), _) if mount(false).is_some() => (p, false, mount(false)?),
        (_, Some(p)) => (p, true, mount(true)?),
        _ => return None,
    };
    // The mount shows the hierarchy from `root` down; a path outside it is not visible.
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root)
            .filter(|r| r.is_empty() || r.starts_with('/'))?
    };
    let point = std::path::Path::new(point);
    let mut dir = point.join(rel.trim_start_matches('/'));
    let mut levels = vec![dir.clone()];
    while dir != point {
        if !dir.pop() {
            break;
        }
        levels.push(dir.clone());
    }
    Some((levels, v2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn meminfo() {
        let t = "MemTotal:       24684160 kB\nMemFree:        22828404 kB\nMemAvailable:   24002000 kB\n";
        assert_eq!(
            parse_meminfo(t),
            Some(Memory {
                total: 24684160 * 1024,
                available: 24002000 * 1024
            })
        );
        assert_eq!(
            parse_meminfo("MemTotal: 100 kB\nMemFree: 40 kB\n").map(|m| m.available),
            Some(40 * 1024)
        );
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn enough_memory_is_the_threshold_or_a_tenth() {
        let m = |total, available| Memory { total, available };
        assert!(m(100 << 30, 2 << 30).enough(1 << 30));
        assert!(!m(100 << 30, 512 << 20).enough(1 << 30));
        assert!(m(4 << 30, 512 << 20).enough(1 << 30)); // 12.5% of 4 GiB
        assert!(!m(4 << 30, 300 << 20).enough(1 << 30));
    }

    #[test]
    fn cgroup_headroom_counts_inactive_cache_as_free() {
        let stat2 = "anon 100\ninactive_file 1000\nactive_file 5\n";
        assert_eq!(
            cgroup_headroom(Some("10000\n"), Some("4000\n"), Some(stat2), true),
            Some((10000, 7000))
        );
        assert_eq!(
            cgroup_headroom(Some("max\n"), Some("4000"), None, true),
            None
        );
        assert_eq!(
            cgroup_headroom(Some("9223372036854771712"), Some("1"), None, false),
            None
        );
        let stat1 = "inactive_file 7\ntotal_inactive_file 500\n";
        assert_eq!(
            cgroup_headroom(Some("1000"), Some("1200"), Some(stat1), false),
            Some((1000, 300))
        );
        assert_eq!(
            cgroup_headroom(Some("1000"), Some("5000"), None, false),
            Some((1000, 0))
        );
    }

    #[test]
    fn cgroup_directories_v1_hybrid_and_v2() {
        let cg = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let (levels, v2) = cgroup_levels(cg, mi).unwrap();
        assert!(!v2);
        assert_eq!(
            levels,
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api"),
                PathBuf::from("/sys/fs/cgroup/memory"),
            ]
        );
        let cg = "0::/user.slice/user-1000.slice/session-3.scope\n";
        let mi = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let (levels, v2) = cgroup_levels(cg, mi).unwrap();
        assert!(v2);
        assert_eq!(levels.len(), 4);
        assert_eq!(
            levels[0],
            PathBuf::from("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope")
        );
        assert_eq!(levels[3], PathBuf::from("/sys/fs/cgroup"));
        // A container whose mount shows only its own subtree.
        let cg = "0::/docker/xyz\n";
        let mi = "30 23 0:26 /docker/xyz /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let (levels, _) = cgroup_levels(cg, mi).unwrap();
        assert_eq!(levels, vec![PathBuf::from("/sys/fs/cgroup")]);
        assert_eq!(cgroup_levels("0::/\n", ""), None);
    }

    #[test]
    fn probe_never_reports_more_than_meminfo() {
        let info = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
        let m = MemProbe::new().read();
        assert!(m.total <= info.total && m.available <= info.total);
    }

    #[test]
    fn etc_paths_are_recognised() {
        assert!(under_etc("/etc/passwd"));
        assert!(under_etc("/etc"));
        assert!(under_etc("/tmp/../etc/shadow"));
        assert!(!under_etc("/tmp/lswsgi.log"));
        assert!(!under_etc("/etcetera/x.log"));
    }
}
