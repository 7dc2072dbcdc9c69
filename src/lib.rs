//! lswsgi: the LSAPI wire format and a web-server-side LSAPI client.
//!
//! The worker binary (`src/main.rs`) embeds CPython and serves WSGI
//! applications; this library holds the parts that know nothing of Python: the
//! pure protocol layer ([`lsapi`]) and the client that tests, benches and the
//! `lsapi-call` tool use to play LiteSpeed's part ([`client`]).
//!
//! `unsafe` appears only in the client's process control (kill(2)).
#![deny(missing_docs)]

pub mod client;
pub mod lsapi;
