//! The ProcessGroup's shared status: the pages themselves (each child's
//! sealed slot page, [`StatusPage`]; the group header, [`Table`]) and a
//! child's side of them ([`Member`]): its own slot, which it writes as
//! *hints* for the parent, and the group-wide figures the parent publishes
//! for it.
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
//! through a read-only mapping it cannot make writable ([`Table`]), so
//! a tenant cannot forge the figures other tenants act on.
//!
//! What the parent does act on alone comes from the kernel (fork, wait
//! status, its own clock) or from the child's report channel (a socket
//! pair), which only the worker's own code holds, and only before any
//! application code runs: `N` once the `\0PID` notice went out; in suEXEC
//! daemon mode then `U` and the uid its first request was admitted for,
//! after which it waits for the parent's verdict on that tenant's share of
//! the group (`G`: serve, anything else: answer 508) and closes the channel.

use crate::config::Config;
use crate::listen;
use crate::meminfo::Memory;
use crate::sys;
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

/// The settings a child applies to itself as a member of its group.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// LSAPI_KEEP_LISTEN (2 with LSAPI_AVOID_FORK; 0 in suEXEC daemon mode).
    pub keep_listen: u8,
    /// Free memory, bytes, above which it keeps taking connections
    /// ([`Config::listen_threshold`]).
    pub threshold: u64,
    /// LSAPI_MAX_BUSY_WORKER.
    pub max_busy: Option<u32>,
}

impl Policy {
    /// The child's policy under `cfg`.
    pub fn of(cfg: &Config) -> Policy {
        Policy {
            keep_listen: cfg.keep_listen,
            threshold: cfg.listen_threshold(),
            max_busy: cfg.max_busy_worker,
        }
    }
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
    policy: Policy,
    /// The parent-death signal is to be armed again at the next request
    /// (a suEXEC user switch before the first one clears it).
    rearm: Cell<bool>,
}

impl Member {
    /// The link of a new child to `slot` and `header`, which must stay mapped
    /// for the life of the process, reporting on `report` (owned from now);
    /// `tenant`: in suEXEC daemon mode.
    pub fn new(
        slot: &'static Slot,
        report: RawFd,
        tenant: bool,
        header: &'static Header,
        parent: i32,
        listener: Option<RawFd>,
        policy: Policy,
    ) -> Member {
        Member {
            slot,
            report: Cell::new(report),
            tenant,
            header,
            parent,
            listener,
            notice_pending: true,
            policy,
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
    pub fn request_started(&self) {
        if self.rearm.replace(false) && !die_with_parent(self.parent, libc::SIGTERM) {
            sys::STOP.store(true, Relaxed);
        }
        self.slot.requests.fetch_add(1, Relaxed);
        self.slot.state.store(State::Busy as u32, Relaxed);
    }

    /// Says the request ended: Idle again.
    pub fn request_finished(&self) {
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

    /// Whether the parent ended this child's lease: it must leave after the
    /// request it is about to serve, whatever follows on its connection (a
    /// surplus idle child instead leaves the next time it waits idle, as
    /// lsapilib's children do, sending no CONN_CLOSE).
    pub fn lease_ended(&self) -> bool {
        self.slot.exit.load(Relaxed) == EXIT_LEASE
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
        self.policy
            .max_busy
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
        match self.policy.keep_listen {
            0 => false,
            1 => waited_s < 10 + 10 * u64::from(self.header.busy.load(Relaxed)),
            _ => true,
        }
    }

    /// Whether free memory is what made [`Member::keep_listening`] say no.
    pub fn memory_low(&self) -> bool {
        !self.header.memory().enough(self.policy.threshold)
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

/// The group header (written by the parent only): a sealed memfd page the
/// parent maps read-write; a child replaces its inherited writable view with
/// a read-only one it cannot make writable again (see
/// [`Table::read_only_header`]), so in suEXEC daemon mode one tenant cannot
/// forge the busy count or memory figures every other tenant's children act
/// on. Each child's slot is a page of its own ([`StatusPage`]).
pub struct Table {
    base: *mut u8,
    /// The header's memfd: close-on-exec, held by the parent only.
    header_fd: RawFd,
    /// `/proc/self/fd/N` for `header_fd`, to reopen it read-only.
    header_path: std::ffi::CString,
}

/// The header memfd's name: /proc/PID/maps shows the page as
/// `/memfd:lswsgi-group-header (deleted)`.
const HEADER_NAME: &std::ffi::CStr = c"lswsgi-group-header";
/// A child's status page's memfd name (`/memfd:lswsgi-child-status`).
const SLOT_NAME: &std::ffi::CStr = c"lswsgi-child-status";

/// A one-page memfd (close-on-exec, never executable) whose size is sealed:
/// no mapping of it can be grown past its page (mremap beyond it maps no
/// other object's memory) and it cannot be shrunk under a mapping.
fn sealed_page(name: &std::ffi::CStr) -> std::io::Result<RawFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a NUL-terminated name; checked. Never
    // executable (vm.memfd_noexec=2 requires saying so); kernels before 6.3
    // do not know the flag (EINVAL) and get the plain call.
    let fd = sys::cvt(unsafe {
        match libc::memfd_create(name.as_ptr(), flags | libc::MFD_NOEXEC_SEAL) {
            -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) => {
                libc::memfd_create(name.as_ptr(), flags)
            }
            fd => fd,
        }
    })?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // SAFETY: ftruncate and fcntl with integer arguments on the memfd we own.
    let r = unsafe {
        sys::cvt(libc::ftruncate(fd, PAGE as libc::off_t))
            .and_then(|_| sys::cvt(libc::fcntl(fd, libc::F_ADD_SEALS, seals)))
    };
    r.map(|_| fd).inspect_err(|_| sys::close(fd))
}

/// Maps `fd`'s page shared read-write at `at` (null: anywhere).
fn map_page(fd: RawFd, at: *mut u8) -> std::io::Result<*mut u8> {
    let fixed = if at.is_null() { 0 } else { libc::MAP_FIXED };
    // SAFETY: a one-page shared mapping of a one-page memfd; with MAP_FIXED
    // the caller owns the page at `at`, referenced by nothing. Checked.
    let p = unsafe {
        libc::mmap(
            at.cast(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | fixed,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// One child's status page: a sealed memfd page of its own, created for that
/// fork, mapped by the parent until it reaps the child and never given to
/// another child. The memfd itself is closed at once: the child inherits
/// the mapping only, so whatever it (or a process it forks and that
/// outlives it) does with the page reaches no other child's.
pub struct StatusPage(*mut Slot);

impl StatusPage {
    pub fn new() -> std::io::Result<StatusPage> {
        let fd = sealed_page(SLOT_NAME)?;
        // No more seals may be added either (nobody could add F_SEAL_WRITE).
        // SAFETY: fcntl with integer arguments on the memfd we own.
        let sealed = sys::cvt(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SEAL) });
        let p = sealed.and_then(|_| map_page(fd, std::ptr::null_mut()));
        sys::close(fd);
        Ok(StatusPage(p?.cast()))
    }

    pub fn slot(&self) -> &Slot {
        // SAFETY: a live, zero-filled (all zeroes: Starting) page-aligned
        // mapping of a sealed page, unmapped only by `drop`, which the
        // borrow of `self` rules out meanwhile; zeroes are valid atomics.
        unsafe { &*self.0 }
    }

    /// The mapping, for a new child to keep for the rest of its life.
    pub fn keep(self) -> &'static Slot {
        let p = self.0;
        std::mem::forget(self);
        // SAFETY: as in `slot`; forgotten, the page is never unmapped.
        unsafe { &*p }
    }
}

impl Drop for StatusPage {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the `&'static` handed out by `slot` is only
        // used while the record (or, in a child, `keep`) holds the page.
        unsafe { libc::munmap(self.0.cast(), PAGE) };
    }
}

impl Table {
    /// Maps the group header, a sealed memfd page; fails if a child could not
    /// be given a read-only view of it.
    pub fn new() -> std::io::Result<Table> {
        let fd = sealed_page(HEADER_NAME)?;
        let base = map_page(fd, std::ptr::null_mut()).inspect_err(|_| sys::close(fd))?;
        let t = Table {
            base,
            header_fd: fd,
            header_path: std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap(),
        };
        t.seal_header().inspect_err(|_| {
            // SAFETY: our own fresh mapping, referenced by nothing.
            unsafe { libc::munmap(base.cast(), PAGE) };
            sys::close(fd);
        })?;
        Ok(t)
    }

    /// Seals the header and tries once what every child will do: a group
    /// whose children could write the header does not start.
    fn seal_header(&self) -> std::io::Result<()> {
        let fd = self.header_fd;
        // No new writable mapping or write(2) (F_SEAL_FUTURE_WRITE, Linux >=
        // 5.1) while the parent's view stays writable. Older kernels get the
        // size seals only.
        // SAFETY: fcntl with integer arguments on the memfd we own.
        unsafe {
            if libc::fcntl(
                fd,
                libc::F_ADD_SEALS,
                libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL,
            ) != 0
            {
                sys::cvt(libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SEAL))?;
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

    pub fn header(&self) -> &'static Header {
        // SAFETY: a live, zero-filled mapping never unmapped in the parent
        // (in a child, replaced in place by a read-only view of the same
        // memfd, which only loads); zeroes are valid atomics; page alignment
        // ≥ 64.
        unsafe { &*(self.base as *const Header) }
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

    /// In a new child: makes the header read-only for good and closes the
    /// memfd, so it holds nothing that maps the header writable.
    pub fn read_only_for_good(&self) -> std::io::Result<()> {
        let r = self.read_only_header(self.base);
        sys::close(self.header_fd);
        r.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(report: RawFd, tenant: bool) -> Member {
        // SAFETY: all zeroes are valid atomics (and a Starting slot).
        let slot: &'static Slot = Box::leak(Box::new(unsafe { std::mem::zeroed() }));
        // SAFETY: as above.
        let header: &'static Header = Box::leak(Box::new(unsafe { std::mem::zeroed() }));
        Member::new(
            slot,
            report,
            tenant,
            header,
            sys::getppid(),
            None,
            Policy {
                keep_listen: 0,
                threshold: 0,
                max_busy: None,
            },
        )
    }

    fn pair() -> (RawFd, RawFd) {
        let mut fds = [-1; 2];
        assert_eq!(
            // SAFETY: fds is a live array of two ints.
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) },
            0
        );
        (fds[0], fds[1])
    }

    fn read_all(fd: RawFd) -> Vec<u8> {
        let mut buf = [0u8; 16];
        // SAFETY: reading into a live local buffer of its own length.
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
            // SAFETY: getuid takes no arguments and cannot fail.
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

    #[test]
    fn status_pages_are_separate_zeroed_and_cannot_grow() {
        let (a, b) = (StatusPage::new().unwrap(), StatusPage::new().unwrap());
        assert_eq!(a.slot().state.load(Relaxed), State::Starting as u32);
        a.slot().requests.store(5, Relaxed);
        assert_eq!(b.slot().requests.load(Relaxed), 0);
        // A child grows its mapping of `a` and writes past the first page:
        // the sealed object has one page, so that is SIGBUS, not memory of
        // another page.
        // SAFETY: the child only makes system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the forked child, on its copy of the mapping: the
            // write past the page is meant to fault (SIGBUS), and _exit ends
            // the child without running the test harness's code.
            unsafe {
                let p = libc::mremap(a.0.cast(), PAGE, 4 * PAGE, libc::MREMAP_MAYMOVE);
                if p == libc::MAP_FAILED {
                    libc::_exit(3);
                }
                (p as *mut u8).add(PAGE).write_volatile(1);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: status is a live local; pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
            "status {status:#x}"
        );
        assert_eq!(b.slot().requests.load(Relaxed), 0);
    }

    #[test]
    fn a_child_keeps_its_own_page_and_a_read_only_header() {
        let t = Table::new().unwrap();
        let own = StatusPage::new().unwrap();
        own.slot().exit.store(1, Relaxed);
        t.header().busy.store(7, Relaxed);
        // SAFETY: the child only makes system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = t.read_only_for_good().is_ok() && own.slot().exit.load(Relaxed) == 1;
            own.slot().requests.store(42, Relaxed);
            // The header is the parent's page, read-only for good, and the
            // memfd behind it is closed.
            let header = t.header().busy.load(Relaxed) == 7
                // SAFETY: mprotect of the header page, expected to fail.
                && unsafe {
                    libc::mprotect(t.base.cast(), PAGE, libc::PROT_READ | libc::PROT_WRITE)
                } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES)
                // SAFETY: fcntl with integer arguments, expected to fail.
                && unsafe { libc::fcntl(t.header_fd, libc::F_GETFD) } < 0;
            // SAFETY: ends the forked child without the harness's code.
            unsafe { libc::_exit(if ok && header { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: status is a live local; pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 0);
        assert_eq!(own.slot().requests.load(Relaxed), 42);
        // The parent's view stays writable under the seals.
        t.header().busy.store(8, Relaxed);
        assert_eq!(t.header().busy.load(Relaxed), 8);
    }

    #[test]
    fn without_proc_the_sealed_memfd_still_maps_only_read_only() {
        let mut t = Table::new().unwrap();
        t.header_path = c"/nonexistent/fd".into();
        let (p, via_proc) = t.read_only_header(std::ptr::null_mut()).unwrap();
        assert!(!via_proc);
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: mprotect of the page just mapped, expected to fail.
        assert_ne!(unsafe { libc::mprotect(p.cast(), PAGE, rw) }, 0);
        // Nor can a new writable mapping be made from the memfd itself.
        // SAFETY: a new mapping anywhere, expected to fail; checked.
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
        // SAFETY: the probe page, referenced by nothing else.
        unsafe { libc::munmap(p.cast(), PAGE) };
    }
}
