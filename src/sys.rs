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

extern "C" fn on_stop_signal(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::Relaxed);
    STOP.store(true, Ordering::Relaxed);
}

extern "C" fn on_wake_signal(_sig: libc::c_int) {}

/// Installs the worker's signal dispositions: SIGPIPE ignored (a vanished
/// server is seen as EPIPE), SIGTERM/SIGINT/SIGUSR1 set [`STOP`], SIGCHLD only
/// interrupts poll. No SA_RESTART, so a blocked poll or accept returns EINTR
/// and the loop sees the flag at once.
pub fn install_signal_handlers() {
    // SAFETY: sigaction with a zeroed struct, a valid handler and an empty mask.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        for (sig, handler) in [
            (libc::SIGTERM, on_stop_signal as *const () as usize),
            (libc::SIGINT, on_stop_signal as *const () as usize),
            (libc::SIGUSR1, on_stop_signal as *const () as usize),
            (libc::SIGCHLD, on_wake_signal as *const () as usize),
        ] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
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

/// Points fd 1 at fd 2: a stray print must never reach the server's channel.
pub fn fold_stdout_into_stderr() {
    // SAFETY: dup2 on standard descriptors.
    unsafe { libc::dup2(2, 1) };
}

/// Opens `path` for appending and makes it fd 2 (and fd 1). Paths under /etc
/// are refused: a misconfigured log must not overwrite system files.
pub fn redirect_stderr(path: &str) -> io::Result<()> {
    if path == "/etc" || path.starts_with("/etc/") {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "log files under /etc are refused",
        ));
    }
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: c is a valid C string; dup2/close on integer descriptors.
    unsafe {
        let fd = cvt(libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        ))?;
        libc::dup2(fd, 2);
        libc::dup2(fd, 1);
        libc::close(fd);
    }
    Ok(())
}

/// Closes a descriptor, ignoring errors (nothing useful can be done about them).
pub fn close(fd: RawFd) {
    // SAFETY: closing an integer descriptor we own.
    unsafe { libc::close(fd) };
}
