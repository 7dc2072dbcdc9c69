//! How much memory this process can still use: /proc/meminfo narrowed by
//! the memory cgroup it is in (v1 or v2), and the parsers of those files.

/// Memory the process can still use, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// MemTotal, or the tightest cgroup limit when lower.
    pub total: u64,
    /// MemAvailable, or the least headroom left under a cgroup limit when lower.
    pub available: u64,
}

impl Memory {
    /// lsapilib's test for taking more connections in the same process:
    /// more than `threshold` bytes available, or more than a tenth of the total.
    pub fn enough(&self, threshold: u64) -> bool {
        self.available > threshold || self.available > self.total / 10
    }
}

/// Reads free memory: /proc/meminfo, narrowed by the memory cgroup the process
/// is in (on a shared host each account is limited by its cgroup, so
/// machine-wide free memory alone misleads). The cgroup's directories are found
/// once, at construction.
pub struct MemProbe {
    /// The process's cgroup directory and each ancestor up to the mount point,
    /// leaf first.
    levels: Vec<std::path::PathBuf>,
    /// cgroup v2 file names (memory.max, memory.current) rather than v1's.
    v2: bool,
}

impl MemProbe {
    /// Finds this process's memory cgroup from /proc/self/cgroup and
    /// /proc/self/mountinfo; without one, only /proc/meminfo is read.
    pub fn new() -> MemProbe {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let (levels, v2) = cgroup_levels(&read("/proc/self/cgroup"), &read("/proc/self/mountinfo"))
            .unwrap_or_default();
        MemProbe { levels, v2 }
    }

    /// Current total and available memory.
    pub fn read(&self) -> Memory {
        let mut m = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| parse_meminfo(&t))
            .unwrap_or(Memory {
                total: u64::MAX,
                available: u64::MAX,
            });
        for dir in &self.levels {
            let file = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
            let (limit, usage, stat) = if self.v2 {
                (
                    file("memory.max"),
                    file("memory.current"),
                    file("memory.stat"),
                )
            } else {
                (
                    file("memory.limit_in_bytes"),
                    file("memory.usage_in_bytes"),
                    file("memory.stat"),
                )
            };
            if let Some((limit, headroom)) =
                cgroup_headroom(limit.as_deref(), usage.as_deref(), stat.as_deref(), self.v2)
            {
                m.total = m.total.min(limit);
                m.available = m.available.min(headroom);
            }
        }
        m
    }
}

/// MemTotal and MemAvailable from /proc/meminfo text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Memory {
        total: field("MemTotal")?,
        available: field("MemAvailable").or_else(|| field("MemFree"))?,
    })
}

/// cgroup limits at or above this many bytes mean "no limit" (v1 reports
/// unlimited as about 2^63 rounded down to a page).
const NO_LIMIT: u64 = 1 << 60;

/// `(limit, headroom)` of one cgroup level from the contents of its limit,
/// usage and memory.stat files; `None` when it has no limit. Headroom counts
/// inactive file cache as free, since the kernel reclaims it before failing
/// an allocation.
pub fn cgroup_headroom(
    limit: Option<&str>,
    usage: Option<&str>,
    stat: Option<&str>,
    v2: bool,
) -> Option<(u64, u64)> {
    let limit: u64 = limit?.trim().parse().ok()?; // "max" (v2) fails here: no limit
    if limit >= NO_LIMIT {
        return None;
    }
    let usage: u64 = usage.and_then(|u| u.trim().parse().ok()).unwrap_or(0);
    let key = if v2 {
        "inactive_file"
    } else {
        "total_inactive_file"
    };
    let inactive = stat
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some((limit, limit.saturating_sub(usage.saturating_sub(inactive))))
}

/// The directories of the process's memory cgroup, leaf first up to the
/// controller's mount point, and whether they are cgroup v2: from the texts of
/// /proc/self/cgroup and /proc/self/mountinfo. A v1 memory hierarchy wins over
/// v2 (hybrid systems mount v2 without the memory controller).
pub fn cgroup_levels(cgroup: &str, mountinfo: &str) -> Option<(Vec<std::path::PathBuf>, bool)> {
    let mut v1_path = None;
    let mut v2_path = None;
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            v1_path = Some(path);
        } else if id == "0" && controllers.is_empty() {
            v2_path = Some(path);
        }
    }
    // mountinfo: id parent dev root mountpoint options [optional...] - fstype source superoptions
    let mount = |v2: bool| {
        mountinfo.lines().find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let superopts = post.nth(1).unwrap_or("");
            let ok = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && superopts.split(',').any(|o| o == "memory")
            };
            ok.then(|| (pre.get(3).copied(), pre.get(4).copied()))
                .and_then(|(root, point)| Some((root?, point?)))
        })
    };
    let (path, v2, (root, point)) = match (v1_path, v2_path) {
        (Some(p), _) if mount(false).is_some() => (p, false, mount(false)?),
        (_, Some(p)) => (p, true, mount(true)?),
        _ => return None,
    };
    // The mount shows the hierarchy from `root` down; a path outside it is not visible.
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root)
            .filter(|r| r.is_empty() || r.starts_with('/'))?
    };
    let point = std::path::Path::new(point);
    let mut dir = point.join(rel.trim_start_matches('/'));
    let mut levels = vec![dir.clone()];
    while dir != point {
        if !dir.pop() {
            break;
        }
        levels.push(dir.clone());
    }
    Some((levels, v2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn meminfo() {
        let t = "MemTotal:       24684160 kB\nMemFree:        22828404 kB\nMemAvailable:   24002000 kB\n";
        assert_eq!(
            parse_meminfo(t),
            Some(Memory {
                total: 24684160 * 1024,
                available: 24002000 * 1024
            })
        );
        assert_eq!(
            parse_meminfo("MemTotal: 100 kB\nMemFree: 40 kB\n").map(|m| m.available),
            Some(40 * 1024)
        );
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn enough_memory_is_the_threshold_or_a_tenth() {
        let m = |total, available| Memory { total, available };
        assert!(m(100 << 30, 2 << 30).enough(1 << 30));
        assert!(!m(100 << 30, 512 << 20).enough(1 << 30));
        assert!(m(4 << 30, 512 << 20).enough(1 << 30)); // 12.5% of 4 GiB
        assert!(!m(4 << 30, 300 << 20).enough(1 << 30));
    }

    #[test]
    fn cgroup_headroom_counts_inactive_cache_as_free() {
        let stat2 = "anon 100\ninactive_file 1000\nactive_file 5\n";
        assert_eq!(
            cgroup_headroom(Some("10000\n"), Some("4000\n"), Some(stat2), true),
            Some((10000, 7000))
        );
        assert_eq!(
            cgroup_headroom(Some("max\n"), Some("4000"), None, true),
            None
        );
        assert_eq!(
            cgroup_headroom(Some("9223372036854771712"), Some("1"), None, false),
            None
        );
        let stat1 = "inactive_file 7\ntotal_inactive_file 500\n";
        assert_eq!(
            cgroup_headroom(Some("1000"), Some("1200"), Some(stat1), false),
            Some((1000, 300))
        );
        assert_eq!(
            cgroup_headroom(Some("1000"), Some("5000"), None, false),
            Some((1000, 0))
        );
    }

    #[test]
    fn cgroup_directories_v1_hybrid_and_v2() {
        let cg = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let (levels, v2) = cgroup_levels(cg, mi).unwrap();
        assert!(!v2);
        assert_eq!(
            levels,
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api"),
                PathBuf::from("/sys/fs/cgroup/memory"),
            ]
        );
        let cg = "0::/user.slice/user-1000.slice/session-3.scope\n";
        let mi = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let (levels, v2) = cgroup_levels(cg, mi).unwrap();
        assert!(v2);
        assert_eq!(levels.len(), 4);
        assert_eq!(
            levels[0],
            PathBuf::from("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope")
        );
        assert_eq!(levels[3], PathBuf::from("/sys/fs/cgroup"));
        // A container whose mount shows only its own subtree.
        let cg = "0::/docker/xyz\n";
        let mi = "30 23 0:26 /docker/xyz /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let (levels, _) = cgroup_levels(cg, mi).unwrap();
        assert_eq!(levels, vec![PathBuf::from("/sys/fs/cgroup")]);
        assert_eq!(cgroup_levels("0::/\n", ""), None);
    }

    #[test]
    fn probe_never_reports_more_than_meminfo() {
        let info = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
        let m = MemProbe::new().read();
        assert!(m.total <= info.total && m.available <= info.total);
    }
}
