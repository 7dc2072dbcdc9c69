//! Records which Python the worker embeds, so it can find that Python's own
//! standard library whatever PATH holds at run time, and puts the directory of
//! its shared libpython on the binary's run-time search path.
//!
//! The interpreter is the one PYO3_PYTHON names (the same rule pyo3-ffi's build
//! uses to pick the headers and library), or `python3` on PATH.
//!
//! It also refuses, with a plain answer, a Python outside the tested range.
//! This script has no build-dependencies on purpose: it is compiled and run
//! before pyo3-ffi's (which waits for pyo3-build-config), so for an
//! unsupported Python the user reads this message, not pyo3-ffi's.

use std::process::Command;

/// The CPython minor versions (3.x) lswsgi is built and tested against.
const SUPPORTED: std::ops::RangeInclusive<u32> = 9..=13;

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
    let minor = version
        .strip_prefix("3.")
        .and_then(|m| m.parse::<u32>().ok())
        .filter(|m| SUPPORTED.contains(m));
    let Some(minor) = minor else {
        eprintln!(
            "\nlswsgi: {python} is Python {version} ({executable}); lswsgi supports CPython \
             3.{}–3.{}.\nChoose another Python to build against, e.g.\n    \
             PYO3_PYTHON=python3.12 cargo build --release\n    \
             scripts/install.sh --python /usr/bin/python3.12\n",
            SUPPORTED.start(),
            SUPPORTED.end()
        );
        std::process::exit(1);
    };
    println!("cargo:rustc-env=LSWSGI_PYTHON_EXECUTABLE={executable}");
    println!("cargo:rustc-env=LSWSGI_PYTHON_PREFIX={prefix}");
    println!("cargo:rustc-env=LSWSGI_PYTHON_VERSION={version}");
    println!("cargo:rustc-env=LSWSGI_PYTHON_STDLIB={stdlib}");
    // One cfg per C API change the code follows: lswsgi_py310 (3.10 added
    // Py_TPFLAGS_DISALLOW_INSTANTIATION), lswsgi_py313 (3.13 replaced
    // _PyObject_LookupAttr with PyObject_GetOptionalAttr). Computed here
    // rather than with pyo3-build-config, which would make this script wait
    // for that crate (see above).
    for (cfg, since) in [("lswsgi_py310", 10), ("lswsgi_py313", 13)] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if minor >= since {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
    if !libdir.is_empty() {
        println!("cargo:rustc-link-arg-bin=lswsgi=-Wl,-rpath,{libdir}");
    }
}
