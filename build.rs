//! Records which Python the worker embeds, so it can find that Python's own
//! standard library whatever PATH holds at run time, and puts the directory of
//! its shared libpython on the binary's run-time search path.
//!
//! The interpreter is the one PYO3_PYTHON names (the same rule pyo3-ffi's build
//! uses to pick the headers and library), or `python3` on PATH.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, sysconfig\n\
             print(sys.executable)\n\
             print(sys.base_prefix)\n\
             print('%d.%d' % sys.version_info[:2])\n\
             print(sysconfig.get_config_var('LIBDIR') or '')\n\
             print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} to locate the Python to embed: {e}"));
    assert!(out.status.success(), "{python} failed to describe itself");
    let text = String::from_utf8(out.stdout).expect("python paths are UTF-8");
    let mut lines = text.lines();
    let mut next = || lines.next().unwrap_or("").to_string();
    let (executable, prefix, version, libdir, stdlib) = (next(), next(), next(), next(), next());
    println!("cargo:rustc-env=LSWSGI_PYTHON_EXECUTABLE={executable}");
    println!("cargo:rustc-env=LSWSGI_PYTHON_PREFIX={prefix}");
    println!("cargo:rustc-env=LSWSGI_PYTHON_VERSION={version}");
    println!("cargo:rustc-env=LSWSGI_PYTHON_STDLIB={stdlib}");
    // 3.13 replaced _PyObject_LookupAttr with PyObject_GetOptionalAttr.
    println!("cargo::rustc-check-cfg=cfg(lswsgi_py313)");
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if version.starts_with("3.") && minor >= 13 {
        println!("cargo:rustc-cfg=lswsgi_py313");
    }
    if !libdir.is_empty() {
        println!("cargo:rustc-link-arg-bin=lswsgi=-Wl,-rpath,{libdir}");
    }
}
