//! LiteSpeed's own lswsgi 2.1 for side-by-side benchmarks, built from its
//! source archive (shared by bench/load.rs and bench/ols_load.rs).

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo puts build output (CARGO_TARGET_DIR, else ./target).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// LiteSpeed's lswsgi 2.1, built from `wsgi-lsapi-2.1.tar.gz` in the
/// directory LSWSGI_PEER_LSWSGI_SRC names, under target/peer-lswsgi, against
/// the Python this crate embeds (so both link the same libpython). The build
/// is reused while the archive and the Python are the same.
pub fn litespeed_lswsgi() -> String {
    use std::process::Command;
    let src = std::env::var_os("LSWSGI_PEER_LSWSGI_SRC").unwrap_or_else(|| {
        panic!("--litespeed needs LSWSGI_PEER_LSWSGI_SRC=<directory holding wsgi-lsapi-2.1.tar.gz>")
    });
    let archive = PathBuf::from(src).join("wsgi-lsapi-2.1.tar.gz");
    let meta = std::fs::metadata(&archive)
        .unwrap_or_else(|e| panic!("LSWSGI_PEER_LSWSGI_SRC: {}: {e}", archive.display()));
    let python = env!("LSWSGI_PYTHON_EXECUTABLE");
    let stamp_text = format!(
        "{}\n{}\n{:?}\n{python}\n",
        archive.display(),
        meta.len(),
        meta.modified().ok()
    );
    let base = target_dir().join("peer-lswsgi");
    let dir = base.join("wsgi-lsapi-2.1");
    let bin = dir.join("lswsgi");
    let stamp = base.join("built-from");
    if bin.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text) {
        return bin.to_string_lossy().into_owned();
    }
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("create target/peer-lswsgi");
    let step = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({:?}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    step(
        Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&base),
        "tar -xzf wsgi-lsapi-2.1.tar.gz",
    );
    step(
        Command::new(python).arg("./configure.py").current_dir(&dir),
        "configure.py",
    );
    step(Command::new("make").current_dir(&dir), "make");
    assert!(bin.is_file(), "make did not produce {}", bin.display());
    std::fs::write(&stamp, stamp_text).expect("write build stamp");
    eprintln!("built LiteSpeed's lswsgi 2.1: {}", bin.display());
    bin.to_string_lossy().into_owned()
}
