//! Immortalizing the preloaded heap before the first fork (CPython 3.12 and
//! 3.13, PEP 683), so children stop copying the parent's pages merely by
//! using its objects.
//!
//! Every `Py_INCREF`/`Py_DECREF` writes the object's header; in a forked
//! child each such write copies a whole 4 KiB page the parent shares. CPython
//! 3.12 and 3.13 skip both on an immortal object. The rule, for the 64-bit
//! builds with a GIL (`object.h` of each version): an object is immortal when
//! the low 32 bits of `ob_refcnt` read as a negative `int32_t`; `Py_INCREF`
//! saturates there and `_Py_IMMORTAL_REFCNT` is `UINT_MAX` (0xFFFF_FFFF) in
//! both. 3.13's free-threaded build keeps the count elsewhere (`ob_ref_local`
//! == `UINT32_MAX`) and 3.11 and earlier have no immortal objects: on those
//! nothing is done. 3.14 changes the value again; it is not supported here.
//!
//! What is marked: everything the main interpreter's garbage collector holds
//! in its permanent generation (all it tracked at `gc.freeze()`), and,
//! transitively, everything those objects reference (`tp_traverse`, which
//! also reaches untracked objects: str, bytes, int, float, untracked tuples
//! and dicts) plus the constants and names of code objects (which have no
//! `tp_traverse`). Not marked, nor followed: objects already immortal (static
//! types, small ints, interned strings of 3.12), and frame objects (they
//! point into thread stacks that the child does not have).
//!
//! Why it is sound: an immortal object is never deallocated, so it never
//! drops the references it holds; the mortal objects it references keep a
//! count ≥ 1 for ever (leaked, never freed early), and decrementing an
//! immortal count is a no-op. Only the main interpreter is walked, and only
//! while it is the only one, so no object owned by a sub-interpreter (whose
//! memory its teardown frees regardless of counts) is ever marked.
//!
//! While walking, what a child would otherwise write into the objects the
//! first time it uses them is written once in the parent: each string's hash
//! and each class's version tag (which the attribute cache and the
//! specialising interpreter assign on first lookup; `PyType_Modified` resets
//! it, as setting a class attribute after class creation does).
//!
//! Then the free memory children would reuse is dealt with: the interpreter's
//! attribute cache is cleared (it holds names no object does, which a child's
//! lookups would free), the parent's free small-object blocks are taken (see
//! [`fill_pools`]), and so are the free malloc chunks left on pages in memory
//! (see [`take_free_chunks`]): importing leaves free memory scattered over
//! pages the parent keeps, and a child's new objects would land in it,
//! copying a parent page for each few objects.

use super::py::{ffi, intern, Obj};
use std::ffi::{c_int, c_void, CStr};

/// `_Py_IMMORTAL_REFCNT` of CPython 3.12 and 3.13 on 64-bit builds.
#[cfg(target_pointer_width = "64")]
const IMMORTAL_REFCNT: ffi::Py_ssize_t = 0xFFFF_FFFF;

/// What [`immortalize_heap`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Objects marked immortal, of which code objects, kB of free blocks
    /// taken from the object pools and of free malloc chunks, and
    /// milliseconds spent.
    Done {
        objects: usize,
        code: usize,
        filled_kb: usize,
        chunks_kb: usize,
        ms: u64,
    },
    /// Nothing done, and why (for the log).
    Skipped(&'static str),
}

/// Marks the main interpreter's frozen heap immortal (see the module doc),
/// once, in the ProcessGroup parent after `gc.freeze()` and before the first
/// fork. `enabled` is LSAPI_IMMORTALIZE.
pub fn immortalize_heap(enabled: bool) -> Outcome {
    if !enabled {
        return Outcome::Skipped("LSAPI_IMMORTALIZE=0");
    }
    // SAFETY: called on the thread that holds the GIL, with the main
    // interpreter current (the group parent serves no requests).
    unsafe {
        if let Some(why) = unsupported() {
            return Outcome::Skipped(why);
        }
        let start = std::time::Instant::now();
        let Some(roots) = frozen_objects() else {
            ffi::PyErr_Clear();
            return Outcome::Skipped("the frozen generation could not be listed");
        };
        let (objects, code) = mark_reachable(&roots);
        drop(roots);
        // The interpreter's attribute cache holds the names looked up, some
        // held by nothing else: a child replacing an entry would free one.
        // Freed here instead, before the free blocks are taken. (Clears the
        // cache only: version tags stay.)
        ffi::PyType_ClearCache();
        let filled_kb = fill_pools() / 1024;
        let chunks_kb = take_free_chunks() / 1024;
        Outcome::Done {
            objects,
            code,
            filled_kb,
            chunks_kb,
            ms: start.elapsed().as_millis() as u64,
        }
    }
}

/// [`immortalize_heap`], logged: the group parent's one call, made right
/// after `gc.freeze()` before the first fork.
pub fn after_freeze(enabled: bool) {
    match immortalize_heap(enabled) {
        Outcome::Done {
            objects,
            code,
            filled_kb,
            chunks_kb,
            ms,
        } => crate::info!(
            "immortalized {objects} objects ({code} code objects) of the preloaded heap and took {filled_kb} kB of free object blocks and {chunks_kb} kB of free malloc chunks in {ms} ms"
        ),
        Outcome::Skipped(why) => crate::info!("heap not immortalized: {why}"),
    }
}

/// Why this interpreter must not be touched, if it must not.
///
/// # Safety
/// GIL held.
unsafe fn unsupported() -> Option<&'static str> {
    // SAFETY: GIL held (the contract); Py_GetVersion returns a static C string;
    // every object pointer comes from the C API and is checked before use.
    unsafe {
        if cfg!(not(target_pointer_width = "64")) {
            return Some("only 64-bit builds are supported");
        }
        let version = CStr::from_ptr(ffi::Py_GetVersion()).to_bytes();
        let minor = version
            .strip_prefix(b"3.")
            .and_then(|r| r.split(|&b| b == b'.').next())
            .and_then(|m| std::str::from_utf8(m).ok()?.parse::<u32>().ok());
        if !matches!(minor, Some(12 | 13)) {
            return Some("this Python has no immortal objects (CPython 3.12 and 3.13 only)");
        }
        // sys.abiflags holds 't' on a free-threaded build (another refcount layout).
        let flags = ffi::PySys_GetObject(c"abiflags".as_ptr());
        if !flags.is_null() && ffi::PyUnicode_Check(flags) != 0 {
            let t = ffi::PyUnicode_FindChar(flags, 't' as u32, 0, isize::MAX, 1);
            ffi::PyErr_Clear();
            if t >= 0 {
                return Some("free-threaded builds are not supported");
            }
        }
        let main = ffi::PyInterpreterState_Main();
        if ffi::PyInterpreterState_Get() != main || !ffi::PyInterpreterState_Next(main).is_null() {
            return Some("a sub-interpreter exists (only a lone main interpreter is walked)");
        }
        None
    }
}

/// A list of the permanent generation's objects: `gc.get_objects()` lists
/// only generations 0-2, so the frozen objects are moved back into the
/// oldest one for the listing (`gc.unfreeze()`; `get_objects(2)` leaves out
/// whatever younger objects exist) and frozen again at once. Both moves are
/// O(1) list splices, and no Python code runs in between.
///
/// # Safety
/// GIL held, no exception pending.
unsafe fn frozen_objects() -> Option<Obj> {
    // SAFETY: GIL held and no exception pending (the contract); every new
    // reference is owned by an Obj, borrowed ones are used while their owner lives.
    unsafe {
        let gc = Obj::owned(ffi::PyImport_ImportModule(c"gc".as_ptr()))?;
        let attr = |name: &CStr| Obj::owned(ffi::PyObject_GetAttrString(gc.ptr(), name.as_ptr()));
        let (unfreeze, get_objects, freeze) =
            (attr(c"unfreeze")?, attr(c"get_objects")?, attr(c"freeze")?);
        let oldest = Obj::owned(ffi::PyLong_FromLong(2))?;
        Obj::owned(ffi::PyObject_CallNoArgs(unfreeze.ptr()))?;
        let objects = Obj::owned(ffi::PyObject_CallOneArg(get_objects.ptr(), oldest.ptr()));
        // Frozen again whatever happened: no exception may be pending for it.
        ffi::PyErr_Clear();
        Obj::owned(ffi::PyObject_CallNoArgs(freeze.ptr()))?;
        objects.filter(|l| ffi::PyList_Check(l.ptr()) != 0)
    }
}

/// Whether `op` is immortal by the 3.12/3.13 64-bit rule.
///
/// # Safety
/// `op` is a live object.
#[inline]
unsafe fn is_immortal(op: *mut ffi::PyObject) -> bool {
    // SAFETY: `op` is a live object (the contract), so its header is readable.
    unsafe { (ffi::Py_REFCNT(op) as i32) < 0 }
}

/// Marks `op` immortal (unless it already is, or is a frame) and queues it
/// for its referents. Called by `tp_traverse` for each referent.
///
/// # Safety
/// GIL held; `arg` is the walk's stack (see mark_reachable); `op` is null or a
/// live object (a referent handed out by tp_traverse, or a root the root
/// list holds).
unsafe extern "C" fn visit(op: *mut ffi::PyObject, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points to mark_reachable's live stack, borrowed by no one
    // else during this call; `op` is checked for null before any use.
    let stack = unsafe { &mut *arg.cast::<Vec<*mut ffi::PyObject>>() };
    if op.is_null() {
        return 0;
    }
    // SAFETY: `op` is live (the contract), so its header and type are readable.
    if unsafe { is_immortal(op) || ffi::Py_TYPE(op) == std::ptr::addr_of_mut!(ffi::PyFrame_Type) } {
        return 0;
    }
    #[cfg(target_pointer_width = "64")]
    // SAFETY: ob_refcnt is the first word of the header in every 64-bit build
    // with a GIL (checked in `unsupported`); the GIL is held, so no other
    // thread reads or writes it meanwhile.
    unsafe {
        std::ptr::addr_of_mut!((*op).ob_refcnt)
            .cast::<ffi::Py_ssize_t>()
            .write(IMMORTAL_REFCNT);
    }
    stack.push(op);
    0
}

/// Attributes of a code object that hold objects: all plain members, so
/// reading them allocates nothing (co_code and co_varnames would build and
/// cache new objects).
const CODE_MEMBERS: [&CStr; 7] = [
    c"co_consts",
    c"co_names",
    c"co_filename",
    c"co_name",
    c"co_qualname",
    c"co_linetable",
    c"co_exceptiontable",
];

/// Marks every item of `roots` and everything reachable from them; returns
/// (objects marked, code objects among them). The walk keeps its own stack,
/// so deep structures cannot exhaust the C stack.
///
/// # Safety
/// GIL held, no Python code runs meanwhile (nothing here calls any), the
/// main interpreter is the only one.
unsafe fn mark_reachable(roots: &Obj) -> (usize, usize) {
    // SAFETY: GIL held, no Python code runs and the main interpreter is the
    // only one (the contract); `stack` outlives every visit call that gets `arg`,
    // list items are borrowed from `roots`, which lives throughout.
    unsafe {
        let n = ffi::PyList_Size(roots.ptr()).max(0);
        let mut stack: Vec<*mut ffi::PyObject> = Vec::with_capacity(1024);
        let arg = std::ptr::addr_of_mut!(stack).cast::<c_void>();
        let (mut objects, mut code) = (0usize, 0usize);
        let names = CODE_MEMBERS.map(|n| intern(n));
        let assign_version_tag = version_tag_assigner();
        for i in 0..n {
            visit(ffi::PyList_GetItem(roots.ptr(), i), arg);
            while let Some(op) = stack.pop() {
                objects += 1;
                // Written now rather than by each child on first use: an exact
                // str's hash (computing it runs no Python code and cannot
                // fail) and a class's version tag.
                if ffi::PyUnicode_CheckExact(op) != 0 {
                    ffi::PyObject_Hash(op);
                } else if ffi::PyType_Check(op) != 0 {
                    if let Some(assign) = assign_version_tag {
                        assign(op);
                    }
                }
                if ffi::PyObject_IS_GC(op) != 0 {
                    if let Some(traverse) = (*ffi::Py_TYPE(op)).tp_traverse {
                        traverse(op, visit, arg);
                    }
                } else if ffi::PyCode_Check(op) != 0 {
                    code += 1;
                    for name in &names {
                        // A new reference, to an object the code object holds.
                        if let Some(v) = Obj::owned(ffi::PyObject_GetAttr(op, name.ptr())) {
                            visit(v.ptr(), arg);
                        }
                    }
                    ffi::PyErr_Clear();
                }
            }
        }
        (objects, code)
    }
}

/// `PyUnstable_Type_AssignVersionTag` (CPython 3.12+: gives a class a
/// version tag if it has none; returns 0 when it cannot, harmlessly), looked
/// up at run time so that builds for older Pythons still link.
type AssignVersionTag = unsafe extern "C" fn(*mut ffi::PyObject) -> c_int;

fn version_tag_assigner() -> Option<AssignVersionTag> {
    // SAFETY: dlsym with a NUL-terminated name only reads the loaded
    // objects' symbol tables.
    let sym = unsafe {
        libc::dlsym(
            libc::RTLD_DEFAULT,
            c"PyUnstable_Type_AssignVersionTag".as_ptr(),
        )
    };
    // SAFETY: a non-null address of that symbol is the function of this
    // signature (`int f(PyTypeObject *)` in every version that has it).
    (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, AssignVersionTag>(sym) })
}

/// Largest request pymalloc serves from its pools (bytes); larger ones go to
/// malloc. Its size classes are multiples of 16 bytes up to this.
const SMALL_MAX: usize = 512;
/// At most this many blocks are taken per size class (bounds time and
/// memory should the allocator not be pymalloc after all).
const FILL_MAX_BLOCKS: usize = 1 << 20;
/// pymalloc's pool size on 64-bit CPython 3.12 and 3.13 (bytes, aligned):
/// a pool's header is at the start of its first page.
const POOL_SIZE: usize = 16 << 10;
/// Pages not in memory before that a size class may reach (see fill_pools).
const FILL_NEW_PAGES: usize = 4;

/// Takes, and keeps for ever, the free blocks of pymalloc's pools that were
/// on pages the parent already had in memory; returns the bytes taken.
///
/// After imports the pools hold many free blocks among live objects, and
/// pymalloc serves new objects from partly used pools first: a child's new
/// objects would land there, each write copying a page the parent shares
/// (and once every child has copied it, the parent's own copy counts as its
/// private memory too). With those blocks taken, the children start fresh
/// pools of their own. Residency is read once, before taking anything
/// (pymalloc writes the next block of a pool as it hands one out). A size
/// class stops at its first block in a pool whose header page was not in
/// memory (a fresh pool), or once its blocks have reached more than
/// FILL_NEW_PAGES pages that were not (the untouched tails of pools never
/// filled): the parent grows by a few pages per size class at most, shared
/// with the children. (Filling up the pool a size class stops in, so that no
/// child's first objects land on its header page, saved 1-2 % of the group's
/// private memory but cost the group ~500 kB more in all: each child needs
/// that page's worth of memory for its objects anyway.) Both stops are
/// bounds, not assumptions the soundness rests on (a build with other pool
/// sizes only stops differently). The blocks taken are never written nor
/// freed (the parent serves no requests). Skipped when PYTHONMALLOC names
/// another allocator.
///
/// # Safety
/// GIL held.
unsafe fn fill_pools() -> usize {
    // SAFETY: GIL held (the contract); the blocks taken are never written,
    // read or freed.
    unsafe {
        if std::env::var_os("PYTHONMALLOC").is_some_and(|v| v != "pymalloc") {
            return 0;
        }
        let resident = Residency::of_anonymous_memory();
        let page_of = |a: usize| a & !(resident.page - 1);
        let mut taken = 0usize;
        for size in (16..=SMALL_MAX).step_by(16) {
            let (mut new_pages, mut last_new) = (0usize, 0usize);
            for _ in 0..FILL_MAX_BLOCKS {
                let p = ffi::PyObject_Malloc(size) as usize;
                if p == 0 {
                    ffi::PyErr_Clear();
                    break;
                }
                // Kept, like every block taken: freeing it would write to it.
                taken += size;
                if !resident.has(p & !(POOL_SIZE - 1)) {
                    break;
                }
                for q in [p, p + size - 1] {
                    if !resident.has(q) && page_of(q) != last_new {
                        (new_pages, last_new) = (new_pages + 1, page_of(q));
                    }
                }
                if new_pages > FILL_NEW_PAGES {
                    break;
                }
            }
        }
        taken
    }
}

/// Largest free malloc chunk size tried (bytes), and how many chunks at most
/// are taken in all (bounds time and memory).
const CHUNK_MAX: usize = 64 << 10;
const CHUNK_MAX_COUNT: usize = 1 << 16;

/// Returns the parent's wholly free heap pages to the system, then takes,
/// and keeps for ever, the free malloc chunks left on pages still in memory;
/// returns the bytes taken. What CPython allocates beyond pymalloc's 512
/// bytes (dict tables, list arrays, code objects, large strings) and the
/// worker's own buffers come from malloc; a child's would land in the free
/// chunks imports left between live ones, copying those pages. Sizes are
/// tried from large to small, each until malloc hands out memory that was
/// not in memory (the top of the heap, or a trimmed page): best fit gives
/// each size the free chunks that fit it, and splits the rest for smaller
/// ones. glibc only (`malloc_trim`); elsewhere nothing is done.
///
/// # Safety
/// GIL held (no other thread of the interpreter allocates meanwhile).
unsafe fn take_free_chunks() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free memory; the chunks taken are
        // never written, read or freed.
        unsafe {
            libc::malloc_trim(0);
            let resident = Residency::of_anonymous_memory();
            let (mut taken, mut count) = (0usize, 0usize);
            let mut size = CHUNK_MAX;
            while size >= 16 && count < CHUNK_MAX_COUNT {
                while count < CHUNK_MAX_COUNT {
                    let p = libc::malloc(size) as usize;
                    if p == 0 {
                        break;
                    }
                    count += 1;
                    // Kept either way: freeing it would make it reusable again.
                    if !(resident.has(p - 2 * std::mem::size_of::<usize>())
                        && resident.has(p + size - 1))
                    {
                        break;
                    }
                    taken += size;
                }
                size = if size > 1024 { size / 2 } else { size - 16 };
            }
            taken
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

/// Which pages of the process's private anonymous mappings (pymalloc's
/// arenas and the malloc heap) were in memory when it was made.
struct Residency {
    page: usize,
    /// (start, end, one byte per page from mincore), sorted by start.
    maps: Vec<(usize, usize, Vec<u8>)>,
}

impl Residency {
    fn of_anonymous_memory() -> Residency {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let mut maps = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            let path = f.nth(3).unwrap_or("");
            if !perms.starts_with("rw-p") || !(path.is_empty() || path == "[heap]") {
                continue;
            }
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            let mut vec = vec![0u8; (b - a) / page];
            // SAFETY: mincore only reads page tables (a range unmapped since
            // the listing fails with ENOMEM and is skipped); [a, b) is page
            // aligned and `vec` has one byte per page of it.
            if unsafe { libc::mincore(a as *mut c_void, b - a, vec.as_mut_ptr()) } == 0 {
                maps.push((a, b, vec));
            }
        }
        maps.sort_unstable_by_key(|m| m.0);
        Residency { page, maps }
    }

    /// Whether `addr` was in memory.
    fn has(&self, addr: usize) -> bool {
        let i = self.maps.partition_point(|m| m.0 <= addr);
        i > 0 && {
            let (start, end, vec) = &self.maps[i - 1];
            addr < *end && vec[(addr - start) / self.page] & 1 == 1
        }
    }
}
