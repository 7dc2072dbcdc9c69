//! On-CPU time of processes, from /proc (shared by bench/load.rs and
//! bench/ols_load.rs).

/// On-CPU nanoseconds of every thread of `pid` (its
/// /proc/PID/task/*/schedstat); 0 once it is gone.
pub fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
