//! lswsgi: serves Python WSGI applications to LiteSpeed Web Server over LSAPI.
//!
//! Start-up order matters: the starter's pid first (before anything can make
//! us wait), the log destination (so every later message lands there), then
//! process hygiene (signals, core limit, stdout folded into stderr, the socket
//! moved off fd 0, LSAPI_* scrubbed), then Python and the `-m` application,
//! then the serve loop: this process's own (Worker mode) or the ProcessGroup
//! parent's, which returns in each forked child to run the same serve loop.

mod config;
mod listen;
mod log;
mod lve;
mod meminfo;
mod pgroup;
mod status;
mod suexec;
mod sys;
mod throttle;
mod trust;
mod worker;
mod wsgi;

use config::Config;
use std::process::ExitCode;
use sys::FdKind;

const USAGE: &str = "\
usage: lswsgi [-m FILE[:CALLABLE]] [-a ADDR]
       lswsgi -h | -v

Serves Python WSGI applications to LiteSpeed Web Server over LSAPI.
LiteSpeed starts it with the LSAPI socket as file descriptor 0.

  -m FILE[:CALLABLE]  load this WSGI script (or dotted module) before serving
                      and use it for every request; CALLABLE defaults to
                      WSGICallableObject or 'application'
  -a ADDR             listen on ADDR instead of fd 0: /path or uds://path
                      (Unix socket), host:port, *:port, [ipv6]:port
  -h, --help          show this help and exit
  -v, --version       show the version and the embedded Python and exit

Without -m, each request names its script in SCRIPT_FILENAME.
Configuration comes from LSAPI_* environment variables (see README.md).
";

/// Command-line options.
struct Args {
    preload: Option<String>,
    address: Option<String>,
}

enum Cli {
    Run(Args),
    Exit(ExitCode),
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let mut out = Args {
        preload: None,
        address: None,
    };
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("option {name} needs a value"))
        };
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(Cli::Exit(ExitCode::SUCCESS));
            }
            "-v" | "--version" => {
                let (pyver, pyexe) = wsgi::interp::build_python();
                println!("lswsgi version {}", env!("CARGO_PKG_VERSION"));
                println!("Python {pyver} ({pyexe})");
                return Ok(Cli::Exit(ExitCode::SUCCESS));
            }
            "-m" => out.preload = Some(value("-m")?),
            "-a" => out.address = Some(value("-a")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Cli::Run(out))
}

// The crate-wide unsafe lints, item by item here (an inner attribute in the
// crate root would reach every module).
fn main() -> ExitCode {
    let starter = sys::getppid();
    let kept_fd3 = sys::close_inherited_fds();
    let lsapi_env = sys::original_lsapi_env();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Cli::Run(a)) => a,
        Ok(Cli::Exit(code)) => return code,
        Err(e) => {
            eprintln!("lswsgi: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // A virtualenv of another Python: the build for that Python installed
    // beside this one serves the site, as this same process with the same
    // descriptors, arguments and environment, so one configured binPath
    // serves every Python a host offers. Before anything irreversible.
    if let Some((version, build)) = wsgi::interp::other_build() {
        dispatch(&version, &build);
    }
    let mut cfg = Config::from_env();
    if let Some(path) = &cfg.stderr_log {
        if let Err(e) = log::redirect_stderr(path) {
            error!("cannot use {path} as the log file: {e}; logging to stderr");
        }
    }
    sys::fold_stdout_into_stderr();
    if let Ok(by) = std::env::var(wsgi::interp::DISPATCHED) {
        let (version, _) = wsgi::interp::build_python();
        info!("serving a Python {version} virtualenv: started by {by}");
    }
    for w in &cfg.warnings {
        warn!("{w}");
    }
    sys::stdin_never_a_terminal();
    sys::limit_core_dumps(cfg.allow_core_dump);
    sys::install_signal_handlers();

    // The socket to serve: -a ADDR, or what LiteSpeed passed as fd 0.
    let (fd, kind) = match &args.address {
        Some(a) => match listen::parse_address(a)
            .and_then(|addr| listen::bind(&addr).map_err(|e| format!("cannot listen on {a}: {e}")))
        {
            Ok(fd) => (fd, FdKind::Listener),
            Err(e) => {
                error!("{e}");
                return ExitCode::from(2);
            }
        },
        None => match sys::fd_kind(0) {
            FdKind::Other => {
                error!(
                    "file descriptor 0 is not a socket; LiteSpeed starts lswsgi with its LSAPI \
                     socket there (use -a ADDR to listen on an address instead)"
                );
                return ExitCode::from(2);
            }
            kind => match sys::move_off_stdin(0) {
                Ok(fd) => (fd, kind),
                Err(e) => {
                    error!("cannot move the LSAPI socket off fd 0: {e}");
                    return ExitCode::FAILURE;
                }
            },
        },
    };

    // Never serve as root: a suEXEC daemon's children switch per connection;
    // otherwise the whole process becomes the default user now, after the
    // socket is bound and before any Python runs.
    let daemon = match suexec::Daemon::set_up(&mut cfg) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };

    // fd 3 is kept for a Worker-mode process LiteSpeed hands a connected
    // socket there; a daemon has no use for it, and its children belong to
    // tenants: the starter's socket must not reach them.
    if daemon.is_some() && kept_fd3 {
        sys::close(3);
    }

    // Application code must not see the worker's own settings.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LSAPI_") {
            std::env::remove_var(&k);
        }
    }
    // SAFETY: every LSAPI_* entry was just removed from the environment and
    // the configuration holds copies, so nothing points into the block.
    unsafe { sys::wipe_env_block(&lsapi_env) };
    if let Ok(root) = std::env::var("WSGI_ROOT") {
        if !root.is_empty() {
            if let Err(e) = std::env::set_current_dir(&root) {
                error!("cannot change to WSGI_ROOT {root}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    if let Err(e) = wsgi::init_python(daemon.is_some()) {
        error!("{e}");
        return ExitCode::FAILURE;
    }
    wsgi::init_context(cfg.stderr_log.is_some(), cfg.app_interface);
    wsgi::errpage::configure(cfg.stderr_log.as_deref());
    let rt = match wsgi::Runtime::new(wsgi::Options {
        preload: args.preload,
        multiprocess: cfg.process_group(),
        load_now: daemon.is_none(),
        max_groups: cfg.max_app_groups as usize,
    }) {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot set up the Python runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    let starter = (!cfg.ppid_no_check).then_some(starter);
    if daemon.is_some() && kind != FdKind::Listener {
        error!("suEXEC daemon mode needs a listening socket (LSAPI_CHILDREN > 1)");
        return ExitCode::FAILURE;
    }
    if cfg.process_group() && kind == FdKind::Listener {
        match pgroup::run(&cfg, fd, starter, daemon.is_some()) {
            pgroup::Role::Parent(why) => {
                pgroup::log_exit(&why);
                let code = match why {
                    pgroup::Exit::Failed(_) => 1,
                    _ => 0,
                };
                wsgi::shutdown(rt, wsgi::End::Finalize, cfg.shutdown_timeout, code)
            }
            pgroup::Role::Child(member, conn) => {
                let gate = match daemon
                    .map(|d| d.start_child(wsgi::adopt_pythonpath))
                    .transpose()
                {
                    Ok(gate) => gate,
                    Err(e) => {
                        error!("{e}");
                        sys::exit_now(1);
                    }
                };
                let tenant = gate.is_some();
                let mut w = worker::Worker::new(&cfg, rt, None);
                w.join_group(member);
                if let Some(gate) = gate {
                    w.guard(gate);
                }
                let why = w.serve_child(conn);
                w.log_exit(&why);
                if tenant {
                    suexec::Daemon::child_exit();
                }
                wsgi::shutdown(w.into_runtime(), wsgi::End::Exit, cfg.shutdown_timeout, 0)
            }
        }
    }

    let mut w = worker::Worker::new(&cfg, rt, starter);
    let why = match kind {
        FdKind::Listener => {
            let why = w.serve_listener(fd);
            worker::close_listener(fd);
            why
        }
        _ => w.serve_connection(fd),
    };
    w.log_exit(&why);
    wsgi::shutdown(
        w.into_runtime(),
        wsgi::End::Finalize,
        cfg.shutdown_timeout,
        0,
    )
}

/// Execs `build` (the worker for Python `version`) in place of this process;
/// returns only if that fails (logged; this worker then answers 500s).
fn dispatch(version: &str, build: &std::path::Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let me = std::env::current_exe().unwrap_or_default();
    std::env::set_var(wsgi::interp::DISPATCHED, &me);
    let path = CString::new(build.as_os_str().as_bytes()).ok();
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_vec()).ok())
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    if let Some(path) = path {
        // SAFETY: path and every argv entry are NUL-terminated strings that
        // outlive the call, argv ends with NULL; execv keeps the environment
        // (with the marker just set) and every descriptor without
        // close-on-exec.
        unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    }
    std::env::remove_var(wsgi::interp::DISPATCHED);
    error!(
        "cannot start {} for the Python {version} virtualenv: {}",
        build.display(),
        std::io::Error::last_os_error()
    );
}
