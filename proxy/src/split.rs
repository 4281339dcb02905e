//! Weighted traffic split (canary): pick one of a route's backends in proportion to its weight.
//! Lock-free: a thread-local random number and a scan of at most a handful of entries.

use crate::metrics::TargetMetrics;

/// One route's backends with their cumulative weights.
pub struct Split {
    /// (cumulative weight end, backend index, metrics); entries with weight 0 are dropped.
    entries: Vec<Target>,
    total: u64,
}

pub struct Target {
    end: u64,
    pub backend: usize,
    pub metrics: TargetMetrics,
}

impl Split {
    pub fn new(targets: Vec<(usize, u32, TargetMetrics)>) -> Self {
        let mut total = 0u64;
        let entries = targets
            .into_iter()
            .filter(|(_, w, _)| *w > 0)
            .map(|(backend, w, metrics)| {
                total += u64::from(w);
                Target {
                    end: total,
                    backend,
                    metrics,
                }
            })
            .collect();
        Self { entries, total }
    }

    /// The chosen target, or `None` when every weight is 0.
    pub fn pick(&self) -> Option<&Target> {
        match self.entries.as_slice() {
            [] => None,
            [only] => Some(only),
            entries => {
                let r = fastrand::u64(..self.total);
                entries.iter().find(|t| r < t.end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn split(weights: &[u32]) -> Split {
        let m = Metrics::new();
        Split::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (i, w, m.target("l", "r", &i.to_string())))
                .collect(),
        )
    }

    #[test]
    fn shares_follow_weights() {
        let s = split(&[90, 10]);
        let mut counts = [0u32; 2];
        for _ in 0..100_000 {
            counts[s.pick().map(|t| t.backend).unwrap_or(9)] += 1;
        }
        let share = f64::from(counts[1]) / 100_000.0;
        assert!((share - 0.10).abs() < 0.01, "canary share {share}");
    }

    #[test]
    fn zero_weight_never_picked_and_all_zero_is_none() {
        let s = split(&[0, 5, 0]);
        assert!((0..1000).all(|_| s.pick().map(|t| t.backend) == Some(1)));
        assert!(split(&[0, 0]).pick().is_none());
        assert!(split(&[]).pick().is_none());
    }

    #[test]
    fn large_weights_do_not_overflow() {
        let s = split(&[1_000_000, 1_000_000, 1_000_000]);
        let mut seen = [false; 3];
        for _ in 0..1000 {
            if let Some(t) = s.pick() {
                seen[t.backend] = true;
            }
        }
        assert_eq!(seen, [true; 3]);
    }
}
