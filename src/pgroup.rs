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
//! Times are the parent's CLOCK_MONOTONIC milliseconds.

use crate::config::Config;
use crate::listen;
use crate::status::{Header, Member, Slot, State, EXIT_GRACE_SECS, PAGE};
use crate::sys::{self, ChildExit, MemProbe, STOP, STOP_SIGNAL};
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
/// Most log lines of one kind (accept errors, crash loop) per this interval.
const LOG_INTERVAL_MS: u64 = 10_000;
/// Pause of the accepting side after EMFILE and the like, in milliseconds.
const ACCEPT_PAUSE_MS: u64 = 500;
/// Fork back-off after children that die before serving: first and longest
/// delay, in milliseconds (doubling in between).
const CRASH_BACKOFF_MS: (u64, u64) = (100, 8000);

/// The shared status in its mapping: the header page, then one page per slot
/// (never unmapped by the parent; every child inherits it and unmaps the
/// slots that are not its own).
///
/// The header (written by the parent only) is a memfd page mapped over page 0
/// of the anonymous table; a child replaces its inherited writable view with
/// a read-only one it cannot make writable again (see
/// [`Table::read_only_header`]), so in suEXEC daemon mode one tenant cannot
/// forge the busy count or memory figures every other tenant's children act
/// on.
struct Table {
    base: *mut u8,
    n: usize,
    /// The header's memfd: close-on-exec, held by the parent only.
    header_fd: RawFd,
    /// `/proc/self/fd/N` for `header_fd`, to reopen it read-only.
    header_path: std::ffi::CString,
}

/// The header memfd's name: /proc/PID/maps shows the page as
/// `/memfd:lswsgi-group-header (deleted)`.
const HEADER_NAME: &std::ffi::CStr = c"lswsgi-group-header";

impl Table {
    /// Maps a zeroed table of `n` slots, the header page backed by a sealed
    /// memfd; fails if a child could not be given a read-only header.
    fn new(n: usize) -> std::io::Result<Table> {
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: memfd_create with a NUL-terminated name; checked. Never
        // executable (vm.memfd_noexec=2 requires saying so); kernels before
        // 6.3 do not know the flag (EINVAL) and get the plain call.
        let fd = sys::cvt(unsafe {
            match libc::memfd_create(HEADER_NAME.as_ptr(), flags | libc::MFD_NOEXEC_SEAL) {
                -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) => {
                    libc::memfd_create(HEADER_NAME.as_ptr(), flags)
                }
                fd => fd,
            }
        })?;
        let base = sys::map_shared((n + 1) * PAGE).inspect_err(|_| sys::close(fd))?;
        let t = Table {
            base,
            n,
            header_fd: fd,
            header_path: std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap(),
        };
        t.map_header().inspect_err(|_| {
            // SAFETY: our own fresh mapping, referenced by nothing.
            unsafe { libc::munmap(base.cast(), (n + 1) * PAGE) };
            sys::close(fd);
        })?;
        Ok(t)
    }

    /// Maps the memfd read-write over page 0, seals it and tries once what
    /// every child will do: a group whose children could write the header
    /// does not start.
    fn map_header(&self) -> std::io::Result<()> {
        let fd = self.header_fd;
        // SAFETY: ftruncate on the memfd we own; page 0 of our own fresh
        // mapping, referenced by nothing yet, is replaced (MAP_FIXED) by a
        // shared read-write view of it, of the same size; checked.
        unsafe {
            sys::cvt(libc::ftruncate(fd, PAGE as libc::off_t))?;
            let p = libc::mmap(
                self.base.cast(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Its size stays (no SIGBUS), and no new writable mapping or write(2)
        // (F_SEAL_FUTURE_WRITE, Linux >= 5.1) while the parent's view stays
        // writable. Older kernels get the size seals only.
        let size = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl with integer arguments on the memfd we own.
        unsafe {
            if libc::fcntl(fd, libc::F_ADD_SEALS, size | libc::F_SEAL_FUTURE_WRITE) != 0 {
                sys::cvt(libc::fcntl(fd, libc::F_ADD_SEALS, size))?;
            }
        }
        let (probe, via_proc) = self.read_only_header(std::ptr::null_mut()).map_err(|e| {
            std::io::Error::other(format!(
                "children cannot be given a read-only group header: {e}"
            ))
        })?;
        // SAFETY: the probe page is ours and referenced by nothing.
        unsafe { libc::munmap(probe.cast(), PAGE) };
        if !via_proc {
            crate::info!("no /proc/self/fd: children map the sealed group header read-only");
        }
        Ok(())
    }

    fn header(&self) -> &'static Header {
        // SAFETY: page 0 of a live, zero-filled mapping never unmapped in the
        // parent (in a child, replaced in place by a read-only view of the
        // same memfd, which only loads); zeroes are valid atomics; page
        // alignment ≥ 64.
        unsafe { &*(self.base as *const Header) }
    }

    fn slot(&self, i: usize) -> &'static Slot {
        assert!(i < self.n);
        // SAFETY: page i+1 of the mapping, as for the header; only called in
        // the parent, or in a child for its own slot (which it keeps mapped).
        unsafe { &*(self.base.add((i + 1) * PAGE) as *const Slot) }
    }

    /// Maps the header read-only at `at` (replacing what is there; null:
    /// anywhere) so that this process cannot make it writable: from the memfd
    /// reopened O_RDONLY through /proc (a mapping of a file opened read-only
    /// never has VM_MAYWRITE), or, without /proc, from the memfd itself (which
    /// F_SEAL_FUTURE_WRITE leaves without VM_MAYWRITE). Checked: mprotect to
    /// writable must fail. Returns the page and whether /proc was used.
    fn read_only_header(&self, at: *mut u8) -> std::io::Result<(*mut u8, bool)> {
        // SAFETY: open with a NUL-terminated path; the result is checked.
        let ro = unsafe { libc::open(self.header_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        let fixed = if at.is_null() { 0 } else { libc::MAP_FIXED };
        // SAFETY: a one-page shared read-only mapping of the memfd; with
        // MAP_FIXED it replaces page 0 of the table, which then holds the
        // same memfd page, so references to the header stay valid (they
        // only load). Checked.
        let p = unsafe {
            libc::mmap(
                at.cast(),
                PAGE,
                libc::PROT_READ,
                libc::MAP_SHARED | fixed,
                if ro >= 0 { ro } else { self.header_fd },
                0,
            )
        };
        let mapped = std::io::Error::last_os_error();
        if ro >= 0 {
            sys::close(ro);
        }
        if p == libc::MAP_FAILED {
            return Err(mapped);
        }
        // SAFETY: mprotect on the page just mapped; expected to fail.
        if unsafe { libc::mprotect(p, PAGE, libc::PROT_READ | libc::PROT_WRITE) } == 0 {
            // SAFETY: the page just mapped: a probe referenced by nothing,
            // or in a child the header, which exits on this error without
            // touching it again.
            unsafe { libc::munmap(p, PAGE) };
            return Err(std::io::Error::other("its view could be made writable"));
        }
        Ok((p.cast(), ro >= 0))
    }

    /// In a new child: unmaps every slot but `own`, so the child cannot
    /// write another child's hints, makes the header read-only for good and
    /// closes the memfd, so it holds nothing that maps the header writable.
    fn keep_only(&self, own: usize) -> std::io::Result<()> {
        // SAFETY: both ranges lie inside the mapping and hold no references
        // this process will use again (the parent's record is abandoned).
        unsafe {
            if own > 0 {
                libc::munmap(self.base.add(PAGE).cast(), own * PAGE);
            }
            let after = own + 1;
            if after < self.n {
                libc::munmap(
                    self.base.add((after + 1) * PAGE).cast(),
                    (self.n - after) * PAGE,
                );
            }
        }
        let r = self.read_only_header(self.base);
        sys::close(self.header_fd);
        r.map(|_| ())
    }
}

/// Why the parent is retiring a child, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Runaway,
    Stale,
    Surplus,
    TooManyRequests,
    NoNotice,
    Leaving,
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
    /// Index of the slot it was given.
    slot: usize,
    forked_ms: u64,
    /// The parent saw it start serving (a hint once seen, kept).
    started: bool,
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
/// is the pid to watch (None with LSAPI_PPID_NO_CHECK). Returns in the
/// parent after every child is gone, and in each new child right after fork.
pub fn run(cfg: &Config, listener: RawFd, starter: Option<i32>) -> Role {
    let setup = || -> std::io::Result<Parent<'_>> {
        sys::set_nonblocking(listener)?;
        let wake = sys::open_wake_pipe()?;
        let n = cfg.child_limit() as usize;
        Ok(Parent {
            cfg,
            listener,
            table: Table::new(n)?,
            used: vec![false; n],
            children: Vec::with_capacity(n),
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
        })
    };
    match setup() {
        Ok(mut p) => p.run(),
        Err(e) => Role::Parent(Exit::Failed(format!(
            "cannot set up the process group: {e}"
        ))),
    }
}

/// At most one log line per [`LOG_INTERVAL_MS`], counting the rest.
#[derive(Default)]
struct Throttle {
    last_ms: Option<u64>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn allow(&mut self, now: u64) -> Option<u64> {
        match self.last_ms {
            Some(t) if now.saturating_sub(t) < LOG_INTERVAL_MS => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_ms = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The supervising parent.
struct Parent<'a> {
    cfg: &'a Config,
    listener: RawFd,
    table: Table,
    /// Slots given to a child not yet reaped (the parent's own bookkeeping).
    used: Vec<bool>,
    /// Every child forked and not yet reaped.
    children: Vec<Child>,
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
}

impl Parent<'_> {
    fn run(&mut self) -> Role {
        crate::info!(
            "process group: up to {} children (+{} extra)",
            self.cfg.children,
            self.cfg.extra_children
        );
        self.publish(sys::now_ms());
        let mut next_tick = sys::now_ms() + TICK_MS;
        // Milliseconds a waiting connection has been left to accepting children.
        let mut deferred = 0;
        loop {
            if STOP.load(Relaxed) {
                return Role::Parent(self.shutdown(Exit::Signal(STOP_SIGNAL.load(Relaxed))));
            }
            self.reap();
            if sys::STATUS.swap(false, Relaxed) {
                self.observe(sys::now_ms());
                self.publish_busy();
                self.log_status();
            }
            let now = sys::now_ms();
            if now >= next_tick {
                next_tick = now + TICK_MS;
                if let Some(exit) = self.tick(now) {
                    return Role::Parent(self.shutdown(exit));
                }
            }
            let paused = self.accept_paused_until.max(self.fork_paused_until);
            let room = now >= paused && self.has_room();
            let until_tick = next_tick.saturating_sub(now);
            let ready = match (room, deferred > 0) {
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
            };
            match ready {
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
            match listen::accept(self.listener) {
                Ok(Some(conn)) => {
                    if let Some(child) = self.spawn(conn) {
                        return child;
                    }
                }
                Ok(None) => {}
                Err(e) => self.accept_failed(e),
            }
        }
    }

    /// The once-a-second checks, in order; `Some` when the group must stop.
    fn tick(&mut self, now: u64) -> Option<Exit> {
        if self.starter_gone() {
            return Some(Exit::Orphaned);
        }
        self.observe(now);
        self.kill_unstarted(now);
        self.kill_runaways(now);
        self.retire_stale_and_lying(now);
        self.retire_idle_children(now);
        self.escalate(now);
        self.publish(now);
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
            look(&self.table, c, now);
        }
    }

    /// Publishes free memory and the busy count in the header for the
    /// children's LSAPI_AVOID_FORK, LSAPI_KEEP_LISTEN and
    /// LSAPI_MAX_BUSY_WORKER decisions (the parent is its only writer).
    fn publish(&self, _now: u64) {
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
                self.table.slot(c.slot).exit.store(1, Relaxed);
                self.retire(i, Reason::Surplus, now, GRACE_MS, None);
                leaving += 1;
            } else {
                idle += 1;
            }
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
                    reason_of(r.reason),
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
    /// logged once; connections then wait in the listen backlog.
    fn has_room(&mut self) -> bool {
        let live = self.children.len() as u32;
        let room = live < self.cfg.child_limit();
        if !room && !self.saturated {
            crate::warn!(
                "reached the limit of {} children (LSAPI_CHILDREN={}, LSAPI_EXTRA_CHILDREN={}), \
                 {} busy; new connections wait",
                live,
                self.cfg.children,
                self.cfg.extra_children,
                self.count(State::Busy)
            );
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
                c.retire.is_none()
                    && self.table.slot(c.slot).state.load(Relaxed) == State::Accepting as u32
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

    /// Sleeps up to `timeout_ms` on the wake pipe and, if `listener`, the
    /// listener. `Ok(true)` when a connection is waiting.
    fn wait(&self, listener: bool, timeout_ms: u64) -> Result<bool, String> {
        let mut fds = [
            libc::pollfd {
                fd: self.wake,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.listener,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = if listener { 2 } else { 1 };
        let timeout = timeout_ms.min(i32::MAX as u64) as i32;
        wsgi::without_gil(|| sys::poll(&mut fds[..n], timeout))
            .map_err(|e| format!("poll failed: {e}"))?;
        if fds[0].revents != 0 {
            sys::drain(self.wake);
        }
        if fds[1].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err("the listening socket failed".into());
        }
        Ok(listener && fds[1].revents & libc::POLLIN != 0)
    }

    /// Whether a connection is still waiting on the listener (without waiting).
    fn pending(&self) -> bool {
        sys::poll_readable(self.listener, Some(std::time::Duration::ZERO)).unwrap_or(false)
    }

    /// Forks a child for connection `conn`. Returns the child's [`Role`] in
    /// the child; `None` in the parent.
    fn spawn(&mut self, conn: RawFd) -> Option<Role> {
        let Some(slot) = self.used.iter().position(|u| !u) else {
            crate::error!("no free slot in the child table; dropping a connection");
            listen::close(conn);
            return None;
        };
        self.freeze_heap_once();
        self.observe(sys::now_ms());
        self.publish_busy();
        let parent = sys::getpid();
        let s = self.table.slot(slot);
        // The child does not exist yet: the parent prepares the whole slot.
        s.state.store(State::Starting as u32, Relaxed);
        s.greeted.store(0, Relaxed);
        s.requests.store(0, Relaxed);
        s.exit.store(0, Relaxed);
        match wsgi::fork() {
            Ok(0) => Some(Role::Child(self.become_child(slot, parent), conn)),
            Ok(pid) => {
                let now = sys::now_ms();
                self.used[slot] = true;
                self.children.push(Child {
                    pid,
                    pidfd: pidfd_open(pid),
                    slot,
                    forked_ms: now,
                    started: false,
                    seen_requests: 0,
                    counted: 0,
                    progress_ms: now,
                    active_ms: now,
                    said: Some(State::Starting),
                    retire: None,
                });
                listen::close(conn);
                None
            }
            Err(e) => {
                crate::error!("cannot fork a child: {e}; dropping the connection");
                listen::close(conn);
                None
            }
        }
    }

    /// In a new child: drops the parent's machinery (the wake pipe, the
    /// pidfds, every slot but its own, the header's memfd and write access to
    /// the header), before any user switch or tenant code, and builds its
    /// [`Member`]. The listener is kept only if KEEP_LISTEN (or AVOID_FORK)
    /// asks for it and free memory allows.
    fn become_child(&self, slot: usize, parent: i32) -> Member {
        sys::close_wake_pipe(self.wake);
        for c in &self.children {
            if let Some(fd) = c.pidfd {
                sys::close(fd);
            }
        }
        if let Err(e) = self.table.keep_only(slot) {
            // Never serve with a header this child could write.
            crate::error!("cannot make the group header read-only in a child: {e}");
            sys::exit_now(1);
        }
        let threshold = self.cfg.listen_threshold();
        let header = self.table.header();
        let keep = self.cfg.keep_listen > 0 && header.memory().enough(threshold);
        let mut m = Member::new(
            self.table.slot(slot),
            header,
            parent,
            Some(self.listener),
            self.cfg.keep_listen,
            threshold,
            self.cfg.max_busy_worker,
        );
        if !die_with_parent_now(parent) {
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
    /// business), freeing its slot and logging abnormal ends.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.children.len() {
            let Some(how) = reap_pid(self.children[i].pid) else {
                i += 1;
                continue;
            };
            let now = sys::now_ms();
            self.observe_one(i, now);
            let c = self.children.swap_remove(i);
            if let Some(fd) = c.pidfd {
                sys::close(fd);
            }
            self.used[c.slot] = false;
            if self.children.is_empty() {
                self.childless_since_ms = now;
            }
            match how {
                ChildExit::Code(0) => {}
                ChildExit::Code(code) => crate::warn!("child {} exited with status {code}", c.pid),
                ChildExit::Signal(s) => crate::warn!("child {} was killed by signal {s}", c.pid),
            }
            self.crash_loop(&c, how, now);
        }
    }

    /// Reads child `i`'s hints one last time (it may have started after the
    /// last tick).
    fn observe_one(&mut self, i: usize, now: u64) {
        look(&self.table, &mut self.children[i], now);
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
            if c.said == Some(State::Busy) {
                let _ = write!(list, ":{}ms", now.saturating_sub(c.progress_ms));
            }
            if let Some(r) = c.retire {
                let _ = write!(list, ":retiring({})", reason_of(r.reason));
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
fn look(table: &Table, c: &mut Child, now: u64) {
    let s = table.slot(c.slot);
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
    let greeted = s.greeted.load(Relaxed) != 0;
    c.started |= greeted || requests != 0 || !matches!(said, Some(State::Starting));
    c.said = said;
}

fn reason_of(r: Reason) -> &'static str {
    r.text()
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

/// In a new child: SIGTERM once the parent dies (it finishes its request,
/// then leaves); false when the parent is already gone.
fn die_with_parent_now(parent: i32) -> bool {
    crate::status::die_with_parent(parent, libc::SIGTERM)
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
    fn slots_have_a_page_each_and_zero_is_starting() {
        let t = Table::new(3).unwrap();
        for i in 0..3 {
            assert_eq!(
                t.slot(i) as *const Slot as usize - t.header() as *const Header as usize,
                (i + 1) * PAGE
            );
            assert_eq!(t.slot(i).state.load(Relaxed), State::Starting as u32);
        }
    }

    #[test]
    fn children_see_the_parents_writes_and_only_their_own_slot() {
        let t = Table::new(3).unwrap();
        t.slot(1).exit.store(1, Relaxed);
        t.header().busy.store(7, Relaxed);
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = t.keep_only(1).is_ok() && t.slot(1).exit.load(Relaxed) == 1;
            t.slot(1).requests.store(42, Relaxed);
            // Another slot's page is gone: mincore reports ENOMEM for it.
            let mut v = 0u8;
            let gone = unsafe { libc::mincore(t.base.add(PAGE).cast(), PAGE, &mut v) } != 0
                && unsafe { libc::mincore(t.base.add(3 * PAGE).cast(), PAGE, &mut v) } != 0;
            // The header is the parent's page, read-only for good, and the
            // memfd behind it is closed.
            let header = t.header().busy.load(Relaxed) == 7
                && unsafe {
                    libc::mprotect(t.base.cast(), PAGE, libc::PROT_READ | libc::PROT_WRITE)
                } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES)
                && unsafe { libc::fcntl(t.header_fd, libc::F_GETFD) } < 0;
            unsafe { libc::_exit(if ok && gone && header { 0 } else { 1 }) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 0);
        assert_eq!(t.slot(1).requests.load(Relaxed), 42);
        // The parent's view stays writable under the seals.
        t.header().busy.store(8, Relaxed);
        assert_eq!(t.header().busy.load(Relaxed), 8);
    }

    #[test]
    fn without_proc_the_sealed_memfd_still_maps_only_read_only() {
        let mut t = Table::new(1).unwrap();
        t.header_path = c"/nonexistent/fd".into();
        let (p, via_proc) = t.read_only_header(std::ptr::null_mut()).unwrap();
        assert!(!via_proc);
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        assert_ne!(unsafe { libc::mprotect(p.cast(), PAGE, rw) }, 0);
        // Nor can a new writable mapping be made from the memfd itself.
        let w = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                rw,
                libc::MAP_SHARED,
                t.header_fd,
                0,
            )
        };
        assert_eq!(w, libc::MAP_FAILED);
        unsafe { libc::munmap(p.cast(), PAGE) };
    }

    #[test]
    fn throttle_allows_one_line_per_interval() {
        let mut t = Throttle::default();
        assert_eq!(t.allow(1000), Some(0));
        assert_eq!(t.allow(2000), None);
        assert_eq!(t.allow(3000), None);
        assert_eq!(t.allow(1000 + LOG_INTERVAL_MS), Some(2));
    }
}
