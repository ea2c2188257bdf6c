//! Latency samples of the benchmarks and the demo, in one HDR histogram each
//! (`hdrhistogram`: microseconds, 3 significant digits, so every percentile is within
//! 0.1 % of the exact one): a long round keeps bounded memory, and the rounds of
//! concurrent clients merge without sorting millions of samples.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latency samples.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // Auto-resizing, so no sample is ever out of range.
        Self(Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid")))
    }
}

impl Latencies {
    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // An auto-resizing histogram takes any value.
        let _ = self.0.record(micros);
    }

    /// Merges another set of samples.
    pub fn extend(&mut self, other: &Latencies) {
        // Both auto-resize: adding never fails for want of range.
        let _ = self.0.add(&other.0);
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-th percentile (0 to 100), in milliseconds; 0 without samples.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_percentile(p) as f64 / 1000.0
    }

    /// The largest sample, in milliseconds; 0 without samples.
    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_tenth_of_a_percent() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        for ms in 1..=1000u64 {
            let half = if ms % 2 == 0 { &mut a } else { &mut b };
            half.record(Duration::from_millis(ms));
        }
        a.extend(&b);
        assert_eq!(a.len(), 1000);
        for (p, exact) in [(50.0, 500.0), (99.0, 990.0), (100.0, 1000.0)] {
            let got = a.percentile_ms(p);
            assert!(
                (got - exact).abs() <= exact / 1000.0,
                "p{p}: {got} vs {exact}"
            );
        }
        assert!((a.max_ms() - 1000.0).abs() <= 1.0);
        assert_eq!(Latencies::default().percentile_ms(50.0), 0.0);
    }
}
