//! Where a process's memory is, from /proc (for `load --explain`): resident
//! and private kB per mapping, and for a forked child, which of its pages are
//! still shared with the parent, which it copied (copy-on-write) and which
//! are new. Frame numbers in /proc/PID/pagemap need root; without it the
//! child breakdown is skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

const PAGE: u64 = 4096;

/// One mapping of /proc/PID/maps: start, end, permissions and a short name.
struct Mapping {
    start: u64,
    end: u64,
    name: String,
}

fn mappings(pid: u32) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let perms = f.next()?;
            let path = f.nth(3).unwrap_or("[anon]");
            let base = path.rsplit('/').next().unwrap_or(path);
            Some(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                name: format!("{base} {perms}"),
            })
        })
        .collect()
}

/// kB per mapping name: (resident, private), from /proc/PID/smaps.
pub fn per_mapping(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut name = String::new();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let Some(first) = f.next() else { continue };
        if !first.ends_with(':') {
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("[anon]");
            name = format!("{} {perms}", path.rsplit('/').next().unwrap_or(path));
            continue;
        }
        let kb: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let e = out.entry(name.clone()).or_default();
        match first {
            "Rss:" => e.0 += kb,
            "Private_Clean:" | "Private_Dirty:" => e.1 += kb,
            _ => {}
        }
    }
    out
}

/// Page frame numbers of [start, end) in `pid` (None: not present).
fn frames(pagemap: &mut File, start: u64, end: u64) -> Option<Vec<Option<u64>>> {
    let n = ((end - start) / PAGE) as usize;
    let mut raw = vec![0u8; n * 8];
    pagemap.seek(SeekFrom::Start(start / PAGE * 8)).ok()?;
    pagemap.read_exact(&mut raw).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|c| {
                let e = u64::from_le_bytes(c.try_into().unwrap());
                (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
            })
            .collect(),
    )
}

/// A forked child's pages against its parent's, kB per mapping name.
#[derive(Default, Clone, Copy)]
pub struct Sharing {
    /// Same frame as the parent's.
    pub shared: u64,
    /// Present in both at different frames: the child wrote a shared page.
    pub copied: u64,
    /// Present in the child only.
    pub new: u64,
}

/// How a copied page differs from the parent's: pages by number of 8-byte
/// words changed (0–1, 2–8, 9–64, more).
pub type Changes = [u64; 4];

/// The child's pages against the parent's, per mapping name, and (for the
/// anonymous and heap mappings) how much each copied page changed. None
/// without root.
pub fn sharing(parent: u32, child: u32) -> Option<(BTreeMap<String, Sharing>, Changes)> {
    let mut pm_p = File::open(format!("/proc/{parent}/pagemap")).ok()?;
    let mut pm_c = File::open(format!("/proc/{child}/pagemap")).ok()?;
    let mut mem_p = File::open(format!("/proc/{parent}/mem")).ok()?;
    let mut mem_c = File::open(format!("/proc/{child}/mem")).ok()?;
    let mut out: BTreeMap<String, Sharing> = BTreeMap::new();
    let mut changes: Changes = [0; 4];
    let mut any_frame = false;
    let (mut a, mut b) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
    for m in mappings(child) {
        let (Some(fc), Some(fp)) = (
            frames(&mut pm_c, m.start, m.end),
            frames(&mut pm_p, m.start, m.end),
        ) else {
            continue;
        };
        let heap = m.name.starts_with("[anon]") || m.name.starts_with("[heap]");
        let e = out.entry(m.name.clone()).or_default();
        for (i, (c, p)) in fc.iter().zip(&fp).enumerate() {
            let Some(c) = c else { continue };
            any_frame |= *c != 0;
            match p {
                Some(p) if p == c => e.shared += 4,
                Some(_) => {
                    e.copied += 4;
                    let addr = m.start + i as u64 * PAGE;
                    let read = |f: &mut File, buf: &mut Vec<u8>| {
                        f.seek(SeekFrom::Start(addr)).is_ok() && f.read_exact(buf).is_ok()
                    };
                    if heap && read(&mut mem_p, &mut a) && read(&mut mem_c, &mut b) {
                        let words = a
                            .chunks_exact(8)
                            .zip(b.chunks_exact(8))
                            .filter(|(x, y)| x != y)
                            .count();
                        changes[match words {
                            0..=1 => 0,
                            2..=8 => 1,
                            9..=64 => 2,
                            _ => 3,
                        }] += 1;
                    }
                }
                None => e.new += 4,
            }
        }
    }
    // Without CAP_SYS_ADMIN every frame number reads as 0.
    any_frame.then_some((out, changes))
}
