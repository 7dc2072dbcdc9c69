//! Thin wrappers over the system calls the worker needs.
//!
//! Every `unsafe` block here is a direct libc call whose arguments are plain
//! integers or pointers to live, correctly sized local buffers. The log is
//! in [`crate::log`], memory probing in [`crate::meminfo`], and which paths
//! root trusts in [`crate::trust`].

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// Set by SIGTERM, SIGINT or SIGUSR1: stop accepting, finish, exit.
pub static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that set [`STOP`] (for the log line).
pub static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

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
            // SAFETY: `p..p + len` is one live environment entry nothing else
            // points into (caller).
            unsafe { std::ptr::write_volatile(p.add(i), 0) };
        }
    }
}

/// Points fd 1 at fd 2: a stray print must never reach the server's channel.
pub fn fold_stdout_into_stderr() {
    // SAFETY: dup2 on standard descriptors.
    unsafe { libc::dup2(2, 1) };
}

/// Closes a descriptor, ignoring errors (nothing useful can be done about them).
pub fn close(fd: RawFd) {
    // SAFETY: closing an integer descriptor we own.
    unsafe { libc::close(fd) };
}
