//! A ProcessGroup child's side of the group's shared status: its own slot,
//! which it writes as *hints* for the parent, and the group-wide figures the
//! parent publishes for it.
//!
//! Trust: everything here is written by a process that may run a hostile
//! tenant's code. The parent never takes a pid, a time or a count from it to
//! act on; it keeps its own record of the children it forked (see
//! `pgroup.rs`) and reads a slot only to learn what the child *says* it is
//! doing. A lie can only make the parent treat the liar worse.
//!
//! Layout: the group header is one page; each child's slot is a sealed page
//! of its own, created for its fork, never given to another child and
//! dropped by the parent at reap, so what a child (or a process that
//! outlives it) writes there can only mislead the parent about that child.
//! One writer per field: the child writes `state` and `requests` of its
//! slot; the parent writes `exit` and the header, which every child sees
//! through a read-only mapping it cannot make writable (see `pgroup.rs`), so
//! a tenant cannot forge the figures other tenants act on.
//!
//! What the parent does act on alone comes from the kernel (fork, wait
//! status, its own clock) or from the child's report channel (a socket
//! pair), which only the worker's own code holds, and only before any
//! application code runs: `N` once the `\0PID` notice went out; in suEXEC
//! daemon mode then `U` and the uid its first request was admitted for,
//! after which it waits for the parent's verdict on that tenant's share of
//! the group (`G`: serve, anything else: answer 508) and closes the channel.

use crate::listen;
use crate::sys::{self, Memory};
use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Bytes between two slots (and the header's size in the mapping): a page,
/// the unit munmap works in.
pub const PAGE: usize = 4096;

/// What a child says it is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Forked; not yet serving (the slot as the parent prepared it).
    Starting = 0,
    /// Connected, between requests.
    Idle = 1,
    /// Waiting in accept on the shared listener.
    Accepting = 2,
    /// Serving a request.
    Busy = 3,
    /// Done serving: on its way out (exit hooks, thread joins).
    Leaving = 4,
}

impl State {
    /// The state a slot's raw value names; `None` for a value no honest
    /// child writes.
    pub fn from_u32(v: u32) -> Option<State> {
        Some(match v {
            0 => State::Starting,
            1 => State::Idle,
            2 => State::Accepting,
            3 => State::Busy,
            4 => State::Leaving,
            _ => return None,
        })
    }

    /// Short name for the status log.
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Idle => "idle",
            State::Accepting => "accepting",
            State::Busy => "busy",
            State::Leaving => "leaving",
        }
    }
}

/// One child's slot (at the start of its own page). All zeroes: Starting.
#[repr(C, align(64))]
pub struct Slot {
    /// A [`State`] (child-written hint).
    pub state: AtomicU32,
    /// Requests begun (child-written hint; the parent watches it change).
    pub requests: AtomicU64,
    /// Parent-written: non-zero asks this child to leave once idle
    /// ([`EXIT_SURPLUS`] or [`EXIT_LEASE`], for its log).
    pub exit: AtomicU32,
}

/// Group-wide figures, written by the parent only (once a tick).
#[repr(C, align(64))]
pub struct Header {
    /// Children that say they are busy.
    pub busy: AtomicU32,
    /// Free memory in bytes.
    pub mem_available: AtomicU64,
    /// Total memory in bytes.
    pub mem_total: AtomicU64,
}

impl Header {
    /// Free and total memory as last published.
    pub fn memory(&self) -> Memory {
        Memory {
            total: self.mem_total.load(Relaxed),
            available: self.mem_available.load(Relaxed),
        }
    }
}

/// Makes the kernel send `sig` to this process when the process that forked
/// it dies, then closes the race with a parent that is already gone: returns
/// false when the parent is no longer `parent`. Re-armed after a user switch,
/// which clears it.
pub fn die_with_parent(parent: i32, sig: libc::c_int) -> bool {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    sys::getppid() == parent
}

/// A child's link to its group: its own slot, its report pipe, the header,
/// the shared listener while it keeps it, and the policies it applies to
/// itself.
pub struct Member {
    slot: &'static Slot,
    /// The report channel until it is done with; then -1.
    report: Cell<RawFd>,
    /// suEXEC daemon mode: the first admitted request reports its uid and
    /// waits for the parent's verdict.
    tenant: bool,
    header: &'static Header,
    /// The group parent's pid: the child exits once it is gone.
    pub parent: i32,
    /// The shared listener, while this child still takes connections.
    listener: Option<RawFd>,
    /// The `\0PID` notice is still to be sent on the connection this child
    /// was forked for.
    pub notice_pending: bool,
    keep_listen: u8,
    threshold: u64,
    max_busy: Option<u32>,
    /// The parent-death signal is to be armed again at the next request
    /// (a suEXEC user switch before the first one clears it).
    rearm: Cell<bool>,
}

impl Member {
    /// The link of a new child to `slot` and `header`, which must stay mapped
    /// for the life of the process, reporting on `report` (owned from now);
    /// `tenant`: in suEXEC daemon mode.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: &'static Slot,
        report: RawFd,
        tenant: bool,
        header: &'static Header,
        parent: i32,
        listener: Option<RawFd>,
        keep_listen: u8,
        threshold: u64,
        max_busy: Option<u32>,
    ) -> Member {
        Member {
            slot,
            report: Cell::new(report),
            tenant,
            header,
            parent,
            listener,
            notice_pending: true,
            keep_listen,
            threshold,
            max_busy,
            rearm: Cell::new(true),
        }
    }

    /// Reports that the `\0PID` notice went out: the child has started
    /// serving. Outside daemon mode that is all the parent needs.
    pub fn greeted(&self) {
        self.report(b"N");
        if !self.tenant {
            self.end_report();
        }
    }

    /// Daemon mode, once the first request is admitted (after the user
    /// switch, before the application runs): reports the uid and waits for
    /// the parent's verdict on this tenant's share of the group. False: the
    /// tenant holds its share already (or no verdict came within
    /// [`VERDICT_WAIT_MS`]); the request must not be served. Later calls:
    /// true.
    pub fn admitted(&self) -> bool {
        if self.report.get() < 0 {
            return true;
        }
        let mut rec = [b'U', 0, 0, 0, 0];
        // SAFETY: getuid takes no arguments and cannot fail.
        let uid = unsafe { libc::getuid() };
        rec[1..].copy_from_slice(&uid.to_ne_bytes());
        self.report(&rec);
        let fd = self.report.get();
        let mut verdict = 0u8;
        let go = sys::poll_readable(fd, Some(std::time::Duration::from_millis(VERDICT_WAIT_MS)))
            .unwrap_or(false)
            // SAFETY: reading one byte into a live local.
            && unsafe { libc::read(fd, (&mut verdict as *mut u8).cast(), 1) } == 1
            && verdict == b'G';
        self.end_report();
        go
    }

    fn end_report(&self) {
        let fd = self.report.replace(-1);
        if fd >= 0 {
            sys::close(fd);
        }
    }

    /// Says a request began: Busy, and one more request begun.
    pub fn request_started(&self, _now_ms: u64) {
        if self.rearm.replace(false) && !die_with_parent(self.parent, libc::SIGTERM) {
            sys::STOP.store(true, Relaxed);
        }
        self.slot.requests.fetch_add(1, Relaxed);
        self.slot.state.store(State::Busy as u32, Relaxed);
    }

    /// Says the request ended: Idle again.
    pub fn request_finished(&self, _now_ms: u64) {
        self.slot.state.store(State::Idle as u32, Relaxed);
    }

    /// Says what the child waits on: its connection (Idle) or the shared
    /// listener (Accepting).
    pub fn waiting(&self, on_listener: bool) {
        let state = if on_listener {
            State::Accepting
        } else {
            State::Idle
        };
        self.slot.state.store(state as u32, Relaxed);
    }

    /// One record on the report pipe: a single write of at most 5 bytes,
    /// which a pipe delivers whole. The parent may be gone (EPIPE): ignored.
    fn report(&self, rec: &[u8]) {
        let fd = self.report.get();
        if fd >= 0 {
            sys::write_all_fd(fd, rec);
        }
    }

    /// Whether the parent asked this child to exit.
    pub fn exit_requested(&self) -> bool {
        self.slot.exit.load(Relaxed) > 0
    }

    /// Why the parent asked this child to exit, for its log.
    pub fn exit_reason(&self) -> &'static str {
        match self.slot.exit.load(Relaxed) {
            EXIT_LEASE => {
                "its lease ended (LSAPI_MAX_IDLE + LSAPI_MAX_PROCESS_TIME since fork, \
                 suEXEC daemon mode)"
            }
            _ => "surplus idle child (LSAPI_MAX_IDLE_CHILDREN)",
        }
    }

    /// LSAPI_MAX_BUSY_WORKER: whether so many children are busy (as last
    /// counted by the parent) that this one, having finished a request,
    /// should hand its connection back.
    pub fn too_many_busy(&self) -> bool {
        self.max_busy
            .is_some_and(|n| self.header.busy.load(Relaxed) >= n)
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
        if self.memory_low() {
            return false;
        }
        match self.keep_listen {
            0 => false,
            1 => waited_s < 10 + 10 * u64::from(self.header.busy.load(Relaxed)),
            _ => true,
        }
    }

    /// Whether free memory is what made [`Member::keep_listening`] say no.
    pub fn memory_low(&self) -> bool {
        !self.header.memory().enough(self.threshold)
    }

    /// Stops taking connections: closes this child's copy of the listener.
    pub fn close_listener(&mut self) {
        if let Some(fd) = self.listener.take() {
            listen::close(fd);
        }
        if self.slot.state.load(Relaxed) == State::Accepting as u32 {
            self.slot.state.store(State::Idle as u32, Relaxed);
        }
    }
}

impl Drop for Member {
    /// The serve loop is over: say Leaving, and from now on die with the
    /// parent at once (no request is in flight any more). An orphan gets
    /// [`EXIT_GRACE_SECS`] for its exit hooks, then SIGALRM ends it.
    fn drop(&mut self) {
        self.close_listener();
        self.slot.state.store(State::Leaving as u32, Relaxed);
        if !die_with_parent(self.parent, libc::SIGKILL) {
            // SAFETY: signal and alarm with integer arguments; SIGALRM's
            // default action ends the process.
            unsafe {
                libc::signal(libc::SIGALRM, libc::SIG_DFL);
                libc::alarm(EXIT_GRACE_SECS);
            }
        }
    }
}

/// [`Slot::exit`]: a surplus idle child (LSAPI_MAX_IDLE_CHILDREN).
pub const EXIT_SURPLUS: u32 = 1;
/// [`Slot::exit`]: its lease ended (suEXEC daemon mode).
pub const EXIT_LEASE: u32 = 2;

/// Longest wait of a daemon child for the parent's verdict, in milliseconds
/// (the parent answers within one turn of its loop).
pub const VERDICT_WAIT_MS: u64 = 10_000;

/// Seconds a leaving child has for its exit hooks before the parent (or, for
/// an orphan, SIGALRM) ends it: mod_wsgi's default shutdown-timeout.
pub const EXIT_GRACE_SECS: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    fn member(report: RawFd, tenant: bool) -> Member {
        let slot: &'static Slot = Box::leak(Box::new(unsafe { std::mem::zeroed() }));
        let header: &'static Header = Box::leak(Box::new(unsafe { std::mem::zeroed() }));
        Member::new(
            slot,
            report,
            tenant,
            header,
            sys::getppid(),
            None,
            0,
            0,
            None,
        )
    }

    fn pair() -> (RawFd, RawFd) {
        let mut fds = [-1; 2];
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) },
            0
        );
        (fds[0], fds[1])
    }

    fn read_all(fd: RawFd) -> Vec<u8> {
        let mut buf = [0u8; 16];
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        buf[..n.max(0) as usize].to_vec()
    }

    #[test]
    fn a_tenant_child_reports_started_and_its_uid_and_obeys_the_verdict() {
        for (verdict, go) in [(b'G', true), (b'X', false)] {
            let (parent, child) = pair();
            let m = member(child, true);
            m.greeted();
            assert_eq!(read_all(parent), b"N");
            sys::write_all_fd(parent, &[verdict]);
            assert_eq!(m.admitted(), go);
            let uid = unsafe { libc::getuid() }.to_ne_bytes();
            assert_eq!(read_all(parent), [b'U', uid[0], uid[1], uid[2], uid[3]]);
            // The child's end is closed: end of file, and no second report.
            assert_eq!(read_all(parent), b"");
            assert!(m.admitted());
            sys::close(parent);
        }
        // Outside daemon mode the channel closes after the notice.
        let (parent, child) = pair();
        let m = member(child, false);
        m.greeted();
        assert_eq!(read_all(parent), b"N");
        assert_eq!(read_all(parent), b"");
        assert_eq!(
            m.exit_reason(),
            "surplus idle child (LSAPI_MAX_IDLE_CHILDREN)"
        );
        m.slot.exit.store(EXIT_LEASE, Relaxed);
        assert!(m.exit_reason().starts_with("its lease ended"));
        sys::close(parent);
    }

    #[test]
    fn layouts_fit_their_page_and_zero_is_starting() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        assert_eq!(std::mem::size_of::<Header>(), 64);
        assert_eq!(State::from_u32(0), Some(State::Starting));
        assert_eq!(State::from_u32(4), Some(State::Leaving));
        assert_eq!(State::from_u32(u32::MAX), None);
    }
}
