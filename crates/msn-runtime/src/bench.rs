//! Latency and throughput of one or more models, measured in the same process.
//!
//! Models are run interleaved (one run of each in turn), so a slow-down of the machine during
//! the measurement affects every model alike and their ratio stays meaningful.

use crate::model::NodeTime;
use crate::{Classifier, Result};
use ndarray::Array4;
use std::time::Instant;

/// Latency statistics of one model, in milliseconds per batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub batch: usize,
    pub load_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Images per second at the median latency.
    pub throughput_per_s: f64,
}

/// The `q`-quantile (0..=1) of sorted samples, by nearest rank.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Summarises per-run latencies (in seconds) of a model with the given batch size.
pub fn summarize(samples_s: &[f64], batch: usize, load_s: f64) -> Stats {
    let mut ms: Vec<f64> = samples_s.iter().map(|s| s * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let p50 = percentile(&ms, 0.5);
    Stats {
        batch,
        load_ms: load_s * 1e3,
        p50_ms: p50,
        p90_ms: percentile(&ms, 0.9),
        p99_ms: percentile(&ms, 0.99),
        mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        throughput_per_s: batch as f64 * 1e3 / p50,
    }
}

/// A fixed pseudo-random batch in `[-1, 1)` of the classifier's input shape.
fn input(m: &Classifier) -> Array4<f32> {
    let p = m.preprocess();
    let mut state = 0x2545_f491_u32;
    Array4::from_shape_simple_fn((m.batch(), p.channels, p.height, p.width), || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) * 2.0 - 1.0
    })
}

/// Where a model's time goes: tract's op types and its slowest nodes, from medians per node
/// over `rounds` runs (after `warmup` untimed ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Sum of the nodes' median times, seconds.
    pub total: f64,
    /// tract op -> (nodes, seconds), slowest first.
    pub ops: Vec<(String, usize, f64)>,
    /// Every node, slowest first.
    pub nodes: Vec<NodeTime>,
}

/// Profiles the classifier's plan node by node (tract's evaluation hook) on the same input
/// [`run`] uses.
pub fn profile(m: &Classifier, warmup: usize, rounds: usize) -> Result<Profile> {
    let x = crate::Tensor::from(input(m));
    m.model().profile(vec![x.clone()], warmup)?;
    let mut nodes = m.model().profile(vec![x], rounds)?;
    let mut ops: Vec<(String, usize, f64)> = Vec::new();
    for n in &nodes {
        match ops.iter_mut().find(|o| o.0 == n.op) {
            Some(o) => {
                o.1 += 1;
                o.2 += n.seconds;
            }
            None => ops.push((n.op.clone(), 1, n.seconds)),
        }
    }
    ops.sort_by(|a, b| b.2.total_cmp(&a.2));
    nodes.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Ok(Profile {
        total: nodes.iter().map(|n| n.seconds).sum(),
        ops,
        nodes,
    })
}

/// Runs `warmup` untimed then `iters` timed batches of each model, interleaved, on a fixed
/// pseudo-random input, and returns one [`Stats`] per model.
pub fn run(models: &[&Classifier], warmup: usize, iters: usize) -> Result<Vec<Stats>> {
    let inputs: Vec<Array4<f32>> = models.iter().map(|m| input(m)).collect();
    let mut samples = vec![Vec::with_capacity(iters); models.len()];
    for i in 0..warmup + iters {
        for (k, (m, x)) in models.iter().zip(&inputs).enumerate() {
            let input = x.clone();
            let t = Instant::now();
            m.run(input)?;
            if i >= warmup {
                samples[k].push(t.elapsed().as_secs_f64());
            }
        }
    }
    Ok(models
        .iter()
        .zip(&samples)
        .map(|(m, s)| summarize(s, m.batch(), m.load_seconds()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.9), 90.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn summary_reports_throughput_at_the_median() {
        let st = summarize(&[0.010, 0.020, 0.030], 4, 0.5);
        assert_eq!(st.p50_ms, 20.0);
        assert!((st.throughput_per_s - 200.0).abs() < 1e-9);
        assert_eq!(st.load_ms, 500.0);
    }
}
