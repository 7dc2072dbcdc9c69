//! Which paths a root process may trust: the one rule ([`root_trusted`]) and
//! its uses for what root reads, runs or execs (a Python installation, a
//! worker build for another Python). A root process must never run a
//! tenant's code, so everything it starts Python from or execs is checked
//! here.

use std::path::Path;

/// `Err` (naming the culprit) unless root may trust `path`: it and every
/// directory above it belong to root and are not writable by group or
/// others (a sticky directory such as /tmp excepted: there others can
/// replace only their own entries). Walked one component at a time with
/// lstat, never following a link unchecked: a symbolic link must itself be
/// root's, in a trusted directory, and its target is walked the same way.
/// `path` must exist. The one "may root trust this path" rule of the worker
/// (log files, the secret, Python's prefix, `sys.path` of a daemon); the
/// functions below apply it to a Python installation and to a build to exec.
pub fn root_trusted(path: &std::path::Path) -> Result<(), String> {
    use std::ffi::OsString;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Component, PathBuf};
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("the current directory: {e}"))?
            .join(path)
    };
    let check = |p: &std::path::Path, m: &std::fs::Metadata| {
        let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
        let writable = m.mode() & 0o022 != 0 && !sticky_dir && !m.file_type().is_symlink();
        if m.uid() != 0 || writable {
            return Err(format!(
                "{} is owned by uid {} with mode {:04o}",
                p.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
        Ok(())
    };
    // Components still to walk, the next one last; `cur` is the walked,
    // link-free and trusted prefix.
    let mut todo: Vec<OsString> = Vec::new();
    let push = |todo: &mut Vec<OsString>, p: &std::path::Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                _ => {}
            }
        }
    };
    push(&mut todo, &abs);
    let mut cur = PathBuf::from("/");
    let root = std::fs::symlink_metadata(&cur).map_err(|e| format!("/: {e}"))?;
    check(&cur, &root)?;
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let m = std::fs::symlink_metadata(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        check(&next, &m)?;
        if m.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return Err(format!("{}: too many symbolic links", abs.display()));
            }
            let target =
                std::fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            push(&mut todo, &target);
            continue;
        }
        cur = next;
    }
    Ok(())
}

/// [`root_trusted`] for `dir` and everything in it, `depth` levels down,
/// without following links (a link inside must be root's; where it points
/// is not read as part of this tree). Nothing to check when `dir` does not
/// exist.
pub fn root_trusted_tree(dir: &std::path::Path, depth: u32) -> Result<(), String> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    root_trusted(dir)?;
    fn walk(d: &std::path::Path, depth: u32) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(d) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.uid() != 0 || (m.mode() & 0o022 != 0 && !m.file_type().is_symlink()) {
                return Err(format!(
                    "{} is owned by uid {} with mode {:04o}",
                    e.path().display(),
                    m.uid(),
                    m.mode() & 0o7777
                ));
            }
            if m.is_dir() && depth > 0 {
                walk(&e.path(), depth - 1)?;
            }
        }
        Ok(())
    }
    walk(dir, depth)
}

/// `Err` unless root may start Python from `path` ([`root_trusted`]): what a
/// root process may run or import from without running a tenant's code.
/// `what` names the setting the path came from, for the message.
pub fn python_path(path: &Path, what: &str) -> Result<(), String> {
    root_trusted(path).map_err(|e| untrusted_python(what, path, &e))
}

fn untrusted_python(what: &str, path: &Path, why: &str) -> String {
    format!(
        "{what} {}: {why}; a suEXEC daemon (root) only starts Python from paths that root owns \
         and nobody else can write",
        path.display()
    )
}

/// [`python_path`] for a Python prefix and the parts of it that run at
/// start-up: for a virtualenv (pyvenv.cfg present) the whole of its lib/
/// (site-packages and its .pth files); for an installation of Python
/// `version` (`X.Y`), lib/pythonX.Y and the packages in it. Elsewhere in the
/// prefix (share/, other languages' trees) is not read.
pub fn python_prefix(prefix: &Path, version: &str, what: &str) -> Result<(), String> {
    python_path(prefix, what)?;
    let cfg = prefix.join("pyvenv.cfg");
    let (tree, depth) = if cfg.exists() {
        python_path(&cfg, what)?;
        (prefix.join("lib"), 4)
    } else {
        (prefix.join(format!("lib/python{version}")), 2)
    };
    root_trusted_tree(&tree, depth).map_err(|e| untrusted_python(what, prefix, &e))
}

/// Whether the file at `path` (with metadata `m`) may be exec'd as another
/// build of this worker: as root (`as_root`) it must be [`root_trusted`];
/// otherwise group and others must not be able to write it.
pub fn may_exec_build(path: &Path, m: &std::fs::Metadata, as_root: bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    if as_root {
        root_trusted(path).is_ok()
    } else {
        m.mode() & 0o022 == 0
    }
}
