//! ProcessGroup mode: one long-lived parent, holding the loaded interpreter
//! (and, with `-m`, the application), forks a child per accepted connection;
//! children share the parent's memory copy-on-write.
//!
//! The parent's loop is gunicorn's arbiter: sleep in poll(2) on the listener
//! and a self-pipe that signal handlers write to, reap children, and once a
//! second run the policies, each a small function named for the setting it
//! enforces. Signal handlers only record and wake; every decision is made in
//! the loop.
//!
//! Trust boundary: the parent acts only on its own private record of the
//! children it forked ([`Child`]: the pid fork returned, a pidfd, times it
//! measured itself, its own retire state), freed only when it reaps that pid.
//! The shared status (`status.rs`) is a set of hints the children write: the
//! parent reads what a child *says* (busy, idle, requests begun) and bounds
//! every claim with its own clock, so a lie can delay nothing past a limit:
//!
//! - a request counts from the tick the parent first saw the child's request
//!   counter change, never from a time the child wrote;
//! - saying Busy for longer than LSAPI_MAX_PROCESS_TIME is a runaway; saying
//!   anything else for longer than LSAPI_MAX_IDLE (+5 s) since the parent last
//!   saw it busy or progressing is a stale child; more requests than
//!   LSAPI_MAX_REQS is a lie; each is retired;
//! - retiring is polite (the slot's exit request, or SIGTERM) and becomes
//!   SIGKILL after a grace period, whatever the child says meanwhile;
//! - a child that never starts serving within [`STARTUP_MS`] is killed.
//!
//! Each child's status page is its own ([`StatusPage`]: made for its fork,
//! sealed, dropped at reap), so a lie reaches only the liar's own child.
//! What the parent acts on alone ("started", and in suEXEC daemon mode the
//! uid, which the tenant's share is judged on) comes from the child's report
//! channel, written by the worker's own code before any application code
//! runs. In daemon mode, too, every child holds a lease timed from fork
//! ([`Parent::expire_leases`]) and writes its output to a pipe of its own
//! that the parent relays to the log ([`Relay`]): tenants share nothing
//! writable with root or with each other (LSAPI.md section 7).
//!
//! Times are the parent's CLOCK_MONOTONIC milliseconds.

use crate::config::Config;
use crate::listen;
use crate::meminfo::MemProbe;
use crate::status::{
    Member, Policy, State, StatusPage, Table, EXIT_GRACE_SECS, EXIT_LEASE, EXIT_SURPLUS,
};
use crate::sys::{self, ChildExit, STOP, STOP_SIGNAL};
use crate::throttle::Throttle;
use crate::wsgi;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;

/// Milliseconds between two runs of the policies.
const TICK_MS: u64 = 1000;
/// How long the parent leaves a waiting connection to children blocked in
/// accept before it forks anyway (a child may be on its way out), in 1 ms steps.
const DEFER_TO_ACCEPTING_MS: u32 = 50;
/// Longest wait, in seconds, for in-flight requests when the group stops
/// (never more than LSAPI_MAX_PROCESS_TIME); the rest are killed.
const STOP_GRACE_MAX_SECS: u64 = 30;
/// A child must send its `\0PID` notice within this many milliseconds of
/// fork (at-fork hooks run before it); otherwise it is killed.
const STARTUP_MS: u64 = 10_000;
/// Grace after a polite request to leave before SIGKILL, in milliseconds.
const GRACE_MS: u64 = EXIT_GRACE_SECS as u64 * 1000;
/// Pause of the accepting side after EMFILE and the like, in milliseconds.
const ACCEPT_PAUSE_MS: u64 = 500;
/// Fork back-off after children that die before serving: first and longest
/// delay, in milliseconds (doubling in between).
const CRASH_BACKOFF_MS: (u64, u64) = (100, 8000);
/// Longest wait of a daemon child whose tenant holds its share for one of
/// that tenant's children to leave, in milliseconds (then it answers 508).
const SHARE_WAIT_MS: u64 = 1000;
/// The smallest group (LSAPI_CHILDREN + LSAPI_EXTRA_CHILDREN) whose tenants
/// are held to a share of it.
const MIN_SHARED_GROUP: usize = 4;

/// Why the parent is retiring a child, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Runaway,
    Stale,
    Surplus,
    TooManyRequests,
    NoNotice,
    Leaving,
    Lease,
    Stopping,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::Runaway => "its request ran past LSAPI_MAX_PROCESS_TIME",
            Reason::Stale => "idle past LSAPI_MAX_IDLE",
            Reason::Surplus => "surplus idle child",
            Reason::TooManyRequests => "began more than LSAPI_MAX_REQS requests",
            Reason::NoNotice => "no PID notice in time",
            Reason::Leaving => "still not gone after serving",
            Reason::Lease => {
                "outlived its lease (LSAPI_MAX_IDLE + LSAPI_MAX_PROCESS_TIME since fork, \
                 then LSAPI_MAX_PROCESS_TIME to finish its request)"
            }
            Reason::Stopping => "the group is stopping",
        }
    }
}

/// The parent's own retire state of a child.
#[derive(Clone, Copy, Debug)]
struct Retire {
    reason: Reason,
    /// When the polite request went out.
    since_ms: u64,
    /// Grace before SIGKILL.
    grace_ms: u64,
    /// SIGKILL has been sent.
    killed: bool,
}

/// The parent's private record of one child it forked. Freed only when the
/// parent reaps `pid`, so `pid` always names this child (a pid cannot be
/// reused before its parent reaps it).
struct Child {
    pid: i32,
    /// pidfd_open(pid), where the kernel has it: signals go through it.
    pidfd: Option<RawFd>,
    /// Its own status page (hints it writes; the exit request the parent
    /// writes), dropped with the record.
    page: StatusPage,
    /// The parent's end of its report channel, until the child is done
    /// with it (or, in daemon mode, was given its verdict).
    report: Option<RawFd>,
    /// Read end of the pipe its fd 1 and 2 write to (suEXEC daemon mode).
    relay: Option<Relay>,
    forked_ms: u64,
    /// It sent its `\0PID` notice: reported on the pipe by the worker's own
    /// code before any application code ran in it (see [`Member`]).
    started: bool,
    /// The uid it serves (daemon mode), reported by the worker's own code
    /// once its first request was admitted (after the user switch, before
    /// the application).
    uid: Option<u32>,
    /// It was let serve that uid: it counts against the tenant's share.
    admitted: bool,
    /// When the parent read its uid (it waits for the verdict since).
    reported_ms: u64,
    /// Last request counter seen in its slot.
    seen_requests: u64,
    /// Requests the parent has seen it begin (at least one per change).
    counted: u64,
    /// When the parent last saw the counter change (or the fork).
    progress_ms: u64,
    /// When the parent last saw it say Busy, or progress.
    active_ms: u64,
    /// The state it said at the last look (None: a value no honest child writes).
    said: Option<State>,
    retire: Option<Retire>,
}

impl Child {
    /// The record of a child just forked at `now`: nothing seen of it yet,
    /// Starting as its slot says.
    fn new(
        pid: i32,
        pidfd: Option<RawFd>,
        page: StatusPage,
        report: RawFd,
        relay: Option<Relay>,
        now: u64,
    ) -> Child {
        Child {
            pid,
            pidfd,
            page,
            report: Some(report),
            relay,
            forked_ms: now,
            started: false,
            uid: None,
            admitted: false,
            reported_ms: 0,
            seen_requests: 0,
            counted: 0,
            progress_ms: now,
            active_ms: now,
            said: Some(State::Starting),
            retire: None,
        }
    }

    /// Reads what the child reported since the last look: `N` (notice
    /// sent), then in daemon mode `U` and the uid in native byte order (it
    /// then waits for [`Parent::judge`]), or end of file. Only the worker's
    /// code before the application runs ever holds the child's end.
    fn read_report(&mut self) {
        let Some(fd) = self.report else { return };
        let mut buf = [0u8; 16];
        loop {
            // SAFETY: buf is a live local; fd is our non-blocking read end.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                // Each record was one write of at most 5 bytes (atomic).
                let mut rec = &buf[..n as usize];
                while let Some((&tag, rest)) = rec.split_first() {
                    rec = rest;
                    match tag {
                        b'N' => self.started = true,
                        b'U' if rec.len() >= 4 && self.uid.is_none() => {
                            self.uid = Some(u32::from_ne_bytes(rec[..4].try_into().unwrap()));
                            self.reported_ms = sys::now_ms();
                            return;
                        }
                        _ => break,
                    }
                }
                continue;
            }
            if n < 0 && retry_later() {
                return;
            }
            // End of file (or an error): nothing more will come.
            sys::close(fd);
            self.report = None;
            return;
        }
    }

    /// Closes every descriptor of the record (at reap, or in a new child for
    /// its siblings' records).
    fn close_fds(&mut self) {
        for fd in [self.pidfd.take(), self.report.take()]
            .into_iter()
            .flatten()
        {
            sys::close(fd);
        }
        if let Some(r) = self.relay.take() {
            sys::close(r.fd);
        }
    }
}

/// After a failed read of a non-blocking pipe: whether it is only empty
/// (or interrupted), as opposed to failed for good.
fn retry_later() -> bool {
    matches!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EAGAIN | libc::EINTR)
    )
}

/// Longest line relayed from a child's output, in bytes; the rest of a
/// longer line is cut.
const RELAY_LINE: usize = 2048;
/// Most bytes relayed from one child's output per tick ([`TICK_MS`]): a
/// child that floods its pipe cannot hold the parent or fill the log at
/// disk speed; it blocks on its own full pipe until the next tick.
const RELAY_PER_TICK: usize = 256 * 1024;

/// The parent's end of a daemon child's output: lines are copied to the
/// parent's log, each marked with the child's pid and uid, so no tenant ever
/// holds a descriptor of the log itself.
struct Relay {
    /// Non-blocking, close-on-exec read end.
    fd: RawFd,
    /// The current line so far (at most [`RELAY_LINE`] bytes).
    line: Vec<u8>,
    /// The current line was cut: skip to its end.
    cut: bool,
    /// Bytes it may still relay this tick.
    budget: usize,
}

impl Relay {
    /// Copies what is readable now, within this tick's budget, to the log,
    /// line by line. Returns false at end of file or on an error.
    fn pump(&mut self, pid: i32, uid: Option<u32>) -> bool {
        let mut buf = [0u8; 4096];
        while self.budget > 0 {
            let want = buf.len().min(self.budget);
            // SAFETY: buf is a live local of at least `want` bytes; fd is our
            // non-blocking read end.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), want) };
            if n <= 0 {
                return n < 0 && retry_later();
            }
            self.budget -= n as usize;
            for part in buf[..n as usize].split_inclusive(|&b| b == b'\n') {
                let (text, end) = match part.split_last() {
                    Some((b'\n', text)) => (text, true),
                    _ => (part, false),
                };
                if !self.cut {
                    let room = RELAY_LINE - self.line.len();
                    self.line.extend_from_slice(&text[..text.len().min(room)]);
                    if text.len() > room {
                        self.emit(pid, uid, " [line cut]");
                        self.cut = true;
                    }
                }
                if end && !std::mem::take(&mut self.cut) {
                    self.emit(pid, uid, "");
                }
            }
        }
        true
    }

    /// Logs the line so far (if any) with `suffix`, and empties it.
    fn emit(&mut self, pid: i32, uid: Option<u32>, suffix: &str) {
        let text = String::from_utf8_lossy(&self.line);
        match uid {
            Some(u) => crate::info!("child {pid} (uid {u}): {text}{suffix}"),
            None => crate::info!("child {pid}: {text}{suffix}"),
        }
        self.line.clear();
    }

    /// At reap: copies what is left (within the budget), then the
    /// unfinished line.
    fn finish(mut self, pid: i32, uid: Option<u32>) {
        self.pump(pid, uid);
        if !self.line.is_empty() {
            self.emit(pid, uid, "");
        }
        sys::close(self.fd);
    }
}

/// Why the parent stopped.
#[derive(Debug)]
pub enum Exit {
    /// SIGTERM, SIGINT or SIGUSR1.
    Signal(i32),
    /// The process that started the group is gone.
    Orphaned,
    /// No children for LSAPI_PGRP_MAX_IDLE seconds.
    GroupIdle(u64),
    /// The group could not be set up or the listener failed.
    Failed(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Signal(s) => write!(f, "signal {s}"),
            Exit::Orphaned => f.write_str("the process that started the group is gone"),
            Exit::GroupIdle(s) => write!(f, "no children for {s} s (LSAPI_PGRP_MAX_IDLE)"),
            Exit::Failed(e) => f.write_str(e),
        }
    }
}

/// Which side of a fork returned from [`run`].
pub enum Role {
    /// The parent, done supervising: all its children are gone.
    Parent(Exit),
    /// A new child, with its link to the group and the connection it was
    /// forked for.
    Child(Member, RawFd),
}

/// Runs the ProcessGroup parent on `listener` until it must stop. `starter`
/// is the pid to watch (None with LSAPI_PPID_NO_CHECK); `tenants`: a suEXEC
/// daemon, whose children each serve a user of their own. Returns in the
/// parent after every child is gone, and in each new child right after fork.
pub fn run(cfg: &Config, listener: RawFd, starter: Option<i32>, tenants: bool) -> Role {
    let setup = || -> std::io::Result<Parent<'_>> {
        sys::set_nonblocking(listener)?;
        let wake = sys::open_wake_pipe()?;
        let n = cfg.child_limit() as usize;
        Ok(Parent {
            cfg,
            listener,
            table: Table::new()?,
            tenants,
            children: Vec::with_capacity(n),
            pollfds: Vec::new(),
            wake,
            starter,
            probe: MemProbe::new(),
            childless_since_ms: sys::now_ms(),
            saturated: false,
            frozen: false,
            accept_paused_until: 0,
            accept_errors: Throttle::default(),
            crashes_in_a_row: 0,
            fork_paused_until: 0,
            crash_log: Throttle::default(),
            share_log: Throttle::default(),
            limit_log: Throttle::default(),
        })
    };
    match setup() {
        Ok(mut p) => p.run(),
        Err(e) => Role::Parent(Exit::Failed(format!(
            "cannot set up the process group: {e}"
        ))),
    }
}

/// What the parent makes for each fork: the child's status page, its report
/// pipe and, in daemon mode, its output pipe (read end, write end).
struct Own {
    page: StatusPage,
    report: (RawFd, RawFd),
    relay: Option<(RawFd, RawFd)>,
}

impl Own {
    fn new(tenants: bool) -> std::io::Result<Own> {
        let page = StatusPage::new()?;
        let report = channel()?;
        let relay = if tenants {
            match pipe() {
                Ok(p) => Some(p),
                Err(e) => {
                    sys::close(report.0);
                    sys::close(report.1);
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(Own {
            page,
            report,
            relay,
        })
    }

    /// Closes the pipes (the page is unmapped when dropped).
    fn close(self) {
        let (r, w) = self.report;
        sys::close(r);
        sys::close(w);
        if let Some((r, w)) = self.relay {
            sys::close(r);
            sys::close(w);
        }
    }
}

/// A close-on-exec socket pair (parent's end, child's end) for a child's
/// report and the parent's verdict; the parent's end does not block.
fn channel() -> std::io::Result<(RawFd, RawFd)> {
    let mut fds = [-1; 2];
    // SAFETY: fds is a live array of two ints.
    sys::cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    sys::set_nonblocking(fds[0]).inspect_err(|_| {
        sys::close(fds[0]);
        sys::close(fds[1]);
    })?;
    Ok((fds[0], fds[1]))
}

/// A close-on-exec pipe whose read end (the parent's) does not block.
fn pipe() -> std::io::Result<(RawFd, RawFd)> {
    let mut fds = [-1; 2];
    // SAFETY: fds is a live array of two ints.
    sys::cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    sys::set_nonblocking(fds[0]).inspect_err(|_| {
        sys::close(fds[0]);
        sys::close(fds[1]);
    })?;
    Ok((fds[0], fds[1]))
}

/// The supervising parent.
struct Parent<'a> {
    cfg: &'a Config,
    listener: RawFd,
    table: Table,
    /// suEXEC daemon mode: children serve tenants who must not reach each
    /// other or root's log, and are bounded by a lease (see
    /// [`Parent::expire_leases`]).
    tenants: bool,
    /// Every child forked and not yet reaped.
    children: Vec<Child>,
    /// poll(2) set, rebuilt for each wait (kept for its allocation).
    pollfds: Vec<libc::pollfd>,
    /// Read end of the self-pipe the signal handlers write to.
    wake: RawFd,
    starter: Option<i32>,
    probe: MemProbe,
    /// When the group last had no children (meaningful while it has none).
    childless_since_ms: u64,
    /// The child limit was reached and logged; cleared when there is room.
    saturated: bool,
    /// gc.freeze has run.
    frozen: bool,
    /// No accept before this time (after EMFILE and the like).
    accept_paused_until: u64,
    accept_errors: Throttle,
    /// Children in a row that died before serving.
    crashes_in_a_row: u32,
    /// No fork before this time (crash-loop back-off).
    fork_paused_until: u64,
    crash_log: Throttle,
    /// Tenants refused for holding their share.
    share_log: Throttle,
    /// The child limit reached.
    limit_log: Throttle,
}

impl Parent<'_> {
    /// The arbiter's loop: reap, run the policies once a tick, sleep until a
    /// connection waits (or the next tick), and fork a child for it.
    fn run(&mut self) -> Role {
        crate::info!(
            "process group: up to {} children (+{} extra)",
            self.cfg.children,
            self.cfg.extra_children
        );
        self.publish();
        let mut next_tick = sys::now_ms() + TICK_MS;
        // Milliseconds a waiting connection has been left to accepting children.
        let mut deferred = 0;
        loop {
            if STOP.load(Relaxed) {
                return Role::Parent(self.shutdown(Exit::Signal(STOP_SIGNAL.load(Relaxed))));
            }
            self.reap();
            self.log_status_if_asked();
            let now = sys::now_ms();
            if now >= next_tick {
                next_tick = now + TICK_MS;
                if let Some(exit) = self.tick(now) {
                    return Role::Parent(self.shutdown(exit));
                }
            }
            match self.wait_for_connection(now, next_tick, deferred > 0) {
                Ok(true) => {}
                Ok(false) => {
                    deferred = 0;
                    continue;
                }
                Err(e) => return Role::Parent(self.shutdown(Exit::Failed(e))),
            }
            if self.children_accepting() && deferred < DEFER_TO_ACCEPTING_MS {
                deferred += 1;
                continue;
            }
            deferred = 0;
            if let Some(child) = self.accept_one() {
                return child;
            }
        }
    }

    /// SIGUSR2: logs the child table as seen now.
    fn log_status_if_asked(&mut self) {
        if sys::STATUS.swap(false, Relaxed) {
            self.observe(sys::now_ms());
            self.publish_busy();
            self.log_status();
        }
    }

    /// Sleeps until a connection waits that may be taken now (`Ok(true)`),
    /// or the next tick at `next_tick` (`Ok(false)`). Without room (the
    /// child limit, an accept pause, the crash back-off) the listener is not
    /// watched, and the sleep ends early when the pause does. `deferring`: a
    /// connection is being left to accepting children, so look again in
    /// 1 ms whether it is still there.
    fn wait_for_connection(
        &mut self,
        now: u64,
        next_tick: u64,
        deferring: bool,
    ) -> Result<bool, String> {
        let paused = self.accept_paused_until.max(self.fork_paused_until);
        let room = now >= paused && self.has_room();
        let until_tick = next_tick.saturating_sub(now);
        match (room, deferring) {
            (false, _) => {
                let t = if paused > now {
                    until_tick.min(paused - now)
                } else {
                    until_tick
                };
                self.wait(false, t).map(|_| false)
            }
            (true, false) => self.wait(true, until_tick),
            (true, true) => self.wait(false, 1).map(|_| self.pending()),
        }
    }

    /// Accepts the waiting connection and forks a child for it: the child's
    /// [`Role`] in the child, `None` in the parent (and when there was
    /// nothing to accept, or accept failed).
    fn accept_one(&mut self) -> Option<Role> {
        match listen::accept(self.listener) {
            Ok(Some(conn)) => self.spawn(conn),
            Ok(None) => None,
            Err(e) => {
                self.accept_failed(e);
                None
            }
        }
    }

    /// The once-a-second checks, in order; `Some` when the group must stop.
    fn tick(&mut self, now: u64) -> Option<Exit> {
        if self.starter_gone() {
            return Some(Exit::Orphaned);
        }
        self.observe(now);
        for r in self.children.iter_mut().filter_map(|c| c.relay.as_mut()) {
            r.budget = RELAY_PER_TICK;
        }
        self.kill_unstarted(now);
        self.kill_runaways(now);
        self.retire_stale_and_lying(now);
        self.retire_idle_children(now);
        self.expire_leases(now);
        self.escalate(now);
        self.publish();
        self.group_idle_too_long(now).map(Exit::GroupIdle)
    }

    /// Parent-pid watching: the process that started the group is gone
    /// (never with LSAPI_PPID_NO_CHECK).
    fn starter_gone(&self) -> bool {
        self.starter.is_some_and(|p| sys::getppid() != p)
    }

    /// Reads every child's hints into the parent's record, timing them with
    /// the parent's clock.
    fn observe(&mut self, now: u64) {
        for c in &mut self.children {
            look(c, now);
        }
        self.judge();
    }

    /// suEXEC daemon mode: one tenant's share of the group's children,
    /// half of LSAPI_CHILDREN + LSAPI_EXTRA_CHILDREN (rounded up), so that
    /// one tenant holding its share leaves as many children to the others.
    /// Below [`MIN_SHARED_GROUP`] children there is no share: a half would
    /// hold each account to one or two connections, idle ones included.
    fn tenant_share(&self) -> usize {
        let limit = self.cfg.child_limit() as usize;
        if limit < MIN_SHARED_GROUP {
            return limit;
        }
        limit.div_ceil(2)
    }

    /// Answers every child that reported its tenant and waits: `G` (serve)
    /// while that tenant's admitted children are fewer than its share; once
    /// it has waited [`SHARE_WAIT_MS`] for one of them to leave, or at once
    /// when the group is at its limit, `X` (the child answers 508 and
    /// leaves). The uid is trusted evidence: the
    /// worker's own code wrote it after the user switch. Not counted: a
    /// child the parent is retiring (gone within its bound) and one that
    /// says it is leaving (an honest one is gone within milliseconds, a liar
    /// is killed [`GRACE_MS`] later), so neither buys a tenant more than
    /// that.
    fn judge(&mut self) {
        let share = self.tenant_share();
        let now = sys::now_ms();
        for i in 0..self.children.len() {
            let c = &self.children[i];
            let (Some(uid), Some(fd)) = (c.uid, c.report) else {
                continue;
            };
            let waited = now.saturating_sub(c.reported_ms);
            let held = self
                .children
                .iter()
                .filter(|o| {
                    o.admitted
                        && o.uid == Some(uid)
                        && o.retire.is_none()
                        && o.page.slot().state.load(Relaxed) != State::Leaving as u32
                })
                .count();
            let go = held < share;
            // Waiting holds a place: not while the group is at its limit.
            let full = self.children.len() >= self.cfg.child_limit() as usize;
            if !go && waited < SHARE_WAIT_MS && !full {
                continue;
            }
            if !go {
                if let Some(suppressed) = self.share_log.allow(sys::now_ms()) {
                    crate::warn!(
                        "uid {uid} holds its share of {share} children (half of \
                         LSAPI_CHILDREN + LSAPI_EXTRA_CHILDREN in suEXEC daemon mode); its new \
                         connection was answered 508 ({suppressed} more since the last report). \
                         Limit the account's connections in LiteSpeed (suEXEC max conns) \
                         below that, or raise LSAPI_CHILDREN"
                    );
                }
            }
            sys::write_all_fd(fd, if go { b"G" } else { b"X" });
            sys::close(fd);
            let c = &mut self.children[i];
            c.report = None;
            c.admitted = go;
        }
    }

    /// Publishes free memory and the busy count in the header for the
    /// children's LSAPI_AVOID_FORK, LSAPI_KEEP_LISTEN and
    /// LSAPI_MAX_BUSY_WORKER decisions (the parent is its only writer).
    fn publish(&self) {
        let h = self.table.header();
        let m = self.probe.read();
        h.mem_total.store(m.total, Relaxed);
        h.mem_available.store(m.available, Relaxed);
        self.publish_busy();
    }

    /// Publishes the busy count as last seen (also before each fork, so a
    /// new child's view is no older than its connection).
    fn publish_busy(&self) {
        self.table
            .header()
            .busy
            .store(self.count(State::Busy), Relaxed);
    }

    /// Children that said `state` at the last look.
    fn count(&self, state: State) -> u32 {
        self.children
            .iter()
            .filter(|c| c.said == Some(state))
            .count() as u32
    }

    /// A child that has not started serving [`STARTUP_MS`] after fork (stuck
    /// in an at-fork hook, say) gets SIGKILL: no request of it is in flight.
    fn kill_unstarted(&mut self, now: u64) {
        for i in 0..self.children.len() {
            let c = &self.children[i];
            if !c.started && c.retire.is_none() && now.saturating_sub(c.forked_ms) > STARTUP_MS {
                crate::warn!(
                    "child {} sent no PID notice within {} s of fork; killing it",
                    c.pid,
                    STARTUP_MS / 1000
                );
                self.retire(i, Reason::NoNotice, now, 0, None);
            }
        }
    }

    /// LSAPI_MAX_PROCESS_TIME: a child that has said Busy for longer than
    /// the limit since the parent saw its request begin gets SIGTERM, then
    /// SIGKILL after the grace period.
    fn kill_runaways(&mut self, now: u64) {
        let limit_ms = self.cfg.max_process_time.saturating_mul(1000);
        for i in 0..self.children.len() {
            let c = &self.children[i];
            let took = now.saturating_sub(c.progress_ms);
            if c.said != Some(State::Busy) || took <= limit_ms || c.retire.is_some() {
                continue;
            }
            crate::warn!(
                "killing runaway child {} with SIGTERM: its request has run for {} s \
                 (LSAPI_MAX_PROCESS_TIME={})",
                c.pid,
                took / 1000,
                self.cfg.max_process_time
            );
            self.retire(i, Reason::Runaway, now, GRACE_MS, Some(libc::SIGTERM));
        }
    }

    /// Bounds on what a child says of itself: not busy for LSAPI_MAX_IDLE
    /// (+5 s) since the parent last saw it busy or progressing (an honest
    /// child has left by then), saying Leaving, or more requests begun than
    /// LSAPI_MAX_REQS: each is retired, and killed after the grace period.
    fn retire_stale_and_lying(&mut self, now: u64) {
        let stale_ms = (self.cfg.max_idle > 0)
            .then(|| self.cfg.max_idle.saturating_add(5).saturating_mul(1000));
        for i in 0..self.children.len() {
            let c = &self.children[i];
            if c.retire.is_some_and(|r| r.reason != Reason::Surplus) {
                continue;
            }
            if c.said == Some(State::Leaving) {
                self.retire(i, Reason::Leaving, now, GRACE_MS, None);
            } else if c.counted > self.cfg.max_reqs {
                crate::warn!(
                    "child {} began {} requests (LSAPI_MAX_REQS={}); retiring it",
                    c.pid,
                    c.counted,
                    self.cfg.max_reqs
                );
                self.retire(
                    i,
                    Reason::TooManyRequests,
                    now,
                    GRACE_MS,
                    Some(libc::SIGTERM),
                );
            } else if c.said != Some(State::Busy)
                && c.started
                && stale_ms.is_some_and(|ms| now.saturating_sub(c.active_ms) > ms)
            {
                self.retire(i, Reason::Stale, now, GRACE_MS, Some(libc::SIGTERM));
            }
        }
    }

    /// LSAPI_MAX_IDLE_CHILDREN and LSAPI_EXTRA_CHILDREN: asks idle children
    /// (that have served a request, as lsapilib waits for) to exit while more
    /// are idle than allowed or the group runs above LSAPI_CHILDREN. The
    /// request is the slot's exit flag; the child acts on it at its next
    /// tick, or is killed after the grace period.
    fn retire_idle_children(&mut self, now: u64) {
        let (mut idle, mut leaving) = (0u32, 0u32);
        let live = self.children.len() as u32;
        for i in 0..self.children.len() {
            let c = &self.children[i];
            if c.retire.is_some() {
                leaving += 1;
                continue;
            }
            if !matches!(c.said, Some(State::Idle | State::Accepting)) || c.counted == 0 {
                continue;
            }
            let surplus = live - leaving > self.cfg.children || idle >= self.cfg.max_idle_children;
            if surplus {
                c.page.slot().exit.store(EXIT_SURPLUS, Relaxed);
                self.retire(i, Reason::Surplus, now, GRACE_MS, None);
                leaving += 1;
            } else {
                idle += 1;
            }
        }
    }

    /// suEXEC daemon mode: every child holds a lease of LSAPI_MAX_IDLE +
    /// LSAPI_MAX_PROCESS_TIME from its fork, timed by the parent alone (what
    /// a tenant writes in its slot is no evidence of progress). Then it is
    /// asked to leave at its next request boundary (an honest child closes
    /// its connection with CONN_CLOSE after the request in flight) and
    /// killed if still there LSAPI_MAX_PROCESS_TIME (+ the usual grace)
    /// later. A child being retired for another reason keeps that bound.
    fn expire_leases(&mut self, now: u64) {
        if !self.tenants {
            return;
        }
        let finish_ms = self.cfg.max_process_time.saturating_mul(1000);
        let lease_ms = self
            .cfg
            .max_idle
            .saturating_mul(1000)
            .saturating_add(finish_ms);
        for i in 0..self.children.len() {
            let c = &self.children[i];
            if c.retire.is_some() || now.saturating_sub(c.forked_ms) <= lease_ms {
                continue;
            }
            c.page.slot().exit.store(EXIT_LEASE, Relaxed);
            let grace = finish_ms.saturating_add(GRACE_MS);
            self.retire(i, Reason::Lease, now, grace, None);
        }
    }

    /// Starts retiring child `i`: records why and when, and sends `polite`
    /// (if any). With no grace, SIGKILL at once.
    fn retire(&mut self, i: usize, reason: Reason, now: u64, grace_ms: u64, polite: Option<i32>) {
        let c = &mut self.children[i];
        c.retire = Some(Retire {
            reason,
            since_ms: now,
            grace_ms,
            killed: false,
        });
        if let Some(sig) = polite {
            signal(c, sig);
        }
        if grace_ms == 0 {
            self.escalate(now);
        }
    }

    /// The arbiter's second pass: SIGKILL for every child still here after
    /// its grace period, whatever it says.
    fn escalate(&mut self, now: u64) {
        for c in &mut self.children {
            let Some(r) = &mut c.retire else { continue };
            if r.killed || now.saturating_sub(r.since_ms) < r.grace_ms {
                continue;
            }
            r.killed = true;
            if r.reason == Reason::Runaway {
                crate::warn!(
                    "killing runaway child {} with SIGKILL (LSAPI_MAX_PROCESS_TIME={})",
                    c.pid,
                    self.cfg.max_process_time
                );
            } else if r.reason != Reason::NoNotice {
                crate::warn!(
                    "killing child {} with SIGKILL: {} ({}), {} s after it was asked to leave",
                    c.pid,
                    r.reason.text(),
                    c.said.map_or("says nothing sensible", State::name),
                    r.grace_ms / 1000
                );
            }
            signal(c, libc::SIGKILL);
        }
    }

    /// LSAPI_PGRP_MAX_IDLE: the limit, once the group has been without
    /// children that many seconds.
    fn group_idle_too_long(&mut self, now: u64) -> Option<u64> {
        let max = self.cfg.pgrp_max_idle?;
        if !self.children.is_empty() {
            self.childless_since_ms = now;
            return None;
        }
        (now.saturating_sub(self.childless_since_ms) >= max.saturating_mul(1000)).then_some(max)
    }

    /// LSAPI_CHILDREN + LSAPI_EXTRA_CHILDREN, counted on the parent's own
    /// record: whether another child may be forked. Reaching the limit is
    /// logged at most once per interval; connections then wait in the listen
    /// backlog.
    fn has_room(&mut self) -> bool {
        let live = self.children.len() as u32;
        let room = live < self.cfg.child_limit();
        if !room && !self.saturated {
            // Once per interval, counting the times in between: a group that
            // keeps touching its limit is one report, not a stream of them.
            if let Some(more) = self.limit_log.allow(sys::now_ms()) {
                crate::warn!(
                    "reached the limit of {} children (LSAPI_CHILDREN={}, \
                     LSAPI_EXTRA_CHILDREN={}), {} saying busy; new connections wait in the \
                     listen backlog ({more} more times since the last report). If requests \
                     time out or this repeats, raise LSAPI_CHILDREN together with the \
                     external app's Max Connections",
                    live,
                    self.cfg.children,
                    self.cfg.extra_children,
                    self.count(State::Busy)
                );
            }
        }
        self.saturated = !room;
        room
    }

    /// Whether children say they wait in accept on the shared listener: they
    /// take new connections, so the parent does not fork for them (for at
    /// most [`DEFER_TO_ACCEPTING_MS`], so a lie costs little).
    fn children_accepting(&self) -> bool {
        self.cfg.keep_listen > 0
            && self.children.iter().any(|c| {
                c.retire.is_none() && c.page.slot().state.load(Relaxed) == State::Accepting as u32
            })
    }

    /// Accept failed: EMFILE and other resource shortages pause accepting
    /// for [`ACCEPT_PAUSE_MS`] (the connection waits in the backlog, no hot
    /// loop); every failure is logged at most once per interval.
    fn accept_failed(&mut self, e: std::io::Error) {
        let now = sys::now_ms();
        if let Some(suppressed) = self.accept_errors.allow(now) {
            crate::error!(
                "accept failed: {e}; pausing accepts for {ACCEPT_PAUSE_MS} ms \
                 ({suppressed} more failures since the last report)"
            );
        }
        self.accept_paused_until = now + ACCEPT_PAUSE_MS;
    }

    /// Sleeps up to `timeout_ms` on the wake pipe, the children's output
    /// pipes (daemon mode; what is readable is relayed to the log) and, if
    /// `listener`, the listener. `Ok(true)` when a connection is waiting.
    fn wait(&mut self, listener: bool, timeout_ms: u64) -> Result<bool, String> {
        let fd = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        self.pollfds.clear();
        self.pollfds.push(fd(self.wake));
        // A negative descriptor is skipped by poll.
        self.pollfds
            .push(fd(if listener { self.listener } else { -1 }));
        for c in &self.children {
            // A relay out of budget waits for the next tick.
            let relay = c.relay.as_ref().filter(|r| r.budget > 0);
            self.pollfds.push(fd(relay.map_or(-1, |r| r.fd)));
            self.pollfds.push(fd(c.report.unwrap_or(-1)));
        }
        let timeout = timeout_ms.min(i32::MAX as u64) as i32;
        let fds = &mut self.pollfds;
        wsgi::without_gil(|| sys::poll(fds, timeout)).map_err(|e| format!("poll failed: {e}"))?;
        if self.pollfds[0].revents != 0 {
            sys::drain(self.wake);
        }
        let mut judge = false;
        for (c, p) in self.children.iter_mut().zip(self.pollfds[2..].chunks(2)) {
            if p[0].revents | p[1].revents == 0 {
                continue;
            }
            // The uid, if reported by now, marks the lines.
            c.read_report();
            judge |= c.uid.is_some() && c.report.is_some();
            if p[0].revents == 0 {
                continue;
            }
            if let Some(r) = &mut c.relay {
                if !r.pump(c.pid, c.uid) {
                    // Every writer is gone (or the pipe failed).
                    c.relay.take().unwrap().finish(c.pid, c.uid);
                }
            }
        }
        if judge {
            self.judge();
        }
        let l = self.pollfds[1].revents;
        if l & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err("the listening socket failed".into());
        }
        Ok(listener && l & libc::POLLIN != 0)
    }

    /// Whether a connection is still waiting on the listener (without waiting).
    fn pending(&self) -> bool {
        sys::poll_readable(self.listener, Some(std::time::Duration::ZERO)).unwrap_or(false)
    }

    /// Forks a child for connection `conn`. Returns the child's [`Role`] in
    /// the child; `None` in the parent.
    fn spawn(&mut self, conn: RawFd) -> Option<Role> {
        let own = match Own::new(self.tenants) {
            Ok(own) => own,
            Err(e) => {
                crate::error!(
                    "cannot set up a child's status page and pipes: {e}; dropping a connection \
                     (check the open-file limit, ulimit -n)"
                );
                listen::close(conn);
                return None;
            }
        };
        self.freeze_heap_once();
        self.observe(sys::now_ms());
        self.publish_busy();
        let parent = sys::getpid();
        match wsgi::fork() {
            Ok(0) => Some(Role::Child(self.become_child(own, parent), conn)),
            Ok(pid) => {
                let now = sys::now_ms();
                sys::close(own.report.1);
                let relay = own.relay.map(|(r, w)| {
                    sys::close(w);
                    Relay {
                        fd: r,
                        line: Vec::new(),
                        cut: false,
                        budget: RELAY_PER_TICK,
                    }
                });
                let pidfd = pidfd_open(pid);
                let c = Child::new(pid, pidfd, own.page, own.report.0, relay, now);
                self.children.push(c);
                listen::close(conn);
                None
            }
            Err(e) => {
                crate::error!("cannot fork a child: {e}; dropping the connection");
                own.close();
                listen::close(conn);
                None
            }
        }
    }

    /// In a new child: drops the parent's machinery (the wake pipe, every
    /// sibling's pidfd, pipes and status page, the header's memfd and write
    /// access to the header), before any user switch or tenant code, and
    /// builds its [`Member`]. In daemon mode its fd 1 and 2 become its own
    /// output pipe. The listener is kept only if KEEP_LISTEN (or AVOID_FORK)
    /// asks for it and free memory allows.
    fn become_child(&mut self, own: Own, parent: i32) -> Member {
        sys::close_wake_pipe(self.wake);
        for mut c in self.children.drain(..) {
            c.close_fds();
            // Dropping the record unmaps the sibling's page.
        }
        if let Err(e) = self.table.read_only_for_good() {
            // Never serve with a header this child could write.
            crate::error!("cannot make the group header read-only in a child: {e}");
            sys::exit_now(1);
        }
        sys::close(own.report.0);
        if let Some((r, w)) = own.relay {
            sys::close(r);
            // SAFETY: dup2 onto the standard descriptors, then close of the
            // pipe's original descriptor: from now on this process holds no
            // descriptor of the parent's log.
            let moved = unsafe { libc::dup2(w, 1) == 1 && libc::dup2(w, 2) == 2 };
            sys::close(w);
            if !moved {
                sys::exit_now(1);
            }
        }
        let policy = Policy::of(self.cfg);
        let header = self.table.header();
        let keep = policy.keep_listen > 0 && header.memory().enough(policy.threshold);
        let mut m = Member::new(
            own.page.keep(),
            own.report.1,
            self.tenants,
            header,
            parent,
            Some(self.listener),
            policy,
        );
        // SIGTERM once the parent dies: it finishes its request, then leaves.
        if !crate::status::die_with_parent(parent, libc::SIGTERM) {
            sys::STOP.store(true, Relaxed);
        }
        if !keep {
            m.close_listener();
        }
        m
    }

    /// gc.freeze before the first fork, so children's collections do not
    /// write to (and so copy) pages holding the parent's objects.
    fn freeze_heap_once(&mut self) {
        if std::mem::replace(&mut self.frozen, true) {
            return;
        }
        match wsgi::gc_freeze() {
            Some(n) => crate::info!("gc.freeze: {n} objects moved to the permanent generation"),
            None => crate::info!("gc.freeze is not available in this Python"),
        }
        wsgi::immortal::after_freeze(self.cfg.immortalize);
    }

    /// Reaps every exited child of the parent's own record (waitpid on each
    /// pid, never -1: the preloaded application's own subprocesses are its
    /// business), dropping its status page and pipes and logging abnormal
    /// ends.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.children.len() {
            let Some(how) = reap_pid(self.children[i].pid) else {
                i += 1;
                continue;
            };
            let now = sys::now_ms();
            // Its hints one last time (it may have started after the last tick).
            look(&mut self.children[i], now);
            let mut c = self.children.swap_remove(i);
            if let Some(r) = c.relay.take() {
                r.finish(c.pid, c.uid);
            }
            c.close_fds();
            if self.children.is_empty() {
                self.childless_since_ms = now;
            }
            match how {
                ChildExit::Code(0) => {}
                ChildExit::Code(code) => crate::warn!("child {} exited with status {code}", c.pid),
                ChildExit::Signal(s) => crate::warn!("child {} was killed by signal {s}", c.pid),
            }
            self.crash_loop(&c, how, now);
            // A child gone: room in its tenant's share.
            self.judge();
        }
    }

    /// Crash-loop back-off: children that die abnormally before they start
    /// serving delay the next fork, doubling from 100 ms to 8 s; a child that
    /// starts serving ends the streak. Logged once per interval.
    fn crash_loop(&mut self, c: &Child, how: ChildExit, now: u64) {
        if c.started {
            self.crashes_in_a_row = 0;
            return;
        }
        if how == ChildExit::Code(0) {
            return;
        }
        self.crashes_in_a_row = self.crashes_in_a_row.saturating_add(1);
        let (first, most) = CRASH_BACKOFF_MS;
        let delay = first
            .saturating_mul(1 << (self.crashes_in_a_row - 1).min(16))
            .min(most);
        self.fork_paused_until = now + delay;
        if let Some(suppressed) = self.crash_log.allow(now) {
            crate::error!(
                "children die before serving ({} in a row, {suppressed} unreported); \
                 forking again in {delay} ms",
                self.crashes_in_a_row
            );
        }
    }

    /// Logs the child table (on SIGUSR2): counts by what children say, then
    /// each child as pid:state:requests the parent has seen begin, with the
    /// parent-measured time of a busy child's request.
    fn log_status(&self) {
        use std::fmt::Write;
        let now = sys::now_ms();
        let mut list = String::new();
        for c in &self.children {
            let name = c.said.map_or("?", State::name);
            let _ = write!(list, " {}:{}:{}", c.pid, name, c.counted);
            if let Some(uid) = c.uid {
                let _ = write!(list, ":uid={uid}");
            }
            if c.said == Some(State::Busy) {
                let _ = write!(list, ":{}ms", now.saturating_sub(c.progress_ms));
            }
            if let Some(r) = c.retire {
                let _ = write!(list, ":retiring({})", r.reason.text());
            }
        }
        let m = self.table.header().memory();
        crate::info!(
            "status: {} children (busy {}, idle {}, accepting {}), limit {}+{}, \
             free memory {} MiB;{}",
            self.children.len(),
            self.count(State::Busy),
            self.count(State::Idle),
            self.count(State::Accepting),
            self.cfg.children,
            self.cfg.extra_children,
            m.available >> 20,
            list
        );
    }

    /// Stops the group: no more accepting, SIGTERM to every child (each
    /// finishes its request in flight, then exits), a bounded wait, SIGKILL
    /// for the rest. The parent leaves last.
    fn shutdown(&mut self, why: Exit) -> Exit {
        crate::info!(
            "stopping the process group ({why}); {} children",
            self.children.len()
        );
        listen::close(self.listener);
        let grace = self.cfg.max_process_time.min(STOP_GRACE_MAX_SECS) * 1000;
        let now = sys::now_ms();
        for i in 0..self.children.len() {
            self.retire(i, Reason::Stopping, now, grace, Some(libc::SIGTERM));
        }
        let deadline = now + grace;
        while !self.children.is_empty() && sys::now_ms() < deadline {
            let _ = self.wait(false, 100);
            self.reap();
        }
        if !self.children.is_empty() {
            crate::warn!(
                "{} children still running after {} s; killing them",
                self.children.len(),
                grace / 1000
            );
            self.escalate(sys::now_ms().max(deadline));
            let deadline = sys::now_ms() + 5000;
            while !self.children.is_empty() && sys::now_ms() < deadline {
                let _ = self.wait(false, 20);
                self.reap();
            }
        }
        sys::close_wake_pipe(self.wake);
        why
    }
}

/// Reads child `c`'s hints into its record, timing them with the parent's clock.
/// "Started" and the uid come from the report pipe, never from the slot.
fn look(c: &mut Child, now: u64) {
    c.read_report();
    let s = c.page.slot();
    let said = State::from_u32(s.state.load(Relaxed));
    let requests = s.requests.load(Relaxed);
    if requests != c.seen_requests {
        // A jump counts as what it claims (saturating), a step back as one.
        let step = requests.checked_sub(c.seen_requests).unwrap_or(1).max(1);
        c.counted = c.counted.saturating_add(step);
        c.seen_requests = requests;
        c.progress_ms = now;
        c.active_ms = now;
        if matches!(
            c.retire,
            Some(Retire {
                reason: Reason::Surplus | Reason::Stale,
                killed: false,
                ..
            })
        ) {
            // It took a request after all: the idle-based request lapses.
            c.retire = None;
            s.exit.store(0, Relaxed);
        }
    }
    if said == Some(State::Busy) {
        c.active_ms = now;
    }
    c.said = said;
}

/// Sends `sig` to child `c`: through its pidfd where there is one, else by
/// its pid, which is safe because the record exists only until the parent
/// reaps it (and a pid from fork is always > 0).
fn signal(c: &Child, sig: libc::c_int) {
    if let Some(fd) = c.pidfd {
        // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            return;
        }
    }
    if c.pid > 0 {
        // ESRCH: it already exited; the reaper frees its record.
        let _ = sys::kill(c.pid, sig);
    }
}

/// A pidfd for our child `pid` (not yet reaped, so it names that child), or
/// `None` on kernels without pidfd_open (before 5.3) or without descriptors.
fn pidfd_open(pid: i32) -> Option<RawFd> {
    // SAFETY: pidfd_open with integer arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    let fd = fd as RawFd;
    // SAFETY: fcntl on a descriptor we own: close-on-exec, so an
    // application's exec in the parent does not carry it along.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(fd)
}

/// Reaps child `pid` if it has exited (never blocks).
fn reap_pid(pid: i32) -> Option<ChildExit> {
    let mut status = 0;
    loop {
        // SAFETY: status is a live local; pid > 0 names one child of ours.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFSIGNALED(status) {
                ChildExit::Signal(libc::WTERMSIG(status))
            } else {
                ChildExit::Code(libc::WEXITSTATUS(status))
            });
        }
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Logs why the parent stopped.
pub fn log_exit(why: &Exit) {
    match why {
        Exit::Failed(e) => crate::error!("{e}"),
        other => crate::info!("process group stopped: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_pipe_gives_started_then_the_uid_then_closes() {
        let (r, w) = pipe().unwrap();
        let mut c = Child::new(1, None, StatusPage::new().unwrap(), r, None, 0);
        c.read_report();
        assert!(!c.started && c.report.is_some());
        sys::write_all_fd(w, b"N");
        sys::write_all_fd(w, &[b'U', 0x39, 0x30, 0, 0]);
        c.read_report();
        assert!(c.started);
        assert_eq!(c.uid, Some(u32::from_ne_bytes([0x39, 0x30, 0, 0])));
        sys::close(w);
        c.read_report();
        assert!(c.report.is_none());
    }
}
