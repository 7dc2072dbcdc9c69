//! The serve loop of one process: wait for a connection or request, serve it,
//! and leave when told to, when idle too long, after MAX_REQS requests, or
//! when the process that started us is gone.

use crate::config::Config;
use crate::conn::Conn;
use crate::listen;
use crate::lsapi::PacketType;
use crate::sys::{self, STOP};
use crate::wsgi::{self, Runtime};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Length of one supervision tick.
pub const TICK: Duration = Duration::from_secs(1);

/// Why a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// The descriptor is readable.
    Ready,
    /// SIGTERM, SIGINT or SIGUSR1 arrived.
    Stop,
    /// Nothing happened for MAX_IDLE seconds.
    Idle,
    /// The process that started us died.
    Orphaned,
}

/// One process serving requests.
pub struct Worker<'a> {
    cfg: &'a Config,
    rt: Runtime,
    conn: Conn,
    /// Requests served by this process.
    pub requests: u64,
    starter: i32,
    last_active_ms: u64,
}

impl<'a> Worker<'a> {
    /// A worker using `rt`; `starter` is the parent pid to watch.
    pub fn new(cfg: &'a Config, rt: Runtime) -> Worker<'a> {
        Worker {
            cfg,
            rt,
            conn: Conn::new(),
            requests: 0,
            starter: sys::getppid(),
            last_active_ms: sys::now_ms(),
        }
    }

    /// Waits (with the GIL released, so application threads can run) until
    /// `fd` is readable, checking the stop flag, idleness and the starter on
    /// every tick.
    pub fn wait(&self, fd: RawFd) -> Wake {
        wsgi::without_gil(|| loop {
            if STOP.load(Ordering::Relaxed) {
                return Wake::Stop;
            }
            match sys::poll_readable(fd, Some(TICK)) {
                Ok(true) => return Wake::Ready,
                Ok(false) => {}
                Err(e) => {
                    crate::error!("poll failed: {e}");
                    return Wake::Stop;
                }
            }
            if !self.cfg.ppid_no_check && sys::getppid() != self.starter {
                return Wake::Orphaned;
            }
            let idle_ms = sys::now_ms().saturating_sub(self.last_active_ms);
            if idle_ms >= self.cfg.max_idle.saturating_mul(1000) {
                return Wake::Idle;
            }
        })
    }

    /// Whether this process has served its quota of requests.
    pub fn exhausted(&self) -> bool {
        self.requests >= self.cfg.max_reqs
    }

    /// Accepts and serves connections on `listener` until stopped, idle,
    /// orphaned or exhausted.
    pub fn serve_listener(&mut self, listener: RawFd) -> Wake {
        loop {
            match self.wait(listener) {
                Wake::Ready => {}
                other => return other,
            }
            match listen::accept(listener) {
                Ok(Some(fd)) => {
                    let why = self.serve_connection(fd);
                    if why != Wake::Ready {
                        return why;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    crate::error!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if self.exhausted() {
                return Wake::Stop;
            }
        }
    }

    /// Serves requests on connection `fd` until the server closes it (returns
    /// `Wake::Ready`: ready for another connection) or the process must
    /// leave. The connection is closed on return.
    pub fn serve_connection(&mut self, fd: RawFd) -> Wake {
        self.conn.attach(fd);
        self.last_active_ms = sys::now_ms();
        if self.cfg.accept_notify {
            self.conn.ack_later();
            let _ = self.conn.flush_ack();
        }
        let why = loop {
            if !self.conn.has_buffered() {
                match self.wait(fd) {
                    Wake::Ready => {}
                    other => break other,
                }
            }
            let range = match self.conn.read_request() {
                Ok(Some(range)) => range,
                Ok(None) => break Wake::Ready,
                Err(e) => {
                    crate::warn!("dropping connection: {e}");
                    break Wake::Ready;
                }
            };
            let started = sys::now_ms();
            let served = wsgi::serve(&mut self.rt, &mut self.conn, range);
            self.requests += 1;
            self.last_active_ms = sys::now_ms();
            let took = self.last_active_ms - started;
            if self.cfg.slow_req_msecs > 0 && took >= self.cfg.slow_req_msecs {
                crate::warn!("slow request: {took} ms");
            }
            if let Err(e) = served {
                crate::warn!("dropping connection: {e}");
                break Wake::Ready;
            }
            if STOP.load(Ordering::Relaxed) {
                break Wake::Stop;
            }
            if self.exhausted() {
                break Wake::Stop;
            }
        };
        if why != Wake::Ready && !self.conn.is_broken() {
            // We close on our own initiative: tell the server first.
            self.conn.begin_write();
            self.conn.push_packet(PacketType::ConnClose);
            let _ = self.conn.flush();
        }
        self.conn.close();
        why
    }
}

/// Logs why the serve loop ended.
pub fn log_exit(why: &Wake, requests: u64) {
    match why {
        Wake::Stop if STOP.load(Ordering::Relaxed) => crate::info!(
            "stopping on signal {} after {requests} requests",
            sys::STOP_SIGNAL.load(Ordering::Relaxed)
        ),
        Wake::Stop => crate::info!("exiting after {requests} requests (LSAPI_MAX_REQS)"),
        Wake::Idle => crate::info!("exiting: idle for LSAPI_MAX_IDLE"),
        Wake::Orphaned => crate::info!("exiting: the process that started this worker is gone"),
        Wake::Ready => {}
    }
}

/// Closes a listener we own.
pub fn close_listener(fd: RawFd) {
    listen::close(fd)
}
