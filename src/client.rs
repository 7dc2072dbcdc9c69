//! A web-server-side LSAPI client: connects to (or spawns) an LSAPI
//! application, sends requests the way LiteSpeed does and reads the responses
//! back packet by packet.
//!
//! It depends only on the wire format, never on the worker's internals, so it
//! drives any conforming LSAPI application.

use crate::lsapi::build::{decode_resp_header, RequestSpec};
use crate::lsapi::{PacketHeader, PacketType, HEADER_LEN};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A connected byte stream to an application.
#[derive(Debug)]
pub enum Stream {
    /// A Unix domain socket.
    Unix(UnixStream),
    /// A TCP connection.
    Tcp(TcpStream),
}

impl Stream {
    /// Connects to `addr`: a Unix socket path (also LiteSpeed's `uds://path`,
    /// meaning `/path`) or `host:port`.
    pub fn connect(addr: &str) -> io::Result<Stream> {
        if let Some(rest) = addr.strip_prefix("uds://") {
            // LiteSpeed's notation: `uds://tmp/x.sock` names `/tmp/x.sock`.
            let path = format!("/{}", rest.trim_start_matches('/'));
            return UnixStream::connect(path).map(Stream::Unix);
        }
        if addr.starts_with('/') || addr.starts_with('.') || Path::new(addr).exists() {
            return UnixStream::connect(addr).map(Stream::Unix);
        }
        let addr = addr.replacen('*', "127.0.0.1", 1);
        let addrs: Vec<_> = addr.to_socket_addrs()?.collect();
        TcpStream::connect(&addrs[..]).map(Stream::Tcp)
    }

    /// Sets read and write time-outs (`None`: block forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Stream::Tcp(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
        }
    }

    /// The read time-out in force (`None`: blocking).
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Stream::Unix(s) => s.read_timeout().ok().flatten(),
            Stream::Tcp(s) => s.read_timeout().ok().flatten(),
        }
    }

    /// A second handle on the same connection (for writing a body while reading).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    /// Closes the writing half: the application sees end of stream.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// RESP_END: complete, the connection stays usable.
    End,
    /// CONN_CLOSE: complete, and the application asks to close.
    Close,
    /// The application closed the connection without ending the response.
    Eof,
}

/// One response as the server saw it.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status (0 if no RESP_HEADER arrived).
    pub status: i32,
    /// Headers in the order sent.
    pub headers: Vec<(String, String)>,
    /// Body bytes, concatenated from RESP_STREAM packets.
    pub body: Vec<u8>,
    /// STDERR_STREAM text (the `\0PID` notice removed).
    pub stderr: Vec<u8>,
    /// Type byte of every packet received, in order.
    pub packets: Vec<u8>,
    /// Pid from a `\0PID` notice, if one came.
    pub pid: Option<i32>,
    /// How it ended.
    pub ending: Ending,
    /// Time from the end of sending to the first packet of the response.
    pub first_byte: Duration,
}

impl Response {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Largest packet the client accepts from an application.
const MAX_RESPONSE_PACKET: usize = 16 << 20;

/// One LSAPI connection from the server side.
///
/// Like LiteSpeed, a client made with [`Client::connect`] honours
/// CONN_CLOSE: once the application has asked to close the connection, the
/// next request goes over a new one to the same address.
#[derive(Debug)]
pub struct Client {
    stream: Stream,
    /// Where to reconnect after CONN_CLOSE (None: a wrapped stream).
    addr: Option<String>,
    /// New connections made after CONN_CLOSE.
    reconnects: u64,
}

impl Client {
    /// Connects to `addr` (see [`Stream::connect`]).
    pub fn connect(addr: &str) -> io::Result<Client> {
        Ok(Client {
            stream: Stream::connect(addr)?,
            addr: Some(addr.to_string()),
            reconnects: 0,
        })
    }

    /// Wraps an already connected stream (never reconnects).
    pub fn from_stream(stream: Stream) -> Client {
        Client {
            stream,
            addr: None,
            reconnects: 0,
        }
    }

    /// How many times this client opened a new connection after CONN_CLOSE.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Before a request: a new connection (same address, same time-out) if
    /// the application asked to close this one.
    fn renew_if_closing(&mut self) -> io::Result<()> {
        if self.addr.is_some() && self.closing() {
            self.reconnect()?;
        }
        Ok(())
    }

    fn reconnect(&mut self) -> io::Result<()> {
        let addr = self.addr.as_deref().expect("reconnect needs an address");
        let timeout = self.stream.timeout();
        let stream = Stream::connect(addr)?;
        stream.set_timeout(timeout)?;
        self.stream = stream;
        self.reconnects += 1;
        Ok(())
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Sends the request packet and body, then reads the whole response.
    /// Bodies larger than 256 KiB are written from a second thread so an
    /// application that answers before reading everything cannot deadlock us.
    pub fn call(&mut self, spec: &RequestSpec, body: &[u8]) -> io::Result<Response> {
        let packet = spec
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.call_raw(&packet, body)
    }

    /// Like [`Client::call`] with an already encoded packet. A request that
    /// met a CONN_CLOSE sent before it was read (the application handed the
    /// connection back) is sent once more over a new connection.
    pub fn call_raw(&mut self, packet: &[u8], body: &[u8]) -> io::Result<Response> {
        self.renew_if_closing()?;
        let r = self.send(packet, body)?;
        let handed_back = r.status == 0 && r.packets == [PacketType::ConnClose as u8];
        if handed_back && self.addr.is_some() {
            self.reconnect()?;
            return self.send(packet, body);
        }
        Ok(r)
    }

    fn send(&mut self, packet: &[u8], body: &[u8]) -> io::Result<Response> {
        if body.len() <= 256 << 10 {
            let mut all = Vec::with_capacity(packet.len() + body.len());
            all.extend_from_slice(packet);
            all.extend_from_slice(body);
            self.stream.write_all(&all)?;
            return self.read_response();
        }
        self.stream.write_all(packet)?;
        let mut writer = self.stream.try_clone()?;
        std::thread::scope(|s| {
            let sender = s.spawn(move || writer.write_all(body));
            let response = self.read_response();
            // A failed send is explained by the response (or its absence).
            let _ = sender.join();
            response
        })
    }

    /// Sends the request packet, then the body in `pieces` roughly equal writes
    /// with `pause` between them (a slow uploader), then reads the response.
    pub fn call_in_pieces(
        &mut self,
        spec: &RequestSpec,
        body: &[u8],
        pieces: usize,
        pause: Duration,
    ) -> io::Result<Response> {
        let packet = spec
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.renew_if_closing()?;
        self.stream.write_all(&packet)?;
        let step = body.len().div_ceil(pieces.max(1)).max(1);
        for chunk in body.chunks(step) {
            std::thread::sleep(pause);
            self.stream.write_all(chunk)?;
        }
        self.read_response()
    }

    /// Whether the application has already asked to close this connection
    /// (a CONN_CLOSE, or the end of the stream, is waiting to be read), so a
    /// careful server opens a new connection instead of reusing this one.
    /// Does not block or consume anything.
    pub fn closing(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = match &self.stream {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        };
        let mut head = [0u8; HEADER_LEN];
        // SAFETY: a live buffer of HEADER_LEN bytes; MSG_PEEK leaves the data.
        let n = unsafe {
            libc::recv(
                fd,
                head.as_mut_ptr().cast(),
                HEADER_LEN,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n == HEADER_LEN as isize => head[2] == PacketType::ConnClose as u8,
            _ => false,
        }
    }

    /// Reads packets until RESP_END, CONN_CLOSE or end of stream.
    pub fn read_response(&mut self) -> io::Result<Response> {
        let started = Instant::now();
        let mut r = Response {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            stderr: Vec::new(),
            packets: Vec::new(),
            pid: None,
            ending: Ending::Eof,
            first_byte: Duration::ZERO,
        };
        let mut payload = Vec::new();
        loop {
            let mut head = [0u8; HEADER_LEN];
            if !read_exact_or_eof(&mut self.stream, &mut head)? {
                return Ok(r);
            }
            if r.packets.is_empty() {
                r.first_byte = started.elapsed();
            }
            let h = PacketHeader::decode(&head).map_err(invalid)?;
            if h.len > MAX_RESPONSE_PACKET {
                return Err(invalid(format!("packet of {} bytes", h.len)));
            }
            payload.resize(h.len - HEADER_LEN, 0);
            self.stream.read_exact(&mut payload)?;
            r.packets.push(h.kind);
            match PacketType::from_u8(h.kind) {
                Some(PacketType::RespHeader) => {
                    if r.status != 0 {
                        return Err(invalid("second RESP_HEADER in one response"));
                    }
                    let rh = decode_resp_header(h.order, &payload).map_err(invalid)?;
                    r.status = rh.status;
                    r.headers = rh
                        .headers
                        .into_iter()
                        .map(|(n, v)| {
                            (
                                String::from_utf8_lossy(&n).into_owned(),
                                String::from_utf8_lossy(&v).into_owned(),
                            )
                        })
                        .collect();
                }
                Some(PacketType::RespStream) => {
                    if r.status == 0 {
                        return Err(invalid("RESP_STREAM before RESP_HEADER"));
                    }
                    r.body.extend_from_slice(&payload);
                }
                Some(PacketType::StderrStream) => {
                    if payload.len() == 8 && payload.starts_with(b"\0PID") {
                        r.pid = Some(i32::from_ne_bytes(payload[4..8].try_into().unwrap()));
                    } else {
                        r.stderr.extend_from_slice(&payload);
                    }
                }
                Some(PacketType::ReqReceived) => {}
                Some(PacketType::RespEnd) => {
                    r.ending = Ending::End;
                    return Ok(r);
                }
                Some(PacketType::ConnClose) => {
                    r.ending = Ending::Close;
                    return Ok(r);
                }
                _ => return Err(invalid(format!("unexpected packet type {}", h.kind))),
            }
        }
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Fills `buf`; `Ok(false)` on a clean end of stream before the first byte.
fn read_exact_or_eof(s: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// An application process started the way LiteSpeed starts one: a listening
/// Unix socket in a private temporary directory passed as its fd 0.
#[derive(Debug)]
pub struct Spawned {
    /// The process.
    pub child: Child,
    /// The socket path to connect to.
    pub socket: PathBuf,
    dir: PathBuf,
}

impl Spawned {
    /// Runs `argv` with a fresh listening socket on fd 0 and extra `env`.
    /// Stdout and stderr are inherited unless `stderr` names a file.
    pub fn start(
        argv: &[String],
        env: &[(String, String)],
        stderr: Option<&Path>,
    ) -> io::Result<Spawned> {
        use std::os::unix::net::UnixListener;
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let dir = std::env::temp_dir().join(format!(
            "lsapi-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir(&dir)?;
        let socket = dir.join("app.sock");
        let start = || -> io::Result<Child> {
            let listener = UnixListener::bind(&socket)?;
            let mut cmd = Command::new(program);
            cmd.args(args)
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)));
            for (k, v) in env {
                cmd.env(k, v);
            }
            if let Some(path) = stderr {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                cmd.stderr(f);
            }
            cmd.spawn()
        };
        match start() {
            Ok(child) => Ok(Spawned { child, socket, dir }),
            Err(e) => {
                // No Spawned exists to clean up in Drop: remove the directory here.
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The socket path as a string for [`Client::connect`].
    pub fn addr(&self) -> String {
        self.socket.to_string_lossy().into_owned()
    }

    /// Connects, retrying for up to `wait` while the process starts.
    pub fn connect(&self, wait: Duration) -> io::Result<Client> {
        let deadline = Instant::now() + wait;
        loop {
            match Client::connect(&self.addr()) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Terminates the process (SIGTERM, then SIGKILL after `grace`) and reaps it.
    pub fn stop(&mut self, grace: Duration) -> io::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which is not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
