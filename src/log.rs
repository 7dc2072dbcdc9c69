//! The log: one line per event on fd 2 in the reference's format, the
//! macros that write it, and opening the log file a worker is told to use.

use std::io;

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
    crate::sys::write_all_fd(2, &line);
}

/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::log($crate::log::Level::Error, format_args!($($t)*)) };
}
/// Logs at warning level.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::log($crate::log::Level::Warn, format_args!($($t)*)) };
}
/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::log($crate::log::Level::Info, format_args!($($t)*)) };
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
        // SAFETY: both out-parameters are live locals of the right types.
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

/// Opens `path` for appending and makes it fd 2 (and fd 1). Paths that lead
/// into /etc (after resolving `..` and symbolic links) are refused: a
/// misconfigured log must not overwrite system files. The file must be a
/// regular file (checked on the descriptor).
///
/// As root the log is where a privilege boundary lies, so three more rules
/// hold: the file itself is never a symbolic link (O_NOFOLLOW: a planted
/// link cannot make root create or append to its target) and has no other
/// hard links, and its directory is [`crate::trust::root_trusted`], so that nobody else
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
        crate::trust::root_trusted(&dir).map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::under_etc;

    #[test]
    fn etc_paths_are_recognised() {
        assert!(under_etc("/etc/passwd"));
        assert!(under_etc("/etc"));
        assert!(under_etc("/tmp/../etc/shadow"));
        assert!(!under_etc("/tmp/lswsgi.log"));
        assert!(!under_etc("/etcetera/x.log"));
    }
}
