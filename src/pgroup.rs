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
//! Parent and children share a child table: an anonymous shared mapping of
//! fixed 64-byte slots of atomics (so no locks, and no slot shares a cache
//! line). A child writes its own slot's state, counters and times; the parent
//! writes pids and exit requests, and frees slots when it reaps. Times are
//! CLOCK_MONOTONIC milliseconds, which every process on the machine shares.

use crate::config::Config;
use crate::listen;
use crate::sys::{self, ChildExit, MemProbe, Memory, STOP, STOP_SIGNAL};
use crate::wsgi;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Milliseconds between two runs of the policies.
const TICK_MS: u64 = 1000;
/// SIGTERMs a runaway child gets (one per tick) before SIGKILL.
const RUNAWAY_SIGTERMS: u32 = 5;
/// How long the parent leaves a waiting connection to children blocked in
/// accept before it forks anyway (a child may be on its way out), in 1 ms steps.
const DEFER_TO_ACCEPTING_MS: u32 = 50;
/// Longest wait, in seconds, for in-flight requests when the group stops
/// (never more than LSAPI_MAX_PROCESS_TIME); the rest are killed.
const STOP_GRACE_MAX_SECS: u64 = 30;

/// What a child is doing, as recorded in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No child in this slot.
    Free = 0,
    /// Connected, between requests.
    Idle = 1,
    /// Waiting in accept on the shared listener.
    Accepting = 2,
    /// Serving a request.
    Busy = 3,
}

impl State {
    fn from_u32(v: u32) -> State {
        match v {
            1 => State::Idle,
            2 => State::Accepting,
            3 => State::Busy,
            _ => State::Free,
        }
    }

    fn name(self) -> &'static str {
        match self {
            State::Free => "free",
            State::Idle => "idle",
            State::Accepting => "accepting",
            State::Busy => "busy",
        }
    }
}

/// One child's entry in the shared table. All zeroes is a free slot.
#[repr(C, align(64))]
pub struct Slot {
    /// The child's pid; 0 when free.
    pid: AtomicI32,
    /// A [`State`].
    state: AtomicU32,
    /// Exit requests and runaway signals from the parent since the child's
    /// current request began (lsapilib's m_iKillSent).
    kill_sent: AtomicU32,
    /// Requests the child has begun.
    requests: AtomicU64,
    /// When the current (or last) request began.
    req_start_ms: AtomicU64,
    /// When the child last finished a request or began waiting.
    last_active_ms: AtomicU64,
}

/// Group-wide counters, kept in step with the slots' states by
/// [`Table::set_state`] so a child reads them without scanning the table.
#[repr(C, align(64))]
struct Header {
    /// Children in [`State::Busy`].
    busy: AtomicU32,
    /// Children in [`State::Accepting`].
    accepting: AtomicU32,
    /// Free memory in bytes, written by the parent every tick.
    mem_available: AtomicU64,
    /// Total memory in bytes, written by the parent every tick.
    mem_total: AtomicU64,
}

/// The child table in its shared mapping (never unmapped: it lives as long
/// as the process and every child inherits it).
#[derive(Clone, Copy)]
pub struct Table {
    header: &'static Header,
    slots: &'static [Slot],
}

impl Table {
    /// Maps a zeroed table of `n` slots.
    fn new(n: usize) -> std::io::Result<Table> {
        let len = std::mem::size_of::<Header>() + n * std::mem::size_of::<Slot>();
        let base = sys::map_shared(len)?;
        // SAFETY: the mapping is page-aligned (≥ 64), zero-filled (a valid
        // value for every atomic field), large enough for the header and `n`
        // slots, and never unmapped, so 'static references are sound.
        unsafe {
            let header = &*(base as *const Header);
            let first = base.add(std::mem::size_of::<Header>()) as *const Slot;
            Ok(Table {
                header,
                slots: std::slice::from_raw_parts(first, n),
            })
        }
    }

    fn slot(&self, i: usize) -> &'static Slot {
        &self.slots[i]
    }

    fn state(&self, i: usize) -> State {
        State::from_u32(self.slots[i].state.load(Relaxed))
    }

    /// Moves slot `i` to `new`, keeping the busy/accepting counters exact: the
    /// swap makes whoever leaves a state (the child, or the parent reaping a
    /// child that died in it) the only one to decrement its counter.
    fn set_state(&self, i: usize, new: State) {
        let counter = |s: State| match s {
            State::Busy => Some(&self.header.busy),
            State::Accepting => Some(&self.header.accepting),
            _ => None,
        };
        if let Some(c) = counter(new) {
            c.fetch_add(1, Relaxed);
        }
        let old = State::from_u32(self.slots[i].state.swap(new as u32, Relaxed));
        if let Some(c) = counter(old) {
            // Saturating: a child killed between the add above and its swap
            // must not wrap the counter.
            let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        }
    }

    fn busy(&self) -> u32 {
        self.header.busy.load(Relaxed)
    }

    fn accepting(&self) -> u32 {
        self.header.accepting.load(Relaxed)
    }

    fn memory(&self) -> Memory {
        Memory {
            total: self.header.mem_total.load(Relaxed),
            available: self.header.mem_available.load(Relaxed),
        }
    }

    fn set_memory(&self, m: Memory) {
        self.header.mem_total.store(m.total, Relaxed);
        self.header.mem_available.store(m.available, Relaxed);
    }

    /// Indexes of slots holding a child.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&i| self.slots[i].pid.load(Relaxed) != 0)
    }
}

/// A child's link to its group: its slot, the shared listener while it keeps
/// it, and the policies it applies to itself.
pub struct Member {
    table: Table,
    slot: usize,
    /// The group parent's pid: the child exits once it is gone.
    pub parent: i32,
    /// The shared listener, while this child still takes connections.
    listener: Option<RawFd>,
    /// The `\0PID` notice is still to be sent on the connection this child
    /// was forked for.
    pub notice_pending: bool,
    keep_listen: u8,
    threshold: u64,
    /// LSAPI_MAX_BUSY_WORKER (None: never hand connections back).
    max_busy: Option<u32>,
}

impl Member {
    /// Records that a request began: Busy, counted, timed, and any earlier
    /// exit request forgotten (it was meant for an idle child).
    pub fn request_started(&self, now_ms: u64) {
        let s = self.table.slot(self.slot);
        s.kill_sent.store(0, Relaxed);
        s.requests.fetch_add(1, Relaxed);
        s.req_start_ms.store(now_ms, Relaxed);
        self.table.set_state(self.slot, State::Busy);
    }

    /// Records that the request ended: Idle again.
    pub fn request_finished(&self, now_ms: u64) {
        self.table
            .slot(self.slot)
            .last_active_ms
            .store(now_ms, Relaxed);
        self.table.set_state(self.slot, State::Idle);
    }

    /// Records what the child waits on: its connection (Idle) or the shared
    /// listener (Accepting).
    pub fn waiting(&self, on_listener: bool) {
        let state = if on_listener {
            State::Accepting
        } else {
            State::Idle
        };
        if self.table.state(self.slot) != state {
            self.table.set_state(self.slot, state);
        }
    }

    /// Whether the parent asked this child to exit (it has surplus idle children).
    pub fn exit_requested(&self) -> bool {
        self.table.slot(self.slot).kill_sent.load(Relaxed) > 0
    }

    /// LSAPI_MAX_BUSY_WORKER: whether so many children are busy that this
    /// one, having finished a request, should hand its connection back.
    pub fn too_many_busy(&self) -> bool {
        self.max_busy.is_some_and(|n| self.table.busy() >= n)
    }

    /// The shared listener, if this child still takes connections.
    pub fn listener(&self) -> Option<RawFd> {
        self.listener
    }

    /// LSAPI_KEEP_LISTEN and LSAPI_AVOID_FORK: whether a child that has
    /// waited `waited_s` seconds on the listener keeps waiting — never with 0;
    /// with 1 for 10 s plus 10 s per busy child; with 2 until idle; and only
    /// while free memory is above the threshold (or a tenth of the total).
    pub fn keep_listening(&self, waited_s: u64) -> bool {
        if !self.table.memory().enough(self.threshold) {
            return false;
        }
        match self.keep_listen {
            0 => false,
            1 => waited_s < 10 + 10 * u64::from(self.table.busy()),
            _ => true,
        }
    }

    /// Whether free memory is what made [`Member::keep_listening`] say no.
    pub fn memory_low(&self) -> bool {
        !self.table.memory().enough(self.threshold)
    }

    /// Stops taking connections: closes this child's copy of the listener
    /// (and stops counting as accepting, so the parent forks again at once).
    pub fn close_listener(&mut self) {
        if let Some(fd) = self.listener.take() {
            listen::close(fd);
        }
        if self.table.state(self.slot) == State::Accepting {
            self.table.set_state(self.slot, State::Idle);
        }
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
/// is the pid to watch (None with LSAPI_PPID_NO_CHECK). Returns in the
/// parent after every child is gone, and in each new child right after fork.
pub fn run(cfg: &Config, listener: RawFd, starter: Option<i32>) -> Role {
    let setup = || -> std::io::Result<Parent<'_>> {
        sys::set_nonblocking(listener)?;
        let wake = sys::open_wake_pipe()?;
        Ok(Parent {
            cfg,
            listener,
            table: Table::new(cfg.child_limit() as usize)?,
            wake,
            starter,
            probe: MemProbe::new(),
            live: 0,
            childless_since_ms: sys::now_ms(),
            saturated: false,
            frozen: false,
        })
    };
    match setup() {
        Ok(mut p) => p.run(),
        Err(e) => Role::Parent(Exit::Failed(format!(
            "cannot set up the process group: {e}"
        ))),
    }
}

/// The supervising parent.
struct Parent<'a> {
    cfg: &'a Config,
    listener: RawFd,
    table: Table,
    /// Read end of the self-pipe the signal handlers write to.
    wake: RawFd,
    starter: Option<i32>,
    probe: MemProbe,
    /// Children forked and not yet reaped.
    live: u32,
    /// When the group last had no children (meaningful while `live == 0`).
    childless_since_ms: u64,
    /// The child limit was reached and logged; cleared when there is room.
    saturated: bool,
    /// gc.freeze has run.
    frozen: bool,
}

impl Parent<'_> {
    fn run(&mut self) -> Role {
        crate::info!(
            "process group: up to {} children (+{} extra)",
            self.cfg.children,
            self.cfg.extra_children
        );
        self.update_free_memory();
        let mut next_tick = sys::now_ms() + TICK_MS;
        // Milliseconds a waiting connection has been left to accepting children.
        let mut deferred = 0;
        loop {
            if STOP.load(Relaxed) {
                return Role::Parent(self.shutdown(Exit::Signal(STOP_SIGNAL.load(Relaxed))));
            }
            self.reap();
            if sys::STATUS.swap(false, Relaxed) {
                self.log_status();
            }
            let now = sys::now_ms();
            if now >= next_tick {
                next_tick = now + TICK_MS;
                if let Some(exit) = self.tick(now) {
                    return Role::Parent(self.shutdown(exit));
                }
            }
            let room = self.has_room();
            let ready = match (room, deferred > 0) {
                (false, _) => self.wait(false, next_tick - now).map(|_| false),
                (true, false) => self.wait(true, next_tick - now),
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
                Err(e) => {
                    crate::error!("accept failed: {e}");
                    let _ = self.wait(false, 100);
                }
            }
        }
    }

    /// The once-a-second checks, in order; `Some` when the group must stop.
    fn tick(&mut self, now: u64) -> Option<Exit> {
        if self.starter_gone() {
            return Some(Exit::Orphaned);
        }
        self.update_free_memory();
        self.kill_runaways(now);
        self.retire_idle_children(now);
        self.group_idle_too_long(now).map(Exit::GroupIdle)
    }

    /// Parent-pid watching: the process that started the group is gone
    /// (never with LSAPI_PPID_NO_CHECK).
    fn starter_gone(&self) -> bool {
        self.starter.is_some_and(|p| sys::getppid() != p)
    }

    /// Publishes free memory in the table for the children's LSAPI_AVOID_FORK
    /// and LSAPI_KEEP_LISTEN decisions.
    fn update_free_memory(&self) {
        self.table.set_memory(self.probe.read());
    }

    /// LSAPI_MAX_PROCESS_TIME: a request running longer gets SIGTERM on each
    /// tick, then SIGKILL once it has had RUNAWAY_SIGTERMS of them.
    fn kill_runaways(&self, now: u64) {
        let limit_ms = self.cfg.max_process_time.saturating_mul(1000);
        for i in self.table.live() {
            let s = self.table.slot(i);
            let took = now.saturating_sub(s.req_start_ms.load(Relaxed));
            if self.table.state(i) != State::Busy || took <= limit_ms {
                continue;
            }
            let pid = s.pid.load(Relaxed);
            let sent = s.kill_sent.fetch_add(1, Relaxed);
            let sig = if sent >= RUNAWAY_SIGTERMS {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            };
            if sent == 0 || sig == libc::SIGKILL {
                crate::warn!(
                    "killing runaway child {pid} with {}: its request has run for {} s \
                     (LSAPI_MAX_PROCESS_TIME={})",
                    if sig == libc::SIGKILL {
                        "SIGKILL"
                    } else {
                        "SIGTERM"
                    },
                    took / 1000,
                    self.cfg.max_process_time
                );
            }
            // ESRCH: it already exited; the reaper frees the slot.
            let _ = sys::kill(pid, sig);
        }
    }

    /// LSAPI_MAX_IDLE_CHILDREN, LSAPI_EXTRA_CHILDREN and LSAPI_MAX_IDLE: asks
    /// idle children to exit while more are idle than allowed, while the
    /// group runs above LSAPI_CHILDREN, or when one has idled 5 s past
    /// LSAPI_MAX_IDLE (it normally leaves by itself first). A child acts on
    /// the request at its next tick, once it has served a request.
    fn retire_idle_children(&self, now: u64) {
        let (mut idle, mut leaving) = (0u32, 0u32);
        let stale_ms = (self.cfg.max_idle > 0).then(|| (self.cfg.max_idle + 5) * 1000);
        for i in self.table.live() {
            if self.table.state(i) == State::Busy {
                continue;
            }
            let s = self.table.slot(i);
            if s.kill_sent.load(Relaxed) > 0 {
                leaving += 1;
                continue;
            }
            let surplus =
                self.live - leaving > self.cfg.children || idle >= self.cfg.max_idle_children;
            let stale =
                stale_ms.is_some_and(|ms| now.saturating_sub(s.last_active_ms.load(Relaxed)) > ms);
            if surplus || stale {
                s.kill_sent.fetch_add(1, Relaxed);
                leaving += 1;
            } else {
                idle += 1;
            }
        }
    }

    /// LSAPI_PGRP_MAX_IDLE: the limit, once the group has been without
    /// children that many seconds.
    fn group_idle_too_long(&mut self, now: u64) -> Option<u64> {
        let max = self.cfg.pgrp_max_idle?;
        if self.live > 0 {
            self.childless_since_ms = now;
            return None;
        }
        (now.saturating_sub(self.childless_since_ms) >= max.saturating_mul(1000)).then_some(max)
    }

    /// LSAPI_CHILDREN + LSAPI_EXTRA_CHILDREN: whether another child may be
    /// forked. Reaching the limit is logged once; connections then wait in
    /// the listen backlog until a child exits.
    fn has_room(&mut self) -> bool {
        let room = self.live < self.cfg.child_limit();
        if !room && !self.saturated {
            crate::warn!(
                "reached the limit of {} children (LSAPI_CHILDREN={}, LSAPI_EXTRA_CHILDREN={}), \
                 {} busy; new connections wait",
                self.live,
                self.cfg.children,
                self.cfg.extra_children,
                self.table.busy()
            );
        }
        self.saturated = !room;
        room
    }

    /// Whether children are waiting in accept on the shared listener: they
    /// take new connections, so the parent does not fork for them.
    fn children_accepting(&self) -> bool {
        self.live > 0 && self.table.accepting() > 0
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
        let Some(slot) =
            (0..self.table.slots.len()).find(|&i| self.table.slot(i).pid.load(Relaxed) == 0)
        else {
            crate::error!("no free slot in the child table; dropping a connection");
            listen::close(conn);
            return None;
        };
        self.freeze_heap_once();
        let parent = sys::getpid();
        let now = sys::now_ms();
        let s = self.table.slot(slot);
        s.kill_sent.store(0, Relaxed);
        s.requests.store(0, Relaxed);
        s.req_start_ms.store(now, Relaxed);
        s.last_active_ms.store(now, Relaxed);
        self.table.set_state(slot, State::Idle);
        match wsgi::fork() {
            Ok(0) => Some(Role::Child(self.become_child(slot, parent), conn)),
            Ok(pid) => {
                s.pid.store(pid, Relaxed);
                self.live += 1;
                listen::close(conn);
                None
            }
            Err(e) => {
                crate::error!("cannot fork a child: {e}; dropping the connection");
                self.table.set_state(slot, State::Free);
                listen::close(conn);
                None
            }
        }
    }

    /// In a new child: drops the parent's machinery and builds its [`Member`].
    /// The listener is kept only if KEEP_LISTEN (or AVOID_FORK) asks for it
    /// and free memory allows.
    fn become_child(&self, slot: usize, parent: i32) -> Member {
        sys::close_wake_pipe(self.wake);
        let pid = sys::getpid();
        self.table.slot(slot).pid.store(pid, Relaxed);
        let threshold = self.cfg.listen_threshold();
        let keep = self.cfg.keep_listen > 0 && self.table.memory().enough(threshold);
        let mut m = Member {
            table: self.table,
            slot,
            parent,
            listener: Some(self.listener),
            notice_pending: true,
            keep_listen: self.cfg.keep_listen,
            threshold,
            max_busy: self.cfg.max_busy_worker,
        };
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
    }

    /// Reaps every exited child (no zombies, ever), freeing its slot and
    /// logging abnormal ends.
    fn reap(&mut self) {
        while let Some((pid, how)) = sys::reap_child() {
            if let Some(i) =
                (0..self.table.slots.len()).find(|&i| self.table.slot(i).pid.load(Relaxed) == pid)
            {
                self.table.set_state(i, State::Free);
                self.table.slot(i).pid.store(0, Relaxed);
                self.live -= 1;
                if self.live == 0 {
                    self.childless_since_ms = sys::now_ms();
                }
            }
            match how {
                ChildExit::Code(0) => {}
                ChildExit::Code(c) => crate::warn!("child {pid} exited with status {c}"),
                ChildExit::Signal(s) => crate::warn!("child {pid} was killed by signal {s}"),
            }
        }
    }

    /// Logs the child table (on SIGUSR2): counts by state, then each child.
    fn log_status(&self) {
        use std::fmt::Write;
        let now = sys::now_ms();
        let mut counts = [0u32; 4];
        let mut list = String::new();
        for i in self.table.live() {
            let s = self.table.slot(i);
            let state = self.table.state(i);
            counts[state as usize] += 1;
            let _ = write!(
                list,
                " {}:{}:{}",
                s.pid.load(Relaxed),
                state.name(),
                s.requests.load(Relaxed)
            );
            if state == State::Busy {
                let _ = write!(
                    list,
                    ":{}ms",
                    now.saturating_sub(s.req_start_ms.load(Relaxed))
                );
            }
        }
        let m = self.table.memory();
        crate::info!(
            "status: {} children (busy {}, idle {}, accepting {}), limit {}+{}, \
             free memory {} MiB;{}",
            self.live,
            counts[State::Busy as usize],
            counts[State::Idle as usize],
            counts[State::Accepting as usize],
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
        crate::info!("stopping the process group ({why}); {} children", self.live);
        listen::close(self.listener);
        for i in self.table.live() {
            let _ = sys::kill(self.table.slot(i).pid.load(Relaxed), libc::SIGTERM);
        }
        let grace = self.cfg.max_process_time.min(STOP_GRACE_MAX_SECS) * 1000;
        let deadline = sys::now_ms() + grace;
        while self.live > 0 && sys::now_ms() < deadline {
            let _ = self.wait(false, 100);
            self.reap();
        }
        if self.live > 0 {
            crate::warn!(
                "{} children still busy after {} s; killing them",
                self.live,
                grace / 1000
            );
            for i in self.table.live() {
                let _ = sys::kill(self.table.slot(i).pid.load(Relaxed), libc::SIGKILL);
            }
            let deadline = sys::now_ms() + 5000;
            while self.live > 0 && sys::now_ms() < deadline {
                let _ = self.wait(false, 20);
                self.reap();
            }
        }
        sys::close_wake_pipe(self.wake);
        why
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
    fn slots_are_one_cache_line_and_zero_is_free() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        assert_eq!(std::mem::size_of::<Header>(), 64);
        let t = Table::new(3).unwrap();
        assert_eq!(t.live().count(), 0);
        assert!((0..3).all(|i| t.state(i) == State::Free));
    }

    #[test]
    fn counters_follow_states_exactly_once() {
        let t = Table::new(2).unwrap();
        t.set_state(0, State::Idle);
        t.set_state(0, State::Busy);
        t.set_state(1, State::Accepting);
        assert_eq!((t.busy(), t.accepting()), (1, 1));
        t.set_state(1, State::Busy);
        assert_eq!((t.busy(), t.accepting()), (2, 0));
        t.set_state(0, State::Idle);
        t.set_state(1, State::Free); // reaped while busy
        assert_eq!((t.busy(), t.accepting()), (0, 0));
        t.set_state(1, State::Free);
        assert_eq!((t.busy(), t.accepting()), (0, 0));
    }

    #[test]
    fn children_see_the_parents_writes() {
        let t = Table::new(1).unwrap();
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            t.slot(0).requests.store(42, Relaxed);
            t.set_state(0, State::Busy);
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(t.slot(0).requests.load(Relaxed), 42);
        assert_eq!(t.busy(), 1);
    }

    #[test]
    fn keep_listen_policy() {
        let t = Table::new(1).unwrap();
        t.set_memory(Memory {
            total: 100 << 30,
            available: 50 << 30,
        });
        let m = |keep_listen, threshold| Member {
            table: t,
            slot: 0,
            parent: 1,
            listener: None,
            notice_pending: false,
            keep_listen,
            threshold,
            max_busy: Some(1),
        };
        assert!(!m(0, 1 << 30).keep_listening(0));
        assert!(m(1, 1 << 30).keep_listening(9));
        assert!(!m(1, 1 << 30).keep_listening(10));
        assert!(m(2, 1 << 30).keep_listening(100_000));
        // Below the threshold and below a tenth of the total: stop taking connections.
        t.set_memory(Memory {
            total: 100 << 30,
            available: 5 << 30,
        });
        assert!(!m(2, 6 << 30).keep_listening(0));
        assert!(m(2, 4 << 30).keep_listening(0));
    }
}
