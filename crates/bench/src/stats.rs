//! Latency histograms and the summary of repeated runs.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

/// Largest latency a histogram holds, in microseconds (larger values are clamped).
const MAX_LATENCY_US: u64 = 600_000_000;

/// A histogram of latencies in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_LATENCY_US, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts.
        Err(e) => unreachable!("histogram bounds: {e}"),
    }
}

/// Records `us` microseconds (at least 1, at most the histogram's bound).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Adds `other` into `into` (same bounds, so it cannot fail).
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    if let Err(e) = into.add(other) {
        unreachable!("histograms with the same bounds: {e}");
    }
}

/// Percentiles of one latency histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency {
                count: 0,
                p50_ms: f64::NAN,
                p99_ms: f64::NAN,
                p999_ms: f64::NAN,
                max_ms: f64::NAN,
                mean_ms: f64::NAN,
            };
        }
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// One figure over repeated runs: every run's value, the median and the range.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Spread {
    /// `None` when there is no value (every run failed to produce this figure).
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs: values.to_vec(),
        })
    }

    /// "median (min–max)" with `decimals` decimals and a unit.
    pub fn line(&self, decimals: usize, unit: &str) -> String {
        format!(
            "{:.d$} {unit} (min {:.d$}, max {:.d$}, {} runs)",
            self.median,
            self.min,
            self.max,
            self.runs.len(),
            d = decimals
        )
    }
}

/// Whether one of the aims is met by the median of the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Aim {
    pub aim: String,
    pub measured: String,
    pub met: bool,
}

/// A figure of a run: its key in the summary and how to read it.
pub type Figure<R> = (&'static str, fn(&R) -> f64);

/// The spread of each figure over `runs` (those that went through).
pub fn summarize<R>(runs: &[&R], figures: &[Figure<R>]) -> BTreeMap<&'static str, Spread> {
    figures
        .iter()
        .filter_map(|(key, f)| {
            Spread::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>()).map(|s| (*key, s))
        })
        .collect()
}

/// One "label  median ..." line per `(label, key, decimals, unit)` the summary has.
pub fn median_lines(
    summary: &BTreeMap<&'static str, Spread>,
    lines: &[(&str, &str, usize, &str)],
) -> String {
    lines
        .iter()
        .filter_map(|(label, key, decimals, unit)| {
            summary
                .get(key)
                .map(|s| format!("  {label:<17} median {}\n", s.line(*decimals, unit)))
        })
        .collect()
}

/// One line per aim: what it asks, what was measured, met or MISSED.
pub fn aim_lines(aims: &[Aim]) -> String {
    aims.iter()
        .map(|a| {
            format!(
                "  aim: {} -> {} ({})\n",
                a.aim,
                a.measured,
                if a.met { "met" } else { "MISSED" }
            )
        })
        .collect()
}

/// Every run as JSON: its figures, or the error that stopped it.
pub fn runs_json<R: Serialize>(runs: &[Result<R, String>]) -> Vec<serde_json::Value> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(r) => serde_json::to_value(r)
                .unwrap_or_else(|e| json!({"run": i + 1, "error": e.to_string()})),
            Err(e) => json!({"run": i + 1, "error": e}),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_median_odd_even_and_nan() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, f64::NAN, 2.0, 3.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn latency_percentiles() {
        let mut h = histogram();
        for us in 1..=1000 {
            record(&mut h, us * 1000);
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.5, "{l:?}");
    }
}
