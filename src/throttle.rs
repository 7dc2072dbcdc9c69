//! The one rule for log lines that a failure can repeat (accept errors, a
//! crash loop, a full group): the first line, then at most one per
//! [`INTERVAL_MS`], each saying how many were held back since the last.

/// Milliseconds between two lines of one kind.
pub const INTERVAL_MS: u64 = 10_000;

/// One kind of line's record: when the last one went out, and how many were
/// held back since.
#[derive(Default)]
pub struct Throttle {
    /// When the last line was logged ([`crate::sys::now_ms`]); None: never.
    last_ms: Option<u64>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(lines held back since the last one)` when a line may be logged
    /// at `now` (ms); otherwise counts this one as held back.
    pub fn allow(&mut self, now: u64) -> Option<u64> {
        match self.last_ms {
            Some(t) if now.saturating_sub(t) < INTERVAL_MS => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_ms = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Milliseconds from the last line to `now` (0 before the first).
    pub fn since_last_ms(&self, now: u64) -> u64 {
        self.last_ms.map_or(0, |t| now.saturating_sub(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_one_line_per_interval() {
        let mut t = Throttle::default();
        assert_eq!(t.since_last_ms(1000), 0);
        assert_eq!(t.allow(1000), Some(0));
        assert_eq!(t.allow(2000), None);
        assert_eq!(t.since_last_ms(3000), 2000);
        assert_eq!(t.allow(3000), None);
        assert_eq!(t.allow(1000 + INTERVAL_MS), Some(2));
    }
}
