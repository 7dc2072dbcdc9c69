//! The response of the request in flight: one value, [`State`], whose
//! variants carry what each phase needs, and whose transitions are the only
//! way to write it — exactly one RESP_HEADER and one RESP_END per request,
//! or a dropped connection.
//!
//! WSGI (`respond`, `objects`) and ASGI (`asgi`) drive it alike; it knows
//! nothing of Python.

use super::log_request_error;
use lswsgi::conn::{Conn, WRITE_FAILED};
use std::cell::Cell;
use std::io;

/// How far the response has got.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum State {
    /// start_response (http.response.start) not called; nothing sent.
    Unstarted,
    /// start_response called: the head is staged in `conn.head`, nothing
    /// went out yet.
    Staged {
        /// The status code it gave.
        status: u16,
        /// Its Content-Length header, if it gave a valid one.
        content_length: Option<u64>,
    },
    /// RESP_HEADER went out; body blocks may follow.
    HeadSent {
        /// As in `Staged`.
        content_length: Option<u64>,
    },
    /// RESP_END went out: nothing more may be written for this request.
    Ended,
    /// The response cannot be completed: the connection is dropped without
    /// RESP_END so the server knows the body is incomplete. Implies the
    /// connection is broken.
    Abandoned {
        /// start_response had been called (its later misuse is reported
        /// as such).
        started: bool,
    },
}

/// The response of the request in flight. Each method is one legal
/// transition; once `Ended` or `Abandoned` every write is refused, so no
/// path can send a second head or a second RESP_END.
pub(super) struct Response {
    state: Cell<State>,
}

impl Response {
    pub(super) const fn new() -> Response {
        Response {
            state: Cell::new(State::Ended),
        }
    }

    /// A new request: nothing sent, start_response not called.
    pub(super) fn begin(&self) {
        self.state.set(State::Unstarted);
    }

    pub(super) fn state(&self) -> State {
        self.state.get()
    }

    /// Whether start_response was called (successfully) for this request.
    pub(super) fn started(&self) -> bool {
        match self.state.get() {
            State::Unstarted => false,
            State::Staged { .. } | State::HeadSent { .. } | State::Ended => true,
            State::Abandoned { started } => started,
        }
    }

    /// Whether the head can no longer change: RESP_HEADER went out, or the
    /// response ended or was abandoned.
    pub(super) fn head_sent(&self) -> bool {
        !matches!(self.state.get(), State::Unstarted | State::Staged { .. })
    }

    /// Whether the response is abandoned: a transition gave up on it, or its
    /// connection broke under it. Every abandon breaks the connection, so the
    /// connection's fault is the one record of it; `State::Abandoned` says
    /// only that this response's own transitions are over.
    pub(super) fn abandoned(&self, conn: &Conn) -> bool {
        debug_assert!(conn.is_broken() || !matches!(self.state.get(), State::Abandoned { .. }));
        conn.is_broken()
    }

    /// Whether the response can take no more: ended or abandoned.
    pub(super) fn is_over(&self, conn: &Conn) -> bool {
        self.abandoned(conn) || self.state.get() == State::Ended
    }

    /// The application's Content-Length, if it gave a valid one.
    pub(super) fn content_length(&self) -> Option<u64> {
        match self.state.get() {
            State::Staged { content_length, .. } | State::HeadSent { content_length } => {
                content_length
            }
            _ => None,
        }
    }

    /// Records start_response's status and Content-Length (the head itself
    /// is staged in `conn.head`). Only while nothing went out.
    pub(super) fn stage(&self, status: u16, content_length: Option<u64>) {
        debug_assert!(!self.head_sent());
        self.state.set(State::Staged {
            status,
            content_length,
        });
    }

    /// Forgets a start_response whose headers were refused.
    pub(super) fn unstage(&self) {
        debug_assert!(!self.head_sent());
        self.state.set(State::Unstarted);
    }

    /// Abandons the response: nothing more goes out for it.
    fn abandon(&self) {
        let started = self.started();
        self.state.set(State::Abandoned { started });
    }

    /// Starts a write with the head in front if it is still pending.
    /// `false` (nothing started) when the response can take no more bytes.
    pub(super) fn begin_write(&self, conn: &mut Conn) -> bool {
        if self.abandoned(conn) {
            return false;
        }
        match self.state.get() {
            State::Staged {
                status,
                content_length,
            } => {
                conn.begin_write();
                conn.head.finish(status);
                conn.push_head();
                self.state.set(State::HeadSent { content_length });
                true
            }
            State::HeadSent { .. } => {
                conn.begin_write();
                true
            }
            _ => false,
        }
    }

    /// Sends what was collected; a failed write abandons the response.
    pub(super) fn flush(&self, conn: &mut Conn) -> io::Result<()> {
        let r = conn.flush();
        if r.is_err() {
            self.abandon();
        }
        r
    }

    /// Body bytes (after the head if it is pending), in one writev.
    /// Requires start_response to have been called.
    pub(super) fn body(&self, conn: &mut Conn, data: &[u8]) -> io::Result<()> {
        if !self.begin_write(conn) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, WRITE_FAILED));
        }
        // SAFETY: `data` outlives the flush just below.
        unsafe { conn.push_body(data) };
        self.flush(conn)
    }

    /// Head (if pending), every block and RESP_END in one writev.
    pub(super) fn complete(&self, conn: &mut Conn, blocks: &[&[u8]]) {
        if !self.begin_write(conn) {
            return;
        }
        for b in blocks {
            // SAFETY: the blocks outlive the flush just below.
            unsafe { conn.push_body(b) };
        }
        conn.push_end();
        if self.flush(conn).is_ok() {
            self.state.set(State::Ended);
        }
    }

    /// Sends the file `fd` from `offset`, `len` bytes (sendfile(2)), after
    /// the head if it is pending; a write that fails abandons the response.
    /// `Err` only for a failure once the file began to go out (to be
    /// logged); `Ok` also when nothing could be sent.
    pub(super) fn file(
        &self,
        conn: &mut Conn,
        fd: i32,
        offset: i64,
        len: u64,
    ) -> Result<(), io::Error> {
        if !self.begin_write(conn) || self.flush(conn).is_err() {
            return Ok(());
        }
        let r = conn.send_file(fd, offset, len);
        if self.abandoned(conn) && self.state.get() != State::Ended {
            self.abandon();
        }
        r.map(drop)
    }

    /// The application failed: a complete 500 page (showing `detail`, see
    /// errpage) if nothing went out yet, otherwise the response is
    /// abandoned. Nothing once it has ended.
    pub(super) fn fail(&self, conn: &mut Conn, detail: Option<&str>) {
        match self.state.get() {
            State::Unstarted | State::Staged { .. } if !self.abandoned(conn) => {
                let page = super::errpage::page(detail);
                let sent = conn.send_page(
                    500,
                    &[(&b"Content-Type"[..], &b"text/html; charset=utf-8"[..])],
                    &page,
                );
                self.state.set(match sent {
                    Ok(()) => State::Ended,
                    Err(_) => State::Abandoned { started: true },
                });
            }
            State::Unstarted | State::Staged { .. } | State::HeadSent { .. } => {
                conn.set_broken("the application failed after the response headers were sent");
                self.abandon();
            }
            State::Ended | State::Abandoned { .. } => {}
        }
    }

    /// Logs `what` with the application's `trace` and fails the response
    /// (a 500 if nothing went out, abandoned if part of it did).
    pub(super) fn app_failed(&self, conn: &mut Conn, what: &str, trace: &str) {
        let msg = format!("{what}:\n{trace}");
        log_request_error(conn, &msg);
        self.fail(conn, super::errpage::shown(&msg));
    }

    /// The request is over: whatever state the response is in, it leaves in
    /// `Ended` (RESP_END sent once) or `Abandoned` (connection dropped). A
    /// response nobody started (no start_response) becomes a 500.
    pub(super) fn close(&self, conn: &mut Conn) {
        match self.state.get() {
            State::Unstarted => {
                log_request_error(
                    conn,
                    "the application returned without calling start_response",
                );
                self.fail(conn, None);
            }
            State::Staged { .. } | State::HeadSent { .. } => self.complete(conn, &[]),
            State::Ended | State::Abandoned { .. } => {}
        }
        if self.state.get() != State::Ended {
            conn.set_broken("the response could not be completed");
            self.abandon();
        }
    }
}
