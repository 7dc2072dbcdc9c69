//! Process environment → typed configuration, read once at start-up.
//!
//! Pure: [`Config::from_lookup`] takes a lookup function, so tests need no real
//! environment. Defaults, units and limits follow LiteSpeed's lsapilib; a value
//! that does not parse keeps the default and produces a warning for the log.

/// Free-memory threshold for LSAPI_AVOID_FORK=1, in bytes (1 GiB).
pub const AVOID_FORK_DEFAULT: u64 = 1 << 30;
/// Smallest accepted AVOID_FORK threshold, in bytes (10 MiB).
pub const AVOID_FORK_MIN: u64 = 10 << 20;
/// Largest LSAPI_CHILDREN.
pub const MAX_CHILDREN: u32 = 10000;
/// Largest value of a variable counted in seconds (10 years): far beyond any
/// real limit, and small enough that every use (× 1000 for milliseconds,
/// plus a grace period) stays far from overflow.
pub const MAX_SECS: u64 = 10 * 365 * 24 * 3600;
/// Largest LSAPI_SLOW_REQ_MSECS (MAX_SECS in milliseconds).
pub const MAX_MSECS: u64 = MAX_SECS * 1000;
/// Largest LSAPI_MAX_REQS (2³² − 1: lsapilib reads it as an int; a
/// per-request bookkeeping of any size stays far from overflow).
pub const MAX_REQS: u64 = u32::MAX as u64;

/// Everything the LSAPI_* (and LS_STDERR_LOG) variables configure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// LSAPI_CHILDREN: > 1 selects ProcessGroup mode with up to this many children.
    pub children: u32,
    /// LSAPI_AVOID_FORK: `Some(bytes)` when children keep the listener while free
    /// memory stays above this threshold; `None` when off.
    pub avoid_fork: Option<u64>,
    /// LSAPI_EXTRA_CHILDREN: children allowed above `children` while some are stuck.
    pub extra_children: u32,
    /// LSAPI_MAX_REQS: requests one process serves before it exits (≥ 1).
    pub max_reqs: u64,
    /// LSAPI_MAX_REQS_JITTER, percent (0–100, default 10): each process
    /// leaves after MAX_REQS less a random share of up to this much of it,
    /// so children forked together are not all re-forked together.
    pub max_reqs_jitter: u8,
    /// LSAPI_MAX_IDLE, seconds: an idle child (or Worker-mode process) exits;
    /// 0 = never (as in lsapilib).
    pub max_idle: u64,
    /// LSAPI_MAX_IDLE_CHILDREN: idle children beyond this are told to exit.
    pub max_idle_children: u32,
    /// LSAPI_MAX_PROCESS_TIME, seconds (≥ 1): a request running longer is killed.
    pub max_process_time: u64,
    /// LSAPI_PGRP_MAX_IDLE, seconds: the parent exits after this long without
    /// children; `None` = never (unset or 0).
    pub pgrp_max_idle: Option<u64>,
    /// LSAPI_PPID_NO_CHECK set: do not exit when the starting process dies.
    pub ppid_no_check: bool,
    /// LSAPI_ALLOW_CORE_DUMP set: keep RLIMIT_CORE.
    pub allow_core_dump: bool,
    /// LSAPI_KEEP_LISTEN: 0 close after first accept, 1 keep a while, 2 until
    /// idle. AVOID_FORK forces 2, as in lsapilib: taking connections is its point.
    pub keep_listen: u8,
    /// LSAPI_ACCEPT_NOTIFY: send REQ_RECEIVED right after accept.
    pub accept_notify: bool,
    /// LSAPI_SLOW_REQ_MSECS: log requests slower than this (0 = off), milliseconds.
    pub slow_req_msecs: u64,
    /// LSAPI_MAX_BUSY_WORKER: with this many children busy, finished children
    /// send CONN_CLOSE and drop their connection. `None` (unset or 0, the
    /// default): never, as lsapilib behaves — every shed connection costs
    /// the server a reconnect and the group, often, a fork.
    pub max_busy_worker: Option<u32>,
    /// LSAPI_STDERR_LOG or LS_STDERR_LOG: append stderr (and stdout) to this file.
    pub stderr_log: Option<String>,
    /// LSAPI_SECRET: path of the suEXEC shared secret file.
    pub secret_file: Option<String>,
    /// LSAPI_DEFAULT_UID: a number or a user name (resolved by suexec).
    pub default_uid: Option<String>,
    /// LSAPI_DEFAULT_GID: a number or a group name (resolved by suexec).
    pub default_gid: Option<String>,
    /// LSAPI_MIN_UID: the lowest uid ever served as (default 11, never 0).
    pub min_uid: u32,
    /// LSAPI_MIN_GID: the lowest gid ever served as (default 10, never 0).
    pub min_gid: u32,
    /// LSAPI_LVE_ENABLE (or LVE_ENABLE): 0 off, 1 LVE, 2 LVE + CageFS,
    /// 3 CageFS without the user switch.
    pub lve_enable: u8,
    /// LSAPI_MAX_APP_GROUPS (0–1000, default 10): most application groups
    /// (sub-interpreters) one process creates.
    pub max_app_groups: u32,
    /// LSAPI_SHUTDOWN_TIMEOUT, seconds (1–3600, default 5): the bound on a
    /// process's exit work (non-daemon threads, atexit handlers) after which
    /// it exits anyway, like mod_wsgi's shutdown-timeout.
    pub shutdown_timeout: u64,
    /// LSAPI_IMMORTALIZE (0 or 1, default 1): a ProcessGroup parent on
    /// CPython 3.12/3.13 makes its preloaded heap immortal before the first
    /// fork, so children stop copying its pages through reference counts.
    pub immortalize: bool,
    /// LSAPI_APP_INTERFACE (`auto`, `wsgi` or `asgi`; default `auto`): how
    /// the application callable is called.
    pub app_interface: AppInterface,
    /// Problems found while reading the variables, for the log.
    pub warnings: Vec<String>,
}

/// Which interface the application callable speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppInterface {
    /// ASGI when the callable is a coroutine function or its `__call__` is
    /// one, WSGI otherwise.
    Auto,
    /// Always WSGI (PEP 3333).
    Wsgi,
    /// Always ASGI 3.0.
    Asgi,
}

impl Config {
    /// Reads the real process environment.
    pub fn from_env() -> Config {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get` (a variable's value, if set).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Config {
        let warnings = std::cell::RefCell::new(Vec::new());
        let num = |key: &str, default: u64, max: u64| -> u64 {
            match get(key) {
                None => default,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n <= max => n,
                    Ok(n) => {
                        warnings
                            .borrow_mut()
                            .push(format!("{key}={n} is above {max}; using {max}"));
                        max
                    }
                    // All digits but beyond u64: as large as allowed.
                    Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                        warnings
                            .borrow_mut()
                            .push(format!("{key}={} is above {max}; using {max}", v.trim()));
                        max
                    }
                    Err(_) => {
                        warnings
                            .borrow_mut()
                            .push(format!("{key}={v:?} is not a number; using {default}"));
                        default
                    }
                },
            }
        };
        // A value of 0 where only a positive one makes sense keeps the default,
        // as lsapilib's `if (n > 0)` does.
        let positive = |key: &str, default: u64, max: u64| match num(key, default, max) {
            0 => default,
            n => n,
        };
        let children = num("LSAPI_CHILDREN", 0, MAX_CHILDREN as u64) as u32;
        let max_reqs = positive("LSAPI_MAX_REQS", 10000, MAX_REQS);
        let max_reqs_jitter = num("LSAPI_MAX_REQS_JITTER", 10, 100) as u8;
        let max_idle = num("LSAPI_MAX_IDLE", 300, MAX_SECS);
        let max_process_time = positive("LSAPI_MAX_PROCESS_TIME", 3600, MAX_SECS);
        let max_app_groups = num("LSAPI_MAX_APP_GROUPS", 10, 1000) as u32;
        let shutdown_timeout = positive("LSAPI_SHUTDOWN_TIMEOUT", 5, 3600);
        let keep_listen = num("LSAPI_KEEP_LISTEN", 1, 2) as u8;
        let accept_notify = num("LSAPI_ACCEPT_NOTIFY", 0, 1) == 1;
        let immortalize = num("LSAPI_IMMORTALIZE", 1, 1) == 1;
        let slow_req_msecs = num("LSAPI_SLOW_REQ_MSECS", 0, MAX_MSECS);
        // OpenLiteSpeed 1.9 sets INT32_MAX in every App Server context to
        // mean "no limit": nothing to warn the account about.
        let pgrp_max_idle = match get("LSAPI_PGRP_MAX_IDLE") {
            Some(v) if v.trim() == "2147483647" => None,
            Some(_) => Some(num("LSAPI_PGRP_MAX_IDLE", 0, MAX_SECS)).filter(|&s| s > 0),
            None => None,
        };
        let min_uid = num("LSAPI_MIN_UID", 11, u32::MAX as u64 - 1) as u32;
        let min_gid = num("LSAPI_MIN_GID", 10, u32::MAX as u64 - 1) as u32;
        let lve_enable = if get("LSAPI_LVE_ENABLE").is_some() {
            num("LSAPI_LVE_ENABLE", 0, 3)
        } else {
            num("LVE_ENABLE", 0, 3)
        } as u8;

        let avoid_fork = match get("LSAPI_AVOID_FORK") {
            None => None,
            Some(v) => match parse_size(&v) {
                Some(0) => None,
                Some(1) => Some(AVOID_FORK_DEFAULT),
                Some(n) => Some(n.max(AVOID_FORK_MIN)),
                None => {
                    warnings
                        .borrow_mut()
                        .push(format!("LSAPI_AVOID_FORK={v:?} is not a size; off"));
                    None
                }
            },
        };
        let forking = avoid_fork.is_some();
        let extra_default = if forking { 0 } else { children as u64 / 3 };
        let extra_children = num("LSAPI_EXTRA_CHILDREN", extra_default, MAX_CHILDREN as u64) as u32;
        let idle_default = if forking {
            children as u64 + 1
        } else {
            (children as u64 / 3).max(1)
        };
        let max_idle_children =
            positive("LSAPI_MAX_IDLE_CHILDREN", idle_default, MAX_CHILDREN as u64) as u32;
        let max_busy_worker =
            Some(num("LSAPI_MAX_BUSY_WORKER", 0, MAX_CHILDREN as u64) as u32).filter(|&n| n > 0);

        let app_interface = match get("LSAPI_APP_INTERFACE").as_deref().map(str::trim) {
            None | Some("") => AppInterface::Auto,
            Some(v) if v.eq_ignore_ascii_case("auto") => AppInterface::Auto,
            Some(v) if v.eq_ignore_ascii_case("wsgi") => AppInterface::Wsgi,
            Some(v) if v.eq_ignore_ascii_case("asgi") => AppInterface::Asgi,
            Some(v) => {
                warnings.borrow_mut().push(format!(
                    "LSAPI_APP_INTERFACE={v:?} is not auto, wsgi or asgi; using auto"
                ));
                AppInterface::Auto
            }
        };

        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        Config {
            children,
            avoid_fork,
            extra_children,
            max_reqs,
            max_reqs_jitter,
            max_idle,
            max_idle_children,
            max_process_time,
            pgrp_max_idle,
            ppid_no_check: get("LSAPI_PPID_NO_CHECK").is_some(),
            allow_core_dump: get("LSAPI_ALLOW_CORE_DUMP").is_some(),
            keep_listen: if forking { 2 } else { keep_listen },
            accept_notify,
            slow_req_msecs,
            max_busy_worker,
            stderr_log: nonempty("LSAPI_STDERR_LOG").or_else(|| nonempty("LS_STDERR_LOG")),
            secret_file: nonempty("LSAPI_SECRET"),
            default_uid: nonempty("LSAPI_DEFAULT_UID"),
            default_gid: nonempty("LSAPI_DEFAULT_GID"),
            min_uid,
            min_gid,
            lve_enable,
            shutdown_timeout,
            max_app_groups,
            immortalize,
            app_interface,
            warnings: warnings.into_inner(),
        }
    }

    /// Whether this configuration selects ProcessGroup mode.
    pub fn process_group(&self) -> bool {
        self.children > 1
    }

    /// Free memory, in bytes, above which a child keeps taking connections on
    /// the shared listener: the AVOID_FORK size, else lsapilib's 1 GiB.
    pub fn listen_threshold(&self) -> u64 {
        self.avoid_fork.unwrap_or(AVOID_FORK_DEFAULT)
    }

    /// suEXEC daemon mode: each child serves one tenant, so none keeps the
    /// shared listener (LSAPI_KEEP_LISTEN and LSAPI_AVOID_FORK are off).
    pub fn one_tenant_per_child(&mut self) {
        self.keep_listen = 0;
        self.avoid_fork = None;
    }

    /// Most children the group runs at once: CHILDREN + EXTRA_CHILDREN.
    pub fn child_limit(&self) -> u32 {
        self.children.saturating_add(self.extra_children)
    }
}

/// Parses a byte size: plain digits, or digits with a `K`, `M` or `G` suffix
/// (binary units, case-insensitive, an optional trailing `B`).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_suffix(['b', 'B']).unwrap_or(v);
    let (digits, shift) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 10),
        Some((i, 'm' | 'M')) => (&v[..i], 20),
        Some((i, 'g' | 'G')) => (&v[..i], 30),
        _ => (v, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = config(&[]);
        assert_eq!(c.children, 0);
        assert!(!c.process_group());
        assert_eq!(c.max_reqs, 10000);
        assert_eq!(c.max_reqs_jitter, 10);
        assert_eq!(c.max_idle, 300);
        assert_eq!(c.max_process_time, 3600);
        assert_eq!(c.pgrp_max_idle, None);
        assert_eq!(c.keep_listen, 1);
        assert_eq!(c.avoid_fork, None);
        assert_eq!(c.shutdown_timeout, 5);
        assert_eq!(c.max_app_groups, 10);
        assert!(c.immortalize);
        assert_eq!(c.app_interface, AppInterface::Auto);
        assert!(!c.ppid_no_check && !c.allow_core_dump && !c.accept_notify);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn derived_defaults_follow_children() {
        let c = config(&[("LSAPI_CHILDREN", "9")]);
        assert!(c.process_group());
        assert_eq!(c.extra_children, 3);
        assert_eq!(c.max_idle_children, 3);
        assert_eq!(c.max_busy_worker, None, "never shed unless asked");
        let c = config(&[("LSAPI_CHILDREN", "9"), ("LSAPI_MAX_BUSY_WORKER", "0")]);
        assert_eq!(c.max_busy_worker, None, "0 is off, as in lsapilib");
        let c = config(&[("LSAPI_CHILDREN", "9"), ("LSAPI_MAX_BUSY_WORKER", "2")]);
        assert_eq!(c.max_busy_worker, Some(2));
        let c = config(&[("LSAPI_CHILDREN", "2")]);
        assert_eq!(c.max_idle_children, 1);
        let c = config(&[("LSAPI_CHILDREN", "9"), ("LSAPI_AVOID_FORK", "1")]);
        assert_eq!(c.avoid_fork, Some(AVOID_FORK_DEFAULT));
        assert_eq!(c.extra_children, 0);
        assert_eq!(c.max_idle_children, 10);
    }

    #[test]
    fn avoid_fork_sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        let c = config(&[("LSAPI_AVOID_FORK", "1M")]);
        assert_eq!(c.avoid_fork, Some(AVOID_FORK_MIN));
        let c = config(&[("LSAPI_AVOID_FORK", "0")]);
        assert_eq!(c.avoid_fork, None);
        let c = config(&[("LSAPI_AVOID_FORK", "512M"), ("LSAPI_KEEP_LISTEN", "0")]);
        assert_eq!(c.avoid_fork, Some(512 << 20));
        assert_eq!(c.keep_listen, 2);
    }

    #[test]
    fn zero_means_default_or_off_like_lsapilib() {
        let c = config(&[
            ("LSAPI_MAX_REQS", "0"),
            ("LSAPI_MAX_PROCESS_TIME", "0"),
            ("LSAPI_MAX_IDLE_CHILDREN", "0"),
            ("LSAPI_PGRP_MAX_IDLE", "0"),
            ("LSAPI_MAX_IDLE", "0"),
            ("LSAPI_CHILDREN", "6"),
        ]);
        assert_eq!(c.max_reqs, 10000);
        assert_eq!(c.max_process_time, 3600);
        assert_eq!(c.max_idle_children, 2);
        assert_eq!(c.pgrp_max_idle, None);
        assert_eq!(c.max_idle, 0);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn bad_values_keep_defaults_and_warn() {
        let c = config(&[("LSAPI_MAX_REQS", "lots"), ("LSAPI_CHILDREN", "20000")]);
        assert_eq!(c.max_reqs, 10000);
        assert_eq!(c.children, MAX_CHILDREN);
        assert_eq!(c.warnings.len(), 2);
    }

    /// Every numeric variable at u64::MAX, and beyond it.
    const NUMERIC: [&str; 17] = [
        "LSAPI_IMMORTALIZE",
        "LSAPI_MAX_APP_GROUPS",
        "LSAPI_CHILDREN",
        "LSAPI_EXTRA_CHILDREN",
        "LSAPI_MAX_REQS",
        "LSAPI_MAX_IDLE",
        "LSAPI_MAX_IDLE_CHILDREN",
        "LSAPI_MAX_PROCESS_TIME",
        "LSAPI_PGRP_MAX_IDLE",
        "LSAPI_KEEP_LISTEN",
        "LSAPI_ACCEPT_NOTIFY",
        "LSAPI_SLOW_REQ_MSECS",
        "LSAPI_MAX_BUSY_WORKER",
        "LSAPI_SHUTDOWN_TIMEOUT",
        "LSAPI_MAX_REQS_JITTER",
        "LSAPI_MIN_UID",
        "LSAPI_MIN_GID",
    ];

    fn check_clamped(c: &Config) {
        assert_eq!(c.children, MAX_CHILDREN);
        assert_eq!(c.extra_children, MAX_CHILDREN);
        assert_eq!(c.max_reqs, MAX_REQS);
        assert_eq!(c.max_idle, MAX_SECS);
        assert_eq!(c.max_idle_children, MAX_CHILDREN);
        assert_eq!(c.max_process_time, MAX_SECS);
        assert_eq!(c.pgrp_max_idle, Some(MAX_SECS));
        assert_eq!(c.keep_listen, 2);
        assert!(c.accept_notify && c.immortalize);
        assert_eq!(c.slow_req_msecs, MAX_MSECS);
        assert_eq!(c.max_busy_worker, Some(MAX_CHILDREN));
        assert_eq!(c.shutdown_timeout, 3600);
        assert_eq!(c.max_app_groups, 1000);
        assert_eq!(c.max_reqs_jitter, 100);
        assert_eq!((c.min_uid, c.min_gid), (u32::MAX - 1, u32::MAX - 1));
        assert_eq!(c.warnings.len(), NUMERIC.len(), "{:?}", c.warnings);
        // Every millisecond figure derived from them stays exact.
        for secs in [c.max_idle, c.max_process_time, c.pgrp_max_idle.unwrap()] {
            assert!((secs + 5).checked_mul(1000).is_some());
        }
        assert!(c.max_reqs.checked_mul(2).is_some());
    }

    #[test]
    fn max_int_values_are_clamped_with_a_warning() {
        for v in ["18446744073709551615", "99999999999999999999999999"] {
            let pairs: Vec<(&str, &str)> = NUMERIC.iter().map(|k| (*k, v)).collect();
            let c = config(&pairs);
            check_clamped(&c);
            assert!(c.warnings[0].contains("is above"), "{v}: {:?}", c.warnings);
        }
        let c = config(&[("LSAPI_AVOID_FORK", "18446744073709551615")]);
        assert_eq!(c.avoid_fork, Some(u64::MAX));
        let c = config(&[("LSAPI_AVOID_FORK", "18446744073709551615G")]);
        assert_eq!(c.avoid_fork, None);
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn immortalize_switch() {
        assert!(!config(&[("LSAPI_IMMORTALIZE", "0")]).immortalize);
        assert!(config(&[("LSAPI_IMMORTALIZE", "1")]).immortalize);
        let c = config(&[("LSAPI_IMMORTALIZE", "off")]);
        assert!(c.immortalize, "a bad value keeps the default");
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn stderr_log_and_flags() {
        let c = config(&[
            ("LS_STDERR_LOG", "/tmp/b.log"),
            ("LSAPI_PPID_NO_CHECK", "1"),
            ("LSAPI_PGRP_MAX_IDLE", "30"),
        ]);
        assert_eq!(c.stderr_log.as_deref(), Some("/tmp/b.log"));
        assert!(c.ppid_no_check);
        assert_eq!(c.pgrp_max_idle, Some(30));
        // OpenLiteSpeed 1.9's "no limit", silently.
        let c = config(&[("LSAPI_PGRP_MAX_IDLE", "2147483647")]);
        assert_eq!((c.pgrp_max_idle, c.warnings.len()), (None, 0));
        let c = config(&[
            ("LSAPI_STDERR_LOG", "/tmp/a.log"),
            ("LS_STDERR_LOG", "/tmp/b.log"),
        ]);
        assert_eq!(c.stderr_log.as_deref(), Some("/tmp/a.log"));
    }

    #[test]
    fn app_interface_override() {
        let get = |v: &str| config(&[("LSAPI_APP_INTERFACE", v)]);
        assert_eq!(get("asgi").app_interface, AppInterface::Asgi);
        assert_eq!(get(" WSGI ").app_interface, AppInterface::Wsgi);
        assert_eq!(get("auto").app_interface, AppInterface::Auto);
        assert_eq!(get("").app_interface, AppInterface::Auto);
        let c = get("fastapi");
        assert_eq!(c.app_interface, AppInterface::Auto);
        assert!(
            c.warnings[0].contains("LSAPI_APP_INTERFACE"),
            "{:?}",
            c.warnings
        );
    }
}
