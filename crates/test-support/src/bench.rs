//! Summaries for the benchmarks (`benches/*.rs`).

/// The median of `xs` (the mean of the middle two for an even count); panics on none, which is
/// a benchmark run with no timed steps.
pub fn median(mut xs: Vec<f64>) -> f64 {
    assert!(!xs.is_empty(), "median of no values");
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// This process's peak resident set size (`VmHWM` of `/proc/self/status`) in KiB; `None` where
/// there is no such file (not Linux).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| median(vec![]))).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn peak_rss_is_at_least_a_buffer_just_touched() {
        let buf = vec![1u8; 64 << 20];
        std::hint::black_box(&buf);
        assert!(peak_rss_kib().unwrap() >= 64 << 10);
    }
}
