//! One LSAPI connection: reading request packets and bodies from the server,
//! and writing framed responses back.
//!
//! Buffers are allocated once per process and reused: the read buffer never
//! grows past [`READ_BUF_LEN`] (one maximal request packet plus read-ahead),
//! and the response scratch vectors keep their capacity across requests.
//!
//! Bytes in `buf[start..end]` are received but not yet consumed; after a
//! request packet they begin with its body, and anything past the body belongs
//! to the next packet. The body reader never consumes beyond `body_left`.

use crate::lsapi::response::{empty_packet, stderr_header, stream_header};
use crate::lsapi::{
    Error as WireError, PacketHeader, PacketType, ResponseHead, HEADER_LEN, MAX_PACKET_LEN,
    MAX_STREAM_PAYLOAD,
};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Read buffer size: a maximal request packet plus 16 KiB of read-ahead.
pub const READ_BUF_LEN: usize = MAX_PACKET_LEN + 1 + 16 * 1024;
/// How long a started request (packet or body) or a response write may stall
/// before the connection is dropped.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Body reads shorter than this (bytes) go through the read buffer; longer
/// ones go straight from the socket into the destination.
const SMALL_READ: usize = 16 * 1024;
/// Send buffer asked for on each connection, bytes (the kernel caps it at
/// net.core.wmem_max and doubles it). The default (about 208 KiB) makes a
/// 1 MiB response block four or more times, each a sleep and a wake-up;
/// with this most responses leave in one writev. It is only used while a
/// response waits for the server to read it.
const SEND_BUF: libc::c_int = 1 << 20;
/// Largest iovec count per writev (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

static REQ_RECEIVED: [u8; HEADER_LEN] = [b'L', b'S', 7, 0, 8, 0, 0, 0];

/// Sets an integer socket option. Failure is ignored: callers use this only
/// for options whose absence costs speed, never correctness (not a socket,
/// not TCP, a value the kernel caps).
pub fn set_int_sockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: `value` is a live c_int of the length passed.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Writes REQ_RECEIVED on `fd`. The server treats 10 s without a packet
/// from us after it sent a request as a dead lock (Worker mode: the request
/// fails; ProcessGroup: another instance is started), so every request is
/// acknowledged as soon as it is read and validated, before the application
/// runs; it takes a descriptor rather than the connection so that it can go
/// out while the parsed request still borrows the connection's buffer.
pub fn write_req_received(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: REQ_RECEIVED is a static 8-byte buffer.
        let n = unsafe { libc::write(fd, REQ_RECEIVED.as_ptr().cast(), HEADER_LEN) };
        if n == HEADER_LEN as isize {
            return Ok(());
        }
        if n >= 0 {
            // 8 bytes into a socket with room never split; treat as failure.
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Fault reasons, as logged when the connection is dropped.
const BODY_CLOSED: &str = "connection closed in the middle of a request body";
const BODY_FAILED: &str = "reading the request body failed or timed out";
/// Why a connection whose write failed was dropped.
pub const WRITE_FAILED: &str =
    "writing the response failed: the server went away or stopped reading";

/// Why a connection must be dropped.
#[derive(Debug)]
pub enum ConnError {
    /// The server sent bytes that break the protocol.
    Protocol(WireError),
    /// A packet of a type not allowed here.
    UnexpectedPacket(u8),
    /// The server closed the connection in the middle of a packet or body.
    Truncated(&'static str),
    /// A read or write failed (includes time-outs).
    Io(io::Error),
    /// The request was abandoned part-way; the reason says why.
    Abandoned(&'static str),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Protocol(e) => write!(f, "protocol error: {e}"),
            ConnError::UnexpectedPacket(t) => write!(f, "unexpected packet type {t}"),
            ConnError::Truncated(what) => write!(f, "connection closed in the middle of {what}"),
            ConnError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => {
                write!(f, "timed out after {}s", IO_TIMEOUT.as_secs())
            }
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Abandoned(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

impl From<WireError> for ConnError {
    fn from(e: WireError) -> Self {
        ConnError::Protocol(e)
    }
}

/// Runs one blocking system call (the closure); an embedder can release a
/// lock around it — the Python worker releases the GIL so application
/// threads run while the worker waits on the server. The closure touches
/// only the connection's own buffers and descriptors.
pub type BlockingHook = fn(&mut dyn FnMut());

/// Runs `f` through `hook` if one is set.
#[inline]
fn blocking<R>(hook: Option<BlockingHook>, mut f: impl FnMut() -> R) -> R {
    match hook {
        None => f(),
        Some(h) => {
            let (mut r, mut errno) = (None, 0);
            h(&mut || {
                r = Some(f());
                errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            });
            // The hook may clobber errno after the call: the caller reads it.
            // SAFETY: __errno_location points at this thread's errno.
            unsafe { *libc::__errno_location() = errno };
            r.expect("the blocking hook runs its closure")
        }
    }
}

/// One piece of an outgoing writev.
#[derive(Clone, Copy)]
enum Part {
    /// A packet header held in `Conn::frames`.
    Frame(usize),
    /// Borrowed bytes that stay alive until the flush.
    Bytes(*const u8, usize),
}

/// A connection to the server and its per-process buffers.
pub struct Conn {
    fd: RawFd,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    body_left: u64,
    /// Calls of [`Conn::ack_later`] still to ignore on this connection.
    acks_waived: u64,
    /// Why the connection became unusable (closed after the current request).
    fault: Option<&'static str>,
    /// The current request is this connection's last: CONN_CLOSE follows
    /// RESP_END in the same write.
    close_after: bool,
    /// CONN_CLOSE went out with the last response.
    close_sent: bool,
    /// Wraps blocking reads and writes (see [`BlockingHook`]).
    hook: Option<BlockingHook>,
    /// The response header being built for the current request.
    pub head: ResponseHead,
    frames: Vec<[u8; HEADER_LEN]>,
    parts: Vec<Part>,
    iov: Vec<libc::iovec>,
}

impl Default for Conn {
    fn default() -> Self {
        Self::new()
    }
}

impl Conn {
    /// Buffers for a process; attach a socket with [`Conn::attach`].
    pub fn new() -> Conn {
        Conn {
            fd: -1,
            buf: vec![0u8; READ_BUF_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            body_left: 0,
            acks_waived: 0,
            fault: None,
            close_after: false,
            close_sent: false,
            hook: None,
            head: ResponseHead::new(),
            frames: Vec::with_capacity(64),
            parts: Vec::with_capacity(64),
            iov: Vec::with_capacity(64),
        }
    }

    /// Starts serving connection `fd` (blocking). Send and receive time-outs
    /// bound every stall once a request is under way.
    pub fn attach(&mut self, fd: RawFd) {
        self.fd = fd;
        self.start = 0;
        self.end = 0;
        self.body_left = 0;
        self.acks_waived = 0;
        self.fault = None;
        self.close_after = false;
        self.close_sent = false;
        let tv = libc::timeval {
            tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        set_int_sockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SEND_BUF);
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: tv is a live timeval; failure (not a socket) is harmless.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
        }
    }

    /// Sets (or clears) the hook that wraps blocking reads and writes.
    pub fn set_blocking_hook(&mut self, hook: Option<BlockingHook>) {
        self.hook = hook;
    }

    /// The connection's descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether received bytes are waiting (the next packet has begun).
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Marks the connection unusable for `why`: it is closed after the
    /// current request. The first reason is kept.
    pub fn set_broken(&mut self, why: &'static str) {
        self.fault.get_or_insert(why);
    }

    /// Whether a write failed or the protocol broke on this connection.
    pub fn is_broken(&self) -> bool {
        self.fault.is_some()
    }

    /// Why the connection became unusable, if it did.
    pub fn fault(&self) -> Option<&'static str> {
        self.fault
    }

    /// Reads into `buf[end..]`, at most `max` bytes. 0 means end of stream.
    fn fill(&mut self, max: usize) -> io::Result<usize> {
        let room = (self.buf.len() - self.end).min(max);
        loop {
            let (fd, dst) = (self.fd, self.buf[self.end..].as_mut_ptr());
            // SAFETY: the destination is the unused tail of our own buffer,
            // `room` bytes long at most.
            let n = blocking(self.hook, || unsafe { libc::read(fd, dst.cast(), room) });
            if n >= 0 {
                self.end += n as usize;
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Moves unconsumed bytes to the front when fewer than `need` bytes of room
    /// remain after `start`.
    fn make_room(&mut self, need: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Reads the next BEGIN_REQUEST packet. Returns its range in the buffer
    /// (see [`Conn::packet`]), or `None` when the server closed the connection
    /// cleanly between requests. An ABORT_REQUEST between requests is skipped.
    /// Afterwards the body of `body_len` bytes is ready for [`Conn::read_body`].
    pub fn read_request(&mut self) -> Result<Option<(usize, usize)>, ConnError> {
        loop {
            self.make_room(MAX_PACKET_LEN);
            while self.end - self.start < HEADER_LEN {
                if self.fill(usize::MAX)? == 0 {
                    if self.start == self.end {
                        return Ok(None);
                    }
                    return Err(ConnError::Truncated("a packet header"));
                }
            }
            let head: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
                .try_into()
                .expect("8 bytes");
            let h = PacketHeader::decode(&head)?;
            if h.kind == PacketType::AbortRequest as u8 && h.len == HEADER_LEN {
                self.start += HEADER_LEN;
                continue;
            }
            if h.kind != PacketType::BeginRequest as u8 {
                return Err(ConnError::UnexpectedPacket(h.kind));
            }
            if h.len > MAX_PACKET_LEN {
                return Err(WireError::PacketTooLarge(h.len).into());
            }
            while self.end - self.start < h.len {
                if self.fill(usize::MAX)? == 0 {
                    return Err(ConnError::Truncated("a request packet"));
                }
            }
            let range = (self.start, self.start + h.len);
            self.start += h.len;
            return Ok(Some(range));
        }
    }

    /// The bytes of a packet returned by [`Conn::read_request`]; valid until the
    /// body is read.
    pub fn packet(&self, range: (usize, usize)) -> &[u8] {
        &self.buf[range.0..range.1]
    }

    /// Sets the body length of the request just read.
    pub fn begin_body(&mut self, len: u64) {
        self.body_left = len;
    }

    /// Body bytes not yet read by the application.
    pub fn body_left(&self) -> u64 {
        self.body_left
    }

    /// Whether the request just read must be acknowledged with REQ_RECEIVED
    /// (see [`write_req_received`]); `false` while [`Conn::waive_acks`] says
    /// something already stood in for it. Counts the request either way.
    pub fn ack_due(&mut self) -> bool {
        if self.acks_waived > 0 {
            self.acks_waived -= 1;
            return false;
        }
        true
    }

    /// Skips the REQ_RECEIVED of the next `n` requests on this connection
    /// (`u64::MAX`: all of them): something already sent stands in for it
    /// (the `\0PID` notice, or REQ_RECEIVED at accept time).
    pub fn waive_acks(&mut self, n: u64) {
        self.acks_waived = n;
    }

    /// Writes one REQ_RECEIVED packet now; a failure marks the connection
    /// broken.
    pub fn send_req_received(&mut self) -> io::Result<()> {
        let r = write_req_received(self.fd);
        if r.is_err() {
            self.set_broken(WRITE_FAILED);
        }
        r
    }

    /// Buffered body bytes, refilling from the socket when none are buffered.
    /// Empty only at the end of the body.
    pub fn fill_body(&mut self) -> Result<&[u8], ConnError> {
        if self.body_left == 0 {
            return Ok(&[]);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            let want = self.body_left.min(self.buf.len() as u64) as usize;
            match self.fill(want) {
                Ok(0) => {
                    self.set_broken(BODY_CLOSED);
                    return Err(ConnError::Truncated("a request body"));
                }
                Ok(_) => {}
                Err(e) => {
                    self.set_broken(BODY_FAILED);
                    return Err(e.into());
                }
            }
        }
        let avail = ((self.end - self.start) as u64).min(self.body_left) as usize;
        Ok(&self.buf[self.start..self.start + avail])
    }

    /// Marks `n` bytes returned by [`Conn::fill_body`] as read.
    pub fn consume_body(&mut self, n: usize) {
        debug_assert!(n as u64 <= self.body_left && self.start + n <= self.end);
        self.start += n;
        self.body_left -= n as u64;
    }

    /// Reads up to `dst.len()` body bytes: buffered ones first, then, for a
    /// small read, through the read buffer (refilled by one kernel read),
    /// for a large one straight from the socket into `dst` (no copy).
    /// Returns 0 only at the end of the body.
    pub fn read_body(&mut self, dst: &mut [u8]) -> Result<usize, ConnError> {
        // SAFETY: initialised bytes are valid MaybeUninit<u8>, and read_body_uninit
        // writes only initialised bytes.
        let dst = unsafe { &mut *(dst as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        self.read_body_uninit(dst)
    }

    /// [`Conn::read_body`] into memory that may be uninitialised (a fresh
    /// Python bytes object); the first `n` bytes returned are initialised.
    pub fn read_body_uninit(
        &mut self,
        dst: &mut [std::mem::MaybeUninit<u8>],
    ) -> Result<usize, ConnError> {
        if self.body_left == 0 || dst.is_empty() {
            return Ok(0);
        }
        if self.start == self.end && dst.len() < SMALL_READ {
            // A small read: one kernel read fills the buffer for the next ones.
            self.fill_body()?;
        }
        if self.start < self.end {
            let n = (self.end - self.start)
                .min(dst.len())
                .min(self.body_left.min(usize::MAX as u64) as usize);
            // SAFETY: `n` bytes fit in both; our buffer and `dst` never overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.buf[self.start..].as_ptr(),
                    dst.as_mut_ptr().cast::<u8>(),
                    n,
                )
            };
            self.consume_body(n);
            return Ok(n);
        }
        let want = (dst.len() as u64).min(self.body_left) as usize;
        loop {
            let (fd, p) = (self.fd, dst.as_mut_ptr());
            // SAFETY: dst is a live mutable slice of at least `want` bytes.
            let n = blocking(self.hook, || unsafe { libc::read(fd, p.cast(), want) });
            if n > 0 {
                self.body_left -= n as u64;
                return Ok(n as usize);
            }
            if n == 0 {
                self.set_broken(BODY_CLOSED);
                return Err(ConnError::Truncated("a request body"));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                self.set_broken(BODY_FAILED);
                return Err(e.into());
            }
        }
    }

    /// Discards the unread rest of the body so the next packet can be read.
    pub fn drain_body(&mut self) -> Result<(), ConnError> {
        while self.body_left > 0 {
            let n = self.fill_body()?.len();
            self.consume_body(n);
        }
        Ok(())
    }

    /// Starts collecting one writev.
    pub fn begin_write(&mut self) {
        self.frames.clear();
        self.parts.clear();
    }

    /// Adds the RESP_HEADER packet in `self.head` (after `head.finish`).
    pub fn push_head(&mut self) {
        let (p, s) = (self.head.prefix(), self.head.strings());
        self.parts.push(Part::Bytes(p.as_ptr(), p.len()));
        if !s.is_empty() {
            self.parts.push(Part::Bytes(s.as_ptr(), s.len()));
        }
    }

    /// Adds `data` as RESP_STREAM packets of at most 16 KiB payload.
    ///
    /// # Safety
    /// `data` must stay alive and unchanged until the next [`Conn::flush`].
    pub unsafe fn push_body(&mut self, data: &[u8]) {
        self.push_stream(data, stream_header)
    }

    /// Adds `data` as STDERR_STREAM packets.
    ///
    /// # Safety
    /// As for [`Conn::push_body`].
    pub unsafe fn push_stderr(&mut self, data: &[u8]) {
        self.push_stream(data, stderr_header)
    }

    fn push_stream(&mut self, data: &[u8], header: fn(usize) -> [u8; HEADER_LEN]) {
        for chunk in data.chunks(MAX_STREAM_PAYLOAD) {
            self.frames.push(header(chunk.len()));
            self.parts.push(Part::Frame(self.frames.len() - 1));
            self.parts.push(Part::Bytes(chunk.as_ptr(), chunk.len()));
        }
    }

    /// Makes the next response this connection's last (or not): its RESP_END
    /// will carry CONN_CLOSE in the same write, as lsapilib does, so the
    /// server learns before it could reuse the connection.
    pub fn set_close_after(&mut self, last: bool) {
        self.close_after = last;
        self.close_sent = false;
    }

    /// Whether CONN_CLOSE went out with the last response.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Adds RESP_END, and CONN_CLOSE after it if this response is the last.
    pub fn push_end(&mut self) {
        self.push_packet(PacketType::RespEnd);
        if self.close_after {
            self.push_packet(PacketType::ConnClose);
            self.close_sent = true;
        }
    }

    /// Adds an empty packet (RESP_END, CONN_CLOSE).
    pub fn push_packet(&mut self, kind: PacketType) {
        self.frames.push(empty_packet(kind));
        self.parts.push(Part::Frame(self.frames.len() - 1));
    }

    /// Writes everything collected since [`Conn::begin_write`], in as few
    /// writev calls as IOV_MAX allows. A failure marks the connection broken.
    pub fn flush(&mut self) -> io::Result<()> {
        let parts = std::mem::take(&mut self.parts);
        let r = self.write_parts_raw(&parts);
        self.parts = parts;
        self.parts.clear();
        if r.is_err() {
            self.set_broken(WRITE_FAILED);
        }
        r
    }

    fn write_parts_raw(&mut self, parts: &[Part]) -> io::Result<()> {
        self.iov.clear();
        for p in parts {
            let (base, len) = match *p {
                Part::Frame(i) => (self.frames[i].as_ptr(), HEADER_LEN),
                Part::Bytes(ptr, len) => (ptr, len),
            };
            if len > 0 {
                self.iov.push(libc::iovec {
                    iov_base: base as *mut libc::c_void,
                    iov_len: len,
                });
            }
        }
        let mut at = 0;
        while at < self.iov.len() {
            let batch = (self.iov.len() - at).min(IOV_MAX);
            let (fd, iov) = (self.fd, self.iov[at..].as_ptr());
            // SAFETY: each iovec points at bytes the caller keeps alive until
            // this flush returns (push_body's contract, our own buffers), and
            // `batch` iovecs follow `iov`.
            let n = blocking(self.hook, || unsafe { libc::writev(fd, iov, batch as i32) });
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // Skip fully written iovecs, trim a partly written one.
            let mut n = n as usize;
            while n > 0 {
                let v = &mut self.iov[at];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    at += 1;
                } else {
                    // SAFETY: advancing within the same buffer.
                    v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) }.cast();
                    v.iov_len -= n;
                    n = 0;
                }
            }
            while at < self.iov.len() && self.iov[at].iov_len == 0 {
                at += 1;
            }
        }
        Ok(())
    }

    /// Sends `len` bytes of `file` from `offset` as RESP_STREAM packets using
    /// sendfile(2), so file contents never pass through user space. Returns
    /// the bytes sent (less than `len` if the file ended early).
    pub fn send_file(&mut self, file: RawFd, mut offset: i64, len: u64) -> io::Result<u64> {
        let mut sent = 0u64;
        while sent < len {
            let chunk = (len - sent).min(MAX_STREAM_PAYLOAD as u64) as usize;
            // Announce the chunk only once we know the file still has it.
            // SAFETY: all-zero bytes are a valid libc::stat (plain integers).
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: st is a live local.
            if unsafe { libc::fstat(file, &mut st) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let chunk = chunk.min((st.st_size - offset).max(0) as usize);
            if chunk == 0 {
                break;
            }
            self.begin_write();
            self.frames.push(stream_header(chunk));
            self.parts.push(Part::Frame(0));
            self.flush()?;
            let mut left = chunk;
            while left > 0 {
                let fd = self.fd;
                // SAFETY: offset is a live local; descriptors are integers.
                let n = blocking(self.hook, || unsafe {
                    libc::sendfile(fd, file, &mut offset, left)
                });
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    self.set_broken(WRITE_FAILED);
                    return Err(e);
                }
                if n == 0 {
                    // The file shrank under us: the packet promised bytes we
                    // cannot deliver, so the stream is no longer well-formed.
                    self.set_broken("the file being sent shrank; response abandoned");
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ));
                }
                left -= n as usize;
            }
            sent += chunk as u64;
        }
        Ok(sent)
    }

    /// Sends a whole small response at once: `status`, `headers` and a
    /// Content-Length for `body` as RESP_HEADER, then `body` and RESP_END
    /// (CONN_CLOSE too if this response is the last), in one writev. Any head
    /// staged in `self.head` is replaced. Headers that do not fit are left
    /// out (callers pass a few short, valid ones). A failure marks the
    /// connection broken.
    pub fn send_page(
        &mut self,
        status: u16,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
    ) -> io::Result<()> {
        let mut len_buf = [0u8; 20];
        self.head.clear();
        for (name, value) in headers {
            let _ = self.head.push(name, value);
        }
        let _ = self
            .head
            .push(b"Content-Length", fmt_usize(body.len(), &mut len_buf));
        self.head.finish(status);
        self.begin_write();
        self.push_head();
        // SAFETY: `body` outlives the flush just below.
        unsafe { self.push_body(body) };
        self.push_end();
        self.flush()
    }

    /// Writes `text` to the server's error log as STDERR_STREAM packets.
    pub fn write_stderr(&mut self, text: &[u8]) -> io::Result<()> {
        self.begin_write();
        // SAFETY: text outlives the flush below.
        unsafe { self.push_stderr(text) };
        self.flush()
    }

    /// Detaches and closes the connection.
    pub fn close(&mut self) {
        if self.fd >= 0 {
            // SAFETY: closing the descriptor this connection owns.
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
        self.start = 0;
        self.end = 0;
        self.body_left = 0;
    }
}

/// Formats `n` in decimal into `buf` (no allocation on the response path).
fn fmt_usize(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fmt_usize, Conn};
    use crate::client::{Client, Ending, Stream};
    use crate::lsapi::PacketType;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn send_page_is_one_whole_response_with_its_length() {
        let (server, worker) = UnixStream::pair().expect("socketpair");
        let mut conn = Conn::new();
        conn.attach(worker.into_raw_fd());
        // A head staged earlier (an application's) is replaced, not extended.
        conn.head.push(b"X-Staged", b"1").unwrap();
        conn.set_close_after(true);
        // More than one RESP_STREAM packet's worth.
        let body = vec![b'x'; 40_000];
        let headers: [(&[u8], &[u8]); 2] =
            [(b"Retry-After", b"60"), (b"Content-Type", b"text/html")];
        conn.send_page(508, &headers, &body).unwrap();
        assert!(conn.close_sent());
        conn.close();

        let mut client = Client::from_stream(Stream::Unix(server));
        let r = client.read_response().unwrap();
        assert_eq!(r.status, 508);
        let names: Vec<_> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("Retry-After", "60"),
                ("Content-Type", "text/html"),
                ("Content-Length", "40000")
            ]
        );
        assert_eq!(r.body, body);
        assert_eq!(r.ending, Ending::End);
        assert_eq!(r.packets.first(), Some(&(PacketType::RespHeader as u8)));
        assert_eq!(r.packets.last(), Some(&(PacketType::RespEnd as u8)));
        // CONN_CLOSE follows RESP_END in the same write.
        assert!(client.closing());
    }

    #[test]
    fn lengths_format_in_decimal() {
        let mut buf = [0u8; 20];
        assert_eq!(fmt_usize(0, &mut buf), b"0");
        assert_eq!(fmt_usize(40_000, &mut buf), b"40000");
        assert_eq!(
            fmt_usize(usize::MAX, &mut buf),
            usize::MAX.to_string().as_bytes()
        );
    }
}
