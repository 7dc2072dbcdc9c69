//! The OpenLiteSpeed builds the real-server tests (tests/ols.rs) and the
//! bench behind a real server (bench/ols_load.rs) run: an installed one, or
//! one built from a kit and kept outside the clone by the kit's hash.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The OpenLiteSpeed releases: 1.5.12 and what hosts run today.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Server {
    /// 1.5.12 (2019): `LSWSGI_OLS_PREFIX`, else `LSWSGI_OLS_SRC` (a
    /// directory with `build-ols.sh` and the source archive it builds).
    V1_5,
    /// 1.9.1, what hosts run today: `LSWSGI_OLS19_PREFIX`, else
    /// `LSWSGI_OLS19_SRC` (a directory with `build.sh` and `src-archives/`).
    V1_9,
}

impl Server {
    pub fn label(self) -> &'static str {
        match self {
            Server::V1_5 => "OpenLiteSpeed 1.5.12",
            Server::V1_9 => "OpenLiteSpeed 1.9.1",
        }
    }

    /// (prefix variable, kit variable, build script in the kit, the files
    /// whose hash names the cached build).
    fn kit(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Server::V1_5 => (
                "LSWSGI_OLS_PREFIX",
                "LSWSGI_OLS_SRC",
                "build-ols.sh",
                "build-ols.sh openlitespeed-1.5.12.tar.gz",
            ),
            Server::V1_9 => (
                "LSWSGI_OLS19_PREFIX",
                "LSWSGI_OLS19_SRC",
                "build.sh",
                "build.sh src-archives/*",
            ),
        }
    }
}

pub enum Missing {
    /// Neither variable is set.
    NotGiven(String),
    /// Set, but no usable server came of it.
    Broken(String),
}

/// Where built servers are kept between runs, outside the clone (a fresh
/// CI clone reuses them): `LSWSGI_OLS_CACHE`, else /var/cache/lswsgi when it
/// can be made, else the cargo target directory.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LSWSGI_OLS_CACHE") {
        return PathBuf::from(d);
    }
    let system = Path::new("/var/cache/lswsgi");
    if std::fs::create_dir_all(system).is_ok() && !is_read_only(system) {
        return system.to_path_buf();
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn is_read_only(dir: &Path) -> bool {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: access(2) reads the NUL-terminated path `c` owns; no other
    // memory is touched.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) != 0 }
}

/// The prefix of `server` (`PREFIX/bin/openlitespeed`): given, or built.
pub fn find_or_build(server: Server) -> Result<PathBuf, Missing> {
    let (prefix_var, kit_var, script_name, hashed) = server.kit();
    if let Some(prefix) = std::env::var_os(prefix_var) {
        let prefix = PathBuf::from(prefix);
        if !prefix.join("bin/openlitespeed").is_file() {
            return Err(Missing::Broken(format!(
                "{prefix_var}={} has no bin/openlitespeed",
                prefix.display()
            )));
        }
        return Ok(prefix);
    }
    let Some(kit) = std::env::var_os(kit_var) else {
        return Err(Missing::NotGiven(format!(
            "neither {kit_var} (a directory with {script_name} and the {} sources) \
             nor {prefix_var} (an installed server) is set",
            server.label()
        )));
    };
    let script = Path::new(&kit).join(script_name);
    if !script.is_file() {
        return Err(Missing::Broken(format!(
            "{kit_var}: no {}",
            script.display()
        )));
    }
    // The build is named by a hash of the kit, so a changed kit builds anew
    // and an unchanged one is reused (the script itself returns at once when
    // its prefix is up to date). One lock for every build: two processes
    // never build into one prefix at once, and the two servers' scripts
    // never run apt-get at the same time (the second would find dpkg
    // locked).
    let sum = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; cd \"$1\" && sha256sum {hashed} | sha256sum"
        ))
        .arg("bash")
        .arg(&kit)
        .output()
        .map_err(|e| Missing::Broken(format!("sha256sum: {e}")))?;
    let sum = String::from_utf8_lossy(&sum.stdout).into_owned();
    let sum = sum.split_whitespace().next().unwrap_or("");
    if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Missing::Broken(format!(
            "{kit_var}: cannot hash {hashed} in {}",
            Path::new(&kit).display()
        )));
    }
    let version = &server.label()["OpenLiteSpeed ".len()..];
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .map_err(|e| Missing::Broken(format!("{}: {e}", cache.display())))?;
    let prefix = cache.join(format!("ols-{version}-{}", &sum[..16]));
    let started = Instant::now();
    let out = Command::new("flock")
        .arg(cache.join("ols-build.lock"))
        .arg("bash")
        .arg(&script)
        .arg(&prefix)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Missing::Broken(format!("flock bash {}: {e}", script.display())))?;
    if !out.status.success() || !prefix.join("bin/openlitespeed").is_file() {
        return Err(Missing::Broken(format!(
            "{} {} failed ({:?}):\n{}{}",
            script.display(),
            prefix.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    eprintln!(
        "{script_name}: {} in {:.1} s",
        String::from_utf8_lossy(&out.stdout).trim(),
        started.elapsed().as_secs_f64()
    );
    Ok(prefix)
}
