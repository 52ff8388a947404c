//! Activation ranges from calibration images run through the float model in tract.
//!
//! Every tensor to observe is made a graph output of a copy of the model, which is planned once
//! by msn-runtime (msn-fold's passes, the guards, tract's optimiser keep requested outputs).
//! `minmax` takes the extremes in one pass; `percentile` and `entropy` take a second pass that
//! histograms each tensor over its extremes (2048 bins) and clip the range from it.

use crate::{Error, Result};
use msn_onnx::ModelProto;
use msn_runtime::model::{Plan, Source};
use ndarray::{Array4, ArrayD};
use std::collections::HashMap;
use std::path::Path;

/// How a tensor's range is chosen from what calibration observed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The smallest and largest values seen.
    MinMax,
    /// The given percentile of the values at the top (and its mirror at the bottom), e.g.
    /// 99.99: outliers beyond are clipped.
    Percentile(f64),
    /// The clipping threshold of |x| whose 8-bit quantization loses the least information
    /// (smallest KL divergence from the observed distribution; TensorRT's calibration).
    Entropy,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile(_) => "percentile",
            Method::Entropy => "entropy",
        }
    }
}

const BINS: usize = 2048;

#[derive(Debug, Clone)]
struct Observer {
    min: f32,
    max: f32,
    /// Second pass: counts over `[lo, hi]`.
    hist: Vec<u64>,
    lo: f32,
    hi: f32,
}

impl Observer {
    fn new() -> Self {
        Observer {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: Vec::new(),
            lo: 0.0,
            hi: 0.0,
        }
    }

    fn extremes(&mut self, values: &[f32]) {
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    fn start_histogram(&mut self, method: Method) {
        let (lo, hi) = match method {
            Method::Entropy => (0.0, self.min.abs().max(self.max.abs())),
            _ => (self.min, self.max),
        };
        self.lo = lo;
        self.hi = hi;
        self.hist = vec![0; BINS];
    }

    fn histogram(&mut self, values: &[f32], method: Method) {
        let width = (self.hi - self.lo) / BINS as f32;
        if width.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return;
        }
        for &v in values.iter().filter(|v| v.is_finite()) {
            let v = if method == Method::Entropy {
                v.abs()
            } else {
                v
            };
            let b = (((v - self.lo) / width) as usize).min(BINS - 1);
            self.hist[b] += 1;
        }
    }

    fn range(&self, method: Method) -> (f32, f32) {
        if !self.min.is_finite() || !self.max.is_finite() {
            return (0.0, 0.0);
        }
        let width = (self.hi - self.lo) / BINS as f32;
        let total: u64 = self.hist.iter().sum();
        if total == 0 || width <= 0.0 {
            return (self.min, self.max);
        }
        match method {
            Method::MinMax => (self.min, self.max),
            Method::Percentile(p) => {
                let tail = ((1.0 - p / 100.0) * total as f64).max(0.0) as u64;
                let (mut below, mut lo_bin) = (0u64, 0);
                for (i, &c) in self.hist.iter().enumerate() {
                    if below + c > tail {
                        lo_bin = i;
                        break;
                    }
                    below += c;
                }
                let (mut above, mut hi_bin) = (0u64, BINS - 1);
                for (i, &c) in self.hist.iter().enumerate().rev() {
                    if above + c > tail {
                        hi_bin = i;
                        break;
                    }
                    above += c;
                }
                let lo = (self.lo + lo_bin as f32 * width).max(self.min);
                let hi = (self.lo + (hi_bin + 1) as f32 * width).min(self.max);
                (lo, hi)
            }
            Method::Entropy => {
                // 8 bits of levels over [0, t] for a non-negative tensor, 7 over each side
                // of a signed one.
                // The bin at 0 is left out: after a ReLU it holds most values, which
                // quantize exactly whatever the range, and would pull the threshold down.
                let levels = if self.min >= 0.0 { 256 } else { 128 };
                let mut hist = self.hist.clone();
                hist[0] = 0;
                let t = (entropy_threshold(&hist, levels) as f32 + 0.5) * width;
                (self.min.max(-t), self.max.min(t))
            }
        }
    }
}

/// The bin (index of the last bin kept) at which clipping a histogram of |x| and quantizing it
/// to `levels` levels diverges least (KL) from it.
pub fn entropy_threshold(hist: &[u64], levels: usize) -> usize {
    let n = hist.len();
    if n <= levels {
        return n - 1;
    }
    let mut best = (f64::INFINITY, n - 1);
    for i in (levels..=n).step_by(4) {
        // The reference: the first i bins, the rest clipped into the last one.
        let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += hist[i..].iter().map(|&c| c as f64).sum::<f64>();
        // Its quantized form: i bins merged into `levels` groups, each group's mass spread
        // evenly over its non-empty bins.
        let mut q = vec![0f64; i];
        for g in 0..levels {
            let (a, b) = (
                g * i / levels,
                ((g + 1) * i / levels).max(g * i / levels + 1),
            );
            let mass: f64 = hist[a..b].iter().map(|&c| c as f64).sum();
            let nonzero = hist[a..b].iter().filter(|&&c| c > 0).count();
            if nonzero > 0 {
                for j in a..b {
                    if hist[j] > 0 {
                        q[j] = mass / nonzero as f64;
                    }
                }
            }
        }
        let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
        if sp == 0.0 || sq == 0.0 {
            continue;
        }
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(&pi, _)| pi > 0.0)
            .map(|(&pi, &qi)| {
                let (pi, qi) = (pi / sp, (qi / sq).max(1e-12));
                pi * (pi / qi).ln()
            })
            .sum();
        if kl < best.0 {
            best = (kl, i - 1);
        }
    }
    best.1
}

/// The observed range of each of `names` over `images` (each `[1, C, H, W]`, already
/// preprocessed), chosen by `method`. `progress(done, total)` is called after every image.
pub fn ranges(
    model: &ModelProto,
    origin: &Path,
    names: &[String],
    images: &[Array4<f32>],
    method: Method,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<HashMap<String, (f32, f32)>> {
    let Some(first) = images.first() else {
        return Err(Error::Calibration("no calibration images".into()));
    };
    let mut probe = model.clone();
    let g = probe.graph.as_mut().expect("validated: has a graph");
    let input = g
        .input
        .iter()
        .map(|i| i.name().to_string())
        .find(|n| !g.initializer.iter().any(|t| t.name() == n))
        .ok_or_else(|| Error::Calibration("the model has no input".into()))?;
    // Which output (or the input itself) each observed name comes from.
    let mut slot: Vec<Option<usize>> = Vec::with_capacity(names.len());
    for name in names {
        if *name == input {
            slot.push(None);
            continue;
        }
        let at = match g.output.iter().position(|o| o.name() == name) {
            Some(i) => i,
            None => {
                g.output.push(msn_onnx::builder::float_value(name));
                g.output.len() - 1
            }
        };
        slot.push(Some(at));
    }
    let bytes = msn_onnx::io::to_bytes(&probe);
    let source = Source::from_bytes(bytes, origin)?;
    let plan = source.plan(&[first.shape().to_vec()], Plan::Optimized)?;
    let mut observers = vec![Observer::new(); names.len()];
    let passes = if method == Method::MinMax { 1 } else { 2 };
    let total = images.len() * passes;
    for pass in 0..passes {
        if pass == 1 {
            observers.iter_mut().for_each(|o| o.start_histogram(method));
        }
        for (k, image) in images.iter().enumerate() {
            let outs: Vec<ArrayD<f32>> = plan.run_f32(image.clone().into_dyn())?;
            for (o, s) in observers.iter_mut().zip(&slot) {
                let values = match s {
                    None => image.as_slice().expect("standard layout"),
                    Some(i) => outs[*i].as_slice().ok_or_else(|| {
                        Error::Calibration("tract returned a non-contiguous tensor".into())
                    })?,
                };
                if pass == 0 {
                    o.extremes(values)
                } else {
                    o.histogram(values, method)
                }
            }
            progress(pass * images.len() + k + 1, total);
        }
    }
    Ok(names
        .iter()
        .cloned()
        .zip(observers.iter().map(|o| o.range(method)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(values: &[f32], method: Method) -> (f32, f32) {
        let mut o = Observer::new();
        o.extremes(values);
        o.start_histogram(method);
        o.histogram(values, method);
        o.range(method)
    }

    #[test]
    fn minmax_takes_the_extremes() {
        assert_eq!(observed(&[-1.0, 0.5, 3.0], Method::MinMax), (-1.0, 3.0));
        assert_eq!(observed(&[], Method::MinMax), (0.0, 0.0));
    }

    #[test]
    fn percentile_clips_outliers() {
        let mut v: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        v.push(100.0);
        let (lo, hi) = observed(&v, Method::Percentile(99.9));
        assert!((0.0..0.05).contains(&lo), "{lo}");
        assert!((0.9..1.1).contains(&hi), "{hi}");
    }

    #[test]
    fn entropy_clips_a_long_tail_but_keeps_the_bulk() {
        // A Laplace-like bulk within about 1 and a few far outliers at 50.
        let mut v = Vec::new();
        for i in 0..20_000 {
            let u = (i as f32 + 0.5) / 20_000.0;
            v.push(-(1.0 - u).ln() * 0.2);
        }
        v.extend([50.0; 3]);
        let (_, hi) = observed(&v, Method::Entropy);
        assert!((0.8..25.0).contains(&hi), "{hi}");
    }
}
