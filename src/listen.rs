//! The socket the worker serves: fd 0 as LiteSpeed passes it, or one bound
//! from `-a ADDR`, and accepting on it.

use crate::sys::{self, cvt};
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::net::UnixListener;

/// A parsed `-a` address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A Unix domain socket path (`/path`, `uds://path`, `./path`).
    Unix(String),
    /// A TCP address; the host may be a name to resolve.
    Tcp(String, u16),
}

/// Parses `ADDR`: `/path` or `uds://path` for a Unix socket; `host:port`,
/// `*:port` (all IPv4 addresses), `localhost:port` or `[ipv6]:port` for TCP.
pub fn parse_address(addr: &str) -> Result<Address, String> {
    if let Some(path) = addr.strip_prefix("uds://") {
        if path.is_empty() {
            return Err("uds:// needs a path".into());
        }
        // LiteSpeed's notation: `uds://tmp/x.sock` names `/tmp/x.sock`.
        return Ok(Address::Unix(format!("/{}", path.trim_start_matches('/'))));
    }
    if addr.starts_with('/') || addr.starts_with("./") {
        return Ok(Address::Unix(addr.to_string()));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr:?} is neither a path nor host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} in {addr:?} is not a number 0-65535"))?;
    let host = match host {
        "*" | "" => "0.0.0.0".to_string(),
        h if h.starts_with('[') && h.ends_with(']') => h[1..h.len() - 1].to_string(),
        h if h.contains(':') => return Err(format!("IPv6 address {h:?} needs brackets")),
        h => h.to_string(),
    };
    Ok(Address::Tcp(host, port))
}

/// Binds a listening socket for `addr`; a stale Unix socket file is replaced.
/// Returns the raw descriptor (close-on-exec, blocking).
pub fn bind(addr: &Address) -> io::Result<RawFd> {
    match addr {
        Address::Unix(path) => {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    std::fs::remove_file(path)?;
                }
            }
            Ok(UnixListener::bind(path)?.into_raw_fd())
        }
        Address::Tcp(host, port) => {
            let addrs: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs()?.collect();
            Ok(TcpListener::bind(&addrs[..])?.into_raw_fd())
        }
    }
}

/// Accepts one connection (close-on-exec; blocking whatever the listener's
/// mode, as Linux accept4 does not pass O_NONBLOCK on). `Ok(None)` when
/// interrupted by a signal or, on a non-blocking listener, when another
/// process took the connection (EAGAIN).
pub fn accept(listener: RawFd) -> io::Result<Option<RawFd>> {
    // SAFETY: null address arguments are allowed by accept4.
    let r = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    match cvt(r) {
        Ok(fd) => {
            set_nodelay(fd);
            Ok(Some(fd))
        }
        Err(e) => match e.raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN | libc::ECONNABORTED) => Ok(None),
            _ => Err(e),
        },
    }
}

/// Turns off Nagle's algorithm on TCP connections (no-op on Unix sockets):
/// responses are written whole, so delaying them only adds latency.
fn set_nodelay(fd: RawFd) {
    lswsgi::conn::set_int_sockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
}

/// Closes a listener or connection.
pub fn close(fd: RawFd) {
    sys::close(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("/tmp/s"), Ok(Address::Unix("/tmp/s".into())));
        assert_eq!(
            parse_address("uds://tmp/s.sock"),
            Ok(Address::Unix("/tmp/s.sock".into()))
        );
        assert_eq!(
            parse_address("*:8080"),
            Ok(Address::Tcp("0.0.0.0".into(), 8080))
        );
        assert_eq!(
            parse_address("localhost:1"),
            Ok(Address::Tcp("localhost".into(), 1))
        );
        assert_eq!(parse_address("[::1]:9"), Ok(Address::Tcp("::1".into(), 9)));
        assert_eq!(
            parse_address("127.0.0.1:80"),
            Ok(Address::Tcp("127.0.0.1".into(), 80))
        );
        assert!(parse_address("nohost").is_err());
        assert!(parse_address("h:99999").is_err());
        assert!(parse_address("::1:80").is_err());
        assert!(parse_address("uds://").is_err());
    }
}
