//! The statistics `llama-perplexity --kl-divergence` prints, computed the
//! same way so the two tools' figures can be compared line by line.

use serde::Serialize;

/// A mean and its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub uncertainty: f64,
}

/// Mean of `sum / count` and its standard error from the sum of squares
/// (0 below 11 samples, as llama-perplexity).
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count == 0 {
        return Estimate {
            value: 0.0,
            uncertainty: 0.0,
        };
    }
    let n = count as f64;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let uncertainty = if var > 0.0 && count > 10 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Estimate {
        value: mean,
        uncertainty,
    }
}

/// Covariance of two means from their sums (0 below 10 samples).
pub fn covariance(sum_a: f64, sum_b: f64, sum_ab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1.0)
}

/// Order statistics of a sample, as llama-perplexity lists them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub max: f64,
    pub p99_9: f64,
    pub p99: f64,
    pub p95: f64,
    pub p90: f64,
    pub p75: f64,
    pub median: f64,
    pub p25: f64,
    pub p10: f64,
    pub p5: f64,
    pub p1: f64,
    pub p0_1: f64,
    pub min: f64,
}

impl Spread {
    /// Of a non-empty sample (sorted here).
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n.is_multiple_of(2) {
            0.5 * (values[n / 2] + values[n / 2 - 1])
        } else {
            values[n / 2]
        };
        let at = |fraction: f64| {
            let p = fraction * (n - 1) as f64;
            let i = p as usize;
            let frac = p - i as f64;
            (1.0 - frac) * values[i] + frac * values[(i + 1).min(n - 1)]
        };
        Self {
            max: values[n - 1],
            p99_9: at(0.999),
            p99: at(0.99),
            p95: at(0.95),
            p90: at(0.90),
            p75: at(0.75),
            median,
            p25: at(0.25),
            p10: at(0.10),
            p5: at(0.05),
            p1: at(0.01),
            p0_1: at(0.001),
            min: values[0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_neighbours() {
        let s = Spread::of((0..=10).rev().map(f64::from).collect());
        assert_eq!((s.min, s.max, s.median), (0.0, 10.0, 5.0));
        assert!((s.p95 - 9.5).abs() < 1e-12);
        assert!((s.p25 - 2.5).abs() < 1e-12);
        let even = Spread::of(vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(even.median, 2.5);
    }

    #[test]
    fn the_standard_error_needs_more_than_ten_samples() {
        let few = mean_and_uncertainty(10.0, 30.0, 5);
        assert_eq!((few.value, few.uncertainty), (2.0, 0.0));
        // 0,1 alternating over 20 samples: mean 0.5, variance 0.25.
        let e = mean_and_uncertainty(10.0, 10.0, 20);
        assert!((e.uncertainty - (0.25f64 / 19.0).sqrt()).abs() < 1e-12);
    }
}
