//! lsapi-call: send a request to an LSAPI application and print the response,
//! the way `cgi-fcgi` does for FastCGI.
//!
//! It plays LiteSpeed's part with [`lswsgi::client`]: it connects to a running
//! application (or spawns one with a listening socket on its fd 0), sends a
//! BEGIN_REQUEST built by [`RequestSpec`] plus the body, and prints the status,
//! headers and body it gets back. No Python involved; arguments are parsed by
//! hand to keep the tool small.

use lswsgi::client::{Client, Ending, Response, Spawned};
use lswsgi::lsapi::build::RequestSpec;
use lswsgi::lsapi::{ByteOrder, PacketType};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant};

const HELP: &str = "\
lsapi-call: send a request to an LSAPI application and print the response

Usage:
  lsapi-call SOCKET_OR_ADDR [options] URI
  lsapi-call --spawn 'CMD ARGS' [options] URI

SOCKET_OR_ADDR is a Unix socket path (also uds://path) or host:port.
URI is the request path with an optional ?query, e.g. /app/hello?x=1.

Options:
  --spawn 'CMD ARGS'    start CMD with a listening Unix socket as its fd 0 (as
                        LiteSpeed does), send the request(s), then stop it.
                        CMD ARGS is split on whitespace; '...' and \"...\" quote
  --env-spawn KEY=VALUE add an environment variable for the spawned command
                        (repeatable)
  -X, --request METHOD  request method (default GET, or POST with -d)
  -H, --header 'Name: value'
                        add a request header (repeatable; a Host header
                        replaces the default Host: localhost)
  -d, --data DATA       request body; @FILE reads a file, @- reads stdin.
                        Sets Content-Length, and Content-Type to
                        application/x-www-form-urlencoded unless -H gives one
  -e, --env KEY=VALUE   add or override an env entry (repeatable)
  --script FILE         SCRIPT_FILENAME (default: none)
  --script-name NAME    SCRIPT_NAME (default: the URI path); PATH_INFO is the
                        rest of the path after it. Use --script-name '' for an
                        application mounted at the root
  --big-endian          encode the request in big-endian byte order
  -n COUNT              send the request COUNT times on one connection and
                        print the last response (reconnects after CONN_CLOSE)
  -i, --include         print the status line and headers before the body
                        (the default)
  -s, --silent-headers  print only the body
  -v, --verbose         trace the packets sent and received on stderr
  -w, --timing          print connect, first-byte and total times on stderr
  -f, --fail            print nothing and exit 22 when the status is >= 400
  --timeout SECS        read/write time-out (default 30)
  -h, --help            print this help

Text the application sends in STDERR_STREAM packets (its error log) is
always written to stderr. A spawned command shares our stdout and stderr.

Exit codes:
  0   a response was received (any status, unless -f)
  2   usage error (bad arguments, unreadable -d file, request too large)
  3   cannot connect or spawn
  4   protocol error (malformed packet, or the connection closed before
      RESP_END or CONN_CLOSE)
  5   time-out
  22  status >= 400 with -f
";

const EXIT_USAGE: i32 = 2;
const EXIT_CONNECT: i32 = 3;
const EXIT_PROTOCOL: i32 = 4;
const EXIT_TIMEOUT: i32 = 5;
const EXIT_HTTP_ERROR: i32 = 22;

/// Where the application is.
enum Target {
    Addr(String),
    Spawn(Vec<String>),
}

/// Where the body comes from.
enum Data {
    Bytes(Vec<u8>),
    File(String),
    Stdin,
}

struct Options {
    target: Target,
    uri: String,
    method: Option<String>,
    headers: Vec<(String, String)>,
    data: Option<Data>,
    env: Vec<(String, String)>,
    script: Option<String>,
    script_name: Option<String>,
    big_endian: bool,
    count: u64,
    silent_headers: bool,
    verbose: bool,
    timing: bool,
    fail: bool,
    timeout: Duration,
    spawn_env: Vec<(String, String)>,
}

/// A reason to stop, with the exit code it maps to.
struct Failure {
    code: i32,
    msg: String,
}

fn fail<T>(code: i32, msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        code,
        msg: msg.into(),
    })
}

fn main() {
    let code = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(None) => {
            print!("{HELP}");
            0
        }
        Ok(Some(opts)) => match run(&opts) {
            Ok(code) => code,
            Err(f) => {
                eprintln!("lsapi-call: {}", f.msg);
                f.code
            }
        },
        Err(msg) => {
            eprintln!("lsapi-call: {msg}\nTry 'lsapi-call --help'.");
            EXIT_USAGE
        }
    };
    // Every owned resource (connection, spawned process) is gone by now: run()
    // has returned, so exit() skipping destructors loses nothing.
    std::process::exit(code);
}

/// Parses the command line; `Ok(None)` asks for the help text.
fn parse_args(args: Vec<OsString>) -> Result<Option<Options>, String> {
    let mut o = Options {
        target: Target::Addr(String::new()),
        uri: String::new(),
        method: None,
        headers: Vec::new(),
        data: None,
        env: Vec::new(),
        script: None,
        script_name: None,
        big_endian: false,
        count: 1,
        silent_headers: false,
        verbose: false,
        timing: false,
        fail: false,
        timeout: Duration::from_secs(30),
        spawn_env: Vec::new(),
    };
    let mut spawn = None;
    let mut positional = Vec::new();
    let mut args = args.into_iter();
    let mut only_positional = false;
    while let Some(arg) = args.next() {
        let arg = utf8(arg)?;
        if only_positional || !arg.starts_with('-') || arg == "-" {
            positional.push(arg);
            continue;
        }
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("option {arg} needs a value"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--" => only_positional = true,
            "--spawn" => {
                let words = split_words(&utf8(value()?)?)?;
                if words.is_empty() {
                    return Err("--spawn needs a command".into());
                }
                spawn = Some(words);
            }
            "--env-spawn" => o.spawn_env.push(key_value(&utf8(value()?)?)?),
            "-X" | "--request" => {
                let m = utf8(value()?)?;
                if m.is_empty() || m.bytes().any(|b| b.is_ascii_whitespace()) {
                    return Err(format!("bad method {m:?}"));
                }
                o.method = Some(m);
            }
            "-H" | "--header" => o.headers.push(header(&utf8(value()?)?)?),
            "-d" | "--data" => {
                if o.data.is_some() {
                    return Err("-d given more than once".into());
                }
                let v = value()?.into_vec();
                o.data = Some(match v.strip_prefix(b"@") {
                    Some(b"-") => Data::Stdin,
                    Some(path) => Data::File(utf8(OsString::from_vec(path.to_vec()))?),
                    None => Data::Bytes(v),
                });
            }
            "-e" | "--env" => {
                let (k, v) = key_value(&utf8(value()?)?)?;
                o.env.push((k, v));
            }
            "--script" => o.script = Some(utf8(value()?)?),
            "--script-name" => o.script_name = Some(utf8(value()?)?),
            "--big-endian" => o.big_endian = true,
            "-n" => {
                let v = utf8(value()?)?;
                o.count = match v.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(format!("-n needs a count of at least 1, not {v:?}")),
                };
            }
            "-i" | "--include" => o.silent_headers = false,
            "-s" | "--silent-headers" => o.silent_headers = true,
            "-v" | "--verbose" => o.verbose = true,
            "-w" | "--timing" => o.timing = true,
            "-f" | "--fail" => o.fail = true,
            "--timeout" => {
                let v = utf8(value()?)?;
                o.timeout = match v.parse::<f64>() {
                    Ok(s) if s > 0.0 && s <= 1e9 => Duration::from_secs_f64(s),
                    _ => {
                        return Err(format!(
                            "--timeout needs a positive number of seconds, not {v:?}"
                        ))
                    }
                };
            }
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    let mut positional = positional.into_iter();
    o.target = match spawn {
        Some(argv) => Target::Spawn(argv),
        None => Target::Addr(
            positional
                .next()
                .ok_or("missing SOCKET_OR_ADDR (or --spawn 'CMD')")?,
        ),
    };
    o.uri = positional.next().ok_or("missing URI")?;
    if let Some(extra) = positional.next() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    if !o.uri.starts_with('/') {
        return Err(format!("URI {:?} does not start with /", o.uri));
    }
    if !o.spawn_env.is_empty() && matches!(o.target, Target::Addr(_)) {
        return Err("--env-spawn needs --spawn".into());
    }
    Ok(Some(o))
}

fn utf8(s: OsString) -> Result<String, String> {
    s.into_string()
        .map_err(|s| format!("argument {s:?} is not UTF-8"))
}

/// `KEY=VALUE` with a non-empty key.
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("expected KEY=VALUE, not {s:?}")),
    }
}

/// `Name: value`; the value is trimmed of surrounding whitespace.
fn header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, v)) if !n.is_empty() && !n.bytes().any(|b| b.is_ascii_whitespace()) => {
            Ok((n.into(), v.trim().into()))
        }
        _ => Err(format!("expected 'Name: value', not {s:?}")),
    }
}

/// Splits a command line into words the way a shell would for the simple
/// cases: whitespace separates, '...' quotes literally, "..." quotes with
/// backslash escapes for \" \\ \$ \`, and a backslash outside quotes escapes
/// the next character. No expansions.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once any part of it was seen, so '' is an empty argument.
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("--spawn: unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("--spawn: unterminated \" quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("--spawn: unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("--spawn: trailing backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn load_body(data: &Option<Data>) -> Result<Vec<u8>, Failure> {
    Ok(match data {
        None => Vec::new(),
        Some(Data::Bytes(b)) => b.clone(),
        Some(Data::File(path)) => match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return fail(EXIT_USAGE, format!("cannot read {path}: {e}")),
        },
        Some(Data::Stdin) => {
            let mut b = Vec::new();
            if let Err(e) = io::stdin().lock().read_to_end(&mut b) {
                return fail(EXIT_USAGE, format!("cannot read stdin: {e}"));
            }
            b
        }
    })
}

fn build_spec(o: &Options, body_len: usize) -> RequestSpec {
    let method = match (&o.method, &o.data) {
        (Some(m), _) => m.as_str(),
        (None, Some(_)) => "POST",
        (None, None) => "GET",
    };
    let path = o.uri.split_once('?').map_or(o.uri.as_str(), |(p, _)| p);
    let script_name = o.script_name.as_deref().unwrap_or(path);
    let script = o.script.as_deref().unwrap_or("");
    let mut spec = RequestSpec::new(method, &o.uri, script, script_name);
    if o.big_endian {
        spec.order = ByteOrder::Big;
    }
    let has = |name: &str| o.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if has("Host") {
        spec.headers.clear();
    }
    for (n, v) in &o.headers {
        spec.header(n, v);
    }
    if o.data.is_some() {
        if !has("Content-Type") {
            spec.header("Content-Type", "application/x-www-form-urlencoded");
        }
        spec.body(body_len as u64);
    }
    for (k, v) in &o.env {
        spec.set_env(k, v);
    }
    spec
}

fn run(o: &Options) -> Result<i32, Failure> {
    let body = load_body(&o.data)?;
    let spec = build_spec(o, body.len());
    let packet = match spec.encode() {
        Ok(p) => p,
        Err(e) => return fail(EXIT_USAGE, format!("cannot encode the request: {e}")),
    };
    // Declared before the client so it is dropped after it: the worker sees
    // our connection close before it is told to stop.
    let mut spawned = match &o.target {
        Target::Spawn(argv) => match Spawned::start(argv, &o.spawn_env, None) {
            Ok(s) => Some(s),
            Err(e) => return fail(EXIT_CONNECT, format!("cannot start {}: {e}", argv[0])),
        },
        Target::Addr(_) => None,
    };
    let connect = || -> Result<Client, Failure> {
        let client = match (&o.target, &spawned) {
            (Target::Addr(addr), _) => {
                Client::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))
            }
            (_, Some(s)) => s
                .connect(o.timeout)
                .map_err(|e| format!("cannot connect to the spawned command: {e}")),
            (Target::Spawn(_), None) => unreachable!("spawn target without a process"),
        };
        let mut client = client.map_err(|msg| Failure {
            code: EXIT_CONNECT,
            msg,
        })?;
        if let Err(e) = client.stream().set_timeout(Some(o.timeout)) {
            return fail(EXIT_CONNECT, format!("cannot set the time-out: {e}"));
        }
        Ok(client)
    };

    let started = Instant::now();
    let mut client = connect()?;
    let connect_time = started.elapsed();
    let mut last = None;
    for i in 0..o.count {
        if o.verbose {
            eprintln!(
                "> BEGIN_REQUEST {} bytes, {}, body {} bytes",
                packet.len(),
                if spec.order == ByteOrder::Big {
                    "big-endian"
                } else {
                    "little-endian"
                },
                body.len()
            );
        }
        let resp = client
            .call_raw(&packet, &body)
            .map_err(|e| io_failure(e, o.timeout))?;
        if o.verbose {
            trace(&resp);
        }
        // The application's error log goes to ours whatever the outcome.
        let _ = io::stderr().write_all(&resp.stderr);
        match resp.ending {
            Ending::Eof => {
                return fail(
                    EXIT_PROTOCOL,
                    "protocol error: connection closed before RESP_END or CONN_CLOSE",
                )
            }
            _ if resp.status == 0 => {
                return fail(
                    EXIT_PROTOCOL,
                    "protocol error: response without RESP_HEADER",
                )
            }
            Ending::Close if i + 1 < o.count => {
                if o.verbose {
                    eprintln!("* CONN_CLOSE: reconnecting");
                }
                client = connect()?;
            }
            _ => {}
        }
        last = Some(resp);
    }
    let total = started.elapsed();
    drop(client);
    if let Some(s) = spawned.as_mut() {
        // Best effort: Spawned's Drop retries and removes the socket directory.
        let _ = s.stop(Duration::from_secs(2));
    }
    let resp = last.expect("count is at least 1");

    if o.timing {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut line = format!(
            "connect {:.3} ms, first byte {:.3} ms, total {:.3} ms",
            ms(connect_time),
            ms(resp.first_byte),
            ms(total)
        );
        if o.count > 1 {
            let per = (total - connect_time).div_f64(o.count as f64);
            line += &format!(" ({} requests, {:.3} ms each)", o.count, ms(per));
        }
        eprintln!("{line}");
    }
    if o.fail && resp.status >= 400 {
        eprintln!(
            "lsapi-call: the application answered status {}",
            resp.status
        );
        return Ok(EXIT_HTTP_ERROR);
    }
    let mut out = Vec::with_capacity(resp.body.len() + 512);
    if !o.silent_headers {
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status)).as_bytes(),
        );
        for (n, v) in &resp.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&resp.body);
    // A closed stdout (e.g. `| head`) is the reader's choice, not our failure.
    let _ = io::stdout().lock().write_all(&out);
    Ok(0)
}

/// Maps a failed exchange to its exit code. Read time-outs on sockets surface
/// as WouldBlock (EAGAIN), write time-outs as WouldBlock or TimedOut.
fn io_failure(e: io::Error, timeout: Duration) -> Failure {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure {
            code: EXIT_TIMEOUT,
            msg: format!("no answer within {} s", timeout.as_secs_f64()),
        },
        io::ErrorKind::UnexpectedEof => Failure {
            code: EXIT_PROTOCOL,
            msg: "protocol error: connection closed inside a packet".into(),
        },
        _ => Failure {
            code: EXIT_PROTOCOL,
            msg: format!("protocol error: {e}"),
        },
    }
}

/// Prints the received packet types (and a PID notice) on stderr.
fn trace(resp: &Response) {
    let names: Vec<String> = resp
        .packets
        .iter()
        .map(|&t| match PacketType::from_u8(t) {
            Some(p) => packet_name(p).to_string(),
            None => format!("TYPE_{t}"),
        })
        .collect();
    eprintln!("< {}", names.join(" "));
    if let Some(pid) = resp.pid {
        eprintln!("< PID notice: {pid}");
    }
}

fn packet_name(t: PacketType) -> &'static str {
    match t {
        PacketType::BeginRequest => "BEGIN_REQUEST",
        PacketType::AbortRequest => "ABORT_REQUEST",
        PacketType::RespHeader => "RESP_HEADER",
        PacketType::RespStream => "RESP_STREAM",
        PacketType::RespEnd => "RESP_END",
        PacketType::StderrStream => "STDERR_STREAM",
        PacketType::ReqReceived => "REQ_RECEIVED",
        PacketType::ConnClose => "CONN_CLOSE",
        PacketType::InternalError => "INTERNAL_ERROR",
    }
}

/// Standard reason phrases (RFC 9110); unknown codes get an empty one.
fn reason(status: i32) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
