//! lswsgi: the LSAPI wire format, the worker's connection layer, and a
//! web-server-side LSAPI client.
//!
//! The worker binary (`src/main.rs`) embeds CPython and serves WSGI
//! applications; this library holds the parts that know nothing of Python: the
//! pure protocol layer ([`lsapi`]), one connection's buffers and framing
//! ([`conn`]), the client that tests, benches and the `lsapi-call` tool use to
//! play LiteSpeed's part ([`client`]), and a harness that drives the
//! connection layer with arbitrary bytes for fuzzing ([`harness`]).
//!
//! `unsafe` appears in the connection layer (read, writev, sendfile on
//! buffers it owns) and in the client's process control (kill(2)).
#![deny(missing_docs)]

pub mod client;
pub mod conn;
pub mod harness;
pub mod lsapi;
