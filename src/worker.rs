//! The serve loop of one process: wait for a connection or request, serve it,
//! and leave when told to, when idle too long, after MAX_REQS requests, or
//! when the process that started us is gone.
//!
//! The same loop serves a Worker-mode process and a ProcessGroup child; a
//! child also keeps its slot in the group's table up to date and applies the
//! policies that are its own to apply (see [`crate::status::Member`]).

use crate::config::Config;
use crate::listen;
use crate::status::Member;
use crate::suexec::{Gate, Refusal};
use crate::sys::{self, STOP};
use crate::throttle::Throttle;
use crate::wsgi::{self, Runtime};
use lswsgi::conn::Conn;
use lswsgi::lsapi::response::pid_notice;
use lswsgi::lsapi::{PacketType, Request};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Length of one supervision tick.
pub const TICK: Duration = Duration::from_secs(1);

/// Why a wait or a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// The descriptor is readable, or (from `serve_connection`) the server
    /// closed the connection: ready for another.
    Ready,
    /// SIGTERM, SIGINT or SIGUSR1 arrived.
    Stop,
    /// Nothing happened for MAX_IDLE seconds.
    Idle,
    /// The process that started us died.
    Orphaned,
    /// LSAPI_MAX_REQS requests served.
    Exhausted,
    /// The group parent asked this idle child to exit.
    Retired,
    /// LSAPI_MAX_BUSY_WORKER: the connection was handed back with CONN_CLOSE.
    Shed,
    /// The child stopped taking connections (LSAPI_KEEP_LISTEN, free memory).
    Released,
}

/// One process serving requests.
pub struct Worker<'a> {
    cfg: &'a Config,
    rt: Runtime,
    conn: Conn,
    /// Requests served by this process.
    pub requests: u64,
    /// LSAPI_MAX_REQS less this process's random share of
    /// LSAPI_MAX_REQS_JITTER, so processes started together do not all
    /// leave (and get re-forked) together.
    max_reqs: u64,
    /// The pid whose disappearance ends this process (None: never).
    starter: Option<i32>,
    last_active_ms: u64,
    /// Set in a ProcessGroup child.
    group: Option<Member>,
    /// REQUEST_URI of the request in flight, kept only for the slow-request log.
    uri: String,
    /// suEXEC daemon mode: the identity check before any request is served.
    gate: Option<Gate>,
}

impl<'a> Worker<'a> {
    /// A worker using `rt` that exits once `starter` is no longer its parent.
    pub fn new(cfg: &'a Config, rt: Runtime, starter: Option<i32>) -> Worker<'a> {
        Worker {
            cfg,
            rt,
            conn: Conn::new(),
            requests: 0,
            max_reqs: jittered(cfg.max_reqs, cfg.max_reqs_jitter),
            starter,
            last_active_ms: sys::now_ms(),
            group: None,
            uri: String::new(),
            gate: None,
        }
    }

    /// The runtime back, for the exit work once serving is over.
    pub fn into_runtime(self) -> Runtime {
        self.rt
    }

    /// Makes every request pass `gate` (suEXEC daemon mode) before it is served.
    pub fn guard(&mut self, gate: Gate) {
        self.gate = Some(gate);
    }

    /// Makes this worker a ProcessGroup child linked to its group by `m`.
    pub fn join_group(&mut self, m: Member) {
        self.starter = Some(m.parent);
        self.group = Some(m);
    }

    /// Waits (with the GIL released, so application threads can run) until
    /// `fd` is readable, running the tick checks once a second.
    fn wait(&self, fd: RawFd, on_listener: bool) -> Wake {
        if let Some(m) = &self.group {
            // A child of a dead parent leaves after its current request, not
            // after the next quiet second.
            if sys::getppid() != m.parent {
                return Wake::Orphaned;
            }
            m.waiting(on_listener);
        }
        let since = sys::now_ms();
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
            if let Some(why) = self.tick_checks(since, on_listener) {
                return why;
            }
        })
    }

    /// The checks of each tick spent waiting, in order: the starter
    /// (parent-pid watching), LSAPI_MAX_IDLE, the group parent's exit request
    /// (honoured once a request was served, as lsapilib does), and on the
    /// shared listener LSAPI_KEEP_LISTEN / LSAPI_AVOID_FORK.
    fn tick_checks(&self, since_ms: u64, on_listener: bool) -> Option<Wake> {
        if self.starter.is_some_and(|p| sys::getppid() != p) {
            return Some(Wake::Orphaned);
        }
        let now = sys::now_ms();
        let idle_ms = now.saturating_sub(self.last_active_ms);
        if self.cfg.max_idle > 0 && idle_ms >= self.cfg.max_idle.saturating_mul(1000) {
            return Some(Wake::Idle);
        }
        let m = self.group.as_ref()?;
        if self.requests > 0 && m.exit_requested() {
            return Some(Wake::Retired);
        }
        if on_listener && !m.keep_listening(now.saturating_sub(since_ms) / 1000) {
            return Some(Wake::Released);
        }
        None
    }

    /// Whether this process has served its quota of requests.
    pub fn exhausted(&self) -> bool {
        self.requests >= self.max_reqs
    }

    /// Worker mode on a listener: accepts and serves connections until
    /// stopped, idle, orphaned or exhausted. The listener may be shared by
    /// several Worker-mode processes: poll wakes them all and only one gets
    /// the connection, so it is made non-blocking and a lost race (EAGAIN)
    /// goes back to waiting, with the GIL released, instead of blocking in
    /// accept with the GIL held.
    pub fn serve_listener(&mut self, listener: RawFd) -> Wake {
        if let Err(e) = sys::set_nonblocking(listener) {
            crate::warn!("cannot make the listener non-blocking: {e}");
        }
        let mut backoff = Backoff::default();
        loop {
            let since = sys::now_ms();
            match self.wait(listener, true) {
                Wake::Ready => {}
                other => return other,
            }
            match listen::accept(listener) {
                Ok(Some(fd)) => {
                    backoff.reset();
                    let why = self.serve_connection(fd);
                    if why != Wake::Ready {
                        return why;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    // EMFILE and the like: the listener stays readable, so
                    // without a pause this would spin and flood the log.
                    let pause = backoff.failed(&e);
                    wsgi::without_gil(|| std::thread::sleep(pause));
                    if STOP.load(Ordering::Relaxed) {
                        return Wake::Stop;
                    }
                    if let Some(why) = self.tick_checks(since, true) {
                        return why;
                    }
                }
            }
        }
    }

    /// A ProcessGroup child: serves the connection it was forked for, then,
    /// while it keeps the shared listener, connections it accepts itself.
    pub fn serve_child(&mut self, first: RawFd) -> Wake {
        let mut next = Some(first);
        loop {
            if let Some(fd) = next.take() {
                match self.serve_connection(fd) {
                    Wake::Ready | Wake::Shed => {}
                    other => return other,
                }
            }
            let Some(listener) = self.group.as_ref().and_then(Member::listener) else {
                return Wake::Ready;
            };
            let why = self.wait(listener, true);
            if why != Wake::Ready {
                if let Some(m) = self.group.as_mut() {
                    m.close_listener();
                }
                return why;
            }
            match listen::accept(listener) {
                Ok(Some(fd)) => next = Some(fd),
                Ok(None) => {}
                Err(e) => {
                    crate::error!("accept failed: {e}");
                    return Wake::Stop;
                }
            }
        }
    }

    /// First packets on a new connection: the `\0PID` notice on the one a
    /// child was forked for (standing in for its first REQ_RECEIVED), and
    /// with LSAPI_ACCEPT_NOTIFY, REQ_RECEIVED right after accept in place of
    /// every request's (the forked-for connection gets only the notice, as in
    /// lsapilib).
    fn greet(&mut self) {
        let notice = self
            .group
            .as_mut()
            .is_some_and(|m| std::mem::take(&mut m.notice_pending));
        if notice {
            sys::write_all_fd(self.conn.fd(), &pid_notice(sys::getpid()));
            if let Some(m) = &self.group {
                m.greeted();
            }
        } else if self.cfg.accept_notify {
            let _ = self.conn.send_req_received();
        }
        if self.cfg.accept_notify {
            self.conn.waive_acks(u64::MAX);
        } else if notice {
            self.conn.waive_acks(1);
        }
    }

    /// Serves requests on connection `fd` until the server closes it (returns
    /// `Wake::Ready`: ready for another connection), the connection is handed
    /// back (`Wake::Shed`), or the process must leave. The connection is
    /// closed on return.
    pub fn serve_connection(&mut self, fd: RawFd) -> Wake {
        self.conn.attach(fd);
        self.last_active_ms = sys::now_ms();
        self.greet();
        let why = loop {
            if !self.conn.has_buffered() {
                match self.wait(fd, false) {
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
            if let Some(gate) = &mut self.gate {
                let admitted = match Request::parse(self.conn.packet(range)) {
                    Ok(req) => gate.admit(req.special_env_iter()),
                    // Not served either: wsgi::serve reports the protocol error.
                    Err(_) => Ok(()),
                };
                match admitted {
                    Ok(()) => {}
                    Err(Refusal::Drop(e)) => {
                        crate::error!("suEXEC: {e}; closing the connection and exiting");
                        break Wake::Stop;
                    }
                    Err(Refusal::Limit(e)) => {
                        crate::error!("suEXEC: {e}; answered 508 and exiting");
                        send_resource_limit_page(&mut self.conn);
                        break Wake::Stop;
                    }
                }
                // The parent's verdict on this tenant's share of the group
                // (the first request only; the parent logs a refusal).
                if !self.group.as_ref().is_none_or(Member::admitted) {
                    send_resource_limit_page(&mut self.conn);
                    break Wake::Stop;
                }
            }
            // Known before serving: this request is the connection's last
            // (CONN_CLOSE goes out with its RESP_END).
            let retired = self.group.as_ref().is_some_and(Member::lease_ended);
            let last = STOP.load(Ordering::Relaxed)
                || retired
                || self.requests + 1 >= self.max_reqs
                || self.group.as_ref().is_some_and(Member::too_many_busy);
            self.conn.set_close_after(last);
            let started = self.request_started();
            let uri = (self.cfg.slow_req_msecs > 0).then_some(&mut self.uri);
            let served = wsgi::serve(&mut self.rt, &mut self.conn, range, uri);
            self.request_finished(started);
            if let Err(e) = served {
                crate::warn!("dropping connection: {e}");
                break Wake::Ready;
            }
            if STOP.load(Ordering::Relaxed) {
                break Wake::Stop;
            }
            if self.exhausted() {
                break Wake::Exhausted;
            }
            if retired {
                break Wake::Retired;
            }
            if self.group.as_ref().is_some_and(Member::too_many_busy) {
                break Wake::Shed;
            }
        };
        if why != Wake::Ready && !self.conn.is_broken() && !self.conn.close_sent() {
            // We close on our own initiative: tell the server first.
            self.conn.begin_write();
            self.conn.push_packet(PacketType::ConnClose);
            let _ = self.conn.flush();
        }
        self.conn.close();
        why
    }

    /// Bookkeeping as a request begins; returns its start time (ms).
    fn request_started(&mut self) -> u64 {
        let now = sys::now_ms();
        // (The REQUEST_URI for the slow-request log is filled by wsgi::serve,
        // which parses the packet anyway.)
        self.uri.clear();
        if let Some(m) = &self.group {
            m.request_started();
        }
        now
    }

    /// Bookkeeping as a request ends: the count, the table, and
    /// LSAPI_SLOW_REQ_MSECS.
    fn request_finished(&mut self, started: u64) {
        self.requests += 1;
        let now = sys::now_ms();
        self.last_active_ms = now;
        if let Some(m) = &self.group {
            m.request_finished();
        }
        let took = now - started;
        if self.cfg.slow_req_msecs > 0 && took >= self.cfg.slow_req_msecs {
            crate::warn!(
                "slow request: {took} ms for {} (LSAPI_SLOW_REQ_MSECS={})",
                self.uri,
                self.cfg.slow_req_msecs
            );
        }
    }

    /// Whether this child stopped taking connections for lack of memory.
    fn memory_low(&self) -> bool {
        self.group.as_ref().is_some_and(Member::memory_low)
    }

    /// Logs why the serve loop ended.
    pub fn log_exit(&self, why: &Wake) {
        let requests = self.requests;
        match why {
            Wake::Stop => crate::info!(
                "stopping on signal {} after {requests} requests",
                sys::STOP_SIGNAL.load(Ordering::Relaxed)
            ),
            Wake::Exhausted => {
                crate::info!("exiting after {requests} requests (LSAPI_MAX_REQS)")
            }
            Wake::Idle => crate::info!("exiting: idle for LSAPI_MAX_IDLE"),
            Wake::Orphaned => crate::info!("exiting: the process that started this one is gone"),
            Wake::Retired => crate::info!(
                "exiting after {requests} requests: {}",
                self.group.as_ref().map_or("asked to", Member::exit_reason)
            ),
            Wake::Released if self.memory_low() => crate::info!(
                "exiting after {requests} requests: free memory below the LSAPI_AVOID_FORK threshold"
            ),
            Wake::Ready | Wake::Shed | Wake::Released => {}
        }
    }
}

/// Pauses after failed accepts (10 ms doubling up to 1 s) and their log
/// lines (the first one, then at most one per interval with the number of
/// failures since: [`Throttle`]).
#[derive(Default)]
struct Backoff {
    pause_ms: u64,
    log: Throttle,
}

impl Backoff {
    const FIRST_MS: u64 = 10;
    const MAX_MS: u64 = 1000;

    fn reset(&mut self) {
        self.pause_ms = 0;
    }

    /// Records a failed accept; returns how long to pause.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        let now = sys::now_ms();
        let since_s = self.log.since_last_ms(now) / 1000;
        match self.log.allow(now) {
            Some(0) => crate::error!("accept failed: {e}; backing off"),
            Some(more) => crate::error!(
                "accept failed: {e} ({more} more failures in the last {since_s} s); backing off"
            ),
            None => {}
        }
        self.pause_ms = (self.pause_ms * 2).clamp(Self::FIRST_MS, Self::MAX_MS);
        Duration::from_millis(self.pause_ms)
    }
}

/// `max` less a random share of up to `percent` % of it (at least 1): the
/// spread of LSAPI_MAX_REQS_JITTER. Without randomness, `max` itself.
fn jittered(max: u64, percent: u8) -> u64 {
    let spread = (u128::from(max) * u128::from(percent.min(100)) / 100) as u64;
    let mut b = [0u8; 8];
    if spread == 0 || getrandom::fill(&mut b).is_err() {
        return max;
    }
    let cut = (u128::from(u64::from_ne_bytes(b)) % (u128::from(spread) + 1)) as u64;
    max.saturating_sub(cut).max(1)
}

/// Closes a listener we own.
pub fn close_listener(fd: RawFd) {
    listen::close(fd)
}

/// The page lsapilib answers when an account's LVE is at its limit.
const LIMIT_PAGE: &[u8] = b"<!DOCTYPE html>\n<html><head><title>508 Resource Limit Is Reached</title></head>\
<body><h1>Resource Limit Is Reached</h1>\n<p>The website is temporarily unable to serve your request \
as it exceeded its resource limit. Please try again later.</p></body></html>\n";

/// A complete 508 response, uncacheable, asking to retry in 60 s; the
/// connection closes after it.
fn send_resource_limit_page(conn: &mut Conn) {
    conn.set_close_after(true);
    let _ = conn.send_page(
        508,
        &[
            (
                &b"Cache-Control"[..],
                &b"private, no-cache, no-store, must-revalidate, max-age=0"[..],
            ),
            (b"Pragma", b"no-cache"),
            (b"Retry-After", b"60"),
            (b"Content-Type", b"text/html; charset=utf-8"),
        ],
        LIMIT_PAGE,
    );
}

#[cfg(test)]
mod tests {
    use super::jittered;

    #[test]
    fn jitter_only_lowers_max_reqs_within_its_spread() {
        let draws: Vec<u64> = (0..200).map(|_| jittered(1000, 10)).collect();
        assert!(draws.iter().all(|&n| (900..=1000).contains(&n)));
        assert!(draws.iter().any(|&n| n != draws[0]));
        assert_eq!(jittered(1000, 0), 1000);
        assert_eq!(jittered(3, 10), 3);
        assert!(jittered(u64::MAX, 100) >= 1);
        assert!((1..=2).contains(&jittered(2, 100)));
    }
}
