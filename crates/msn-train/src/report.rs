//! Reading finished runs back: figures (`msn plot`) and the comparison table of an experiment
//! (`msn experiment`).
//!
//! Figures are drawn with `plotters` into an RGB buffer and encoded as PNG with `image`; the
//! font (DejaVu Sans, see `assets/DejaVuSans.LICENSE`) is built in, so no system font is needed.

use crate::checkpoint::{load_model, RunConfig, METRICS_FILE};
use crate::{write_atomic, Error, Result};
use msn_nn::Module;
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const SIZE: (u32, u32) = (900, 560);

/// One run: its directory, its configuration and its per-epoch metrics.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub epochs: Vec<Value>,
}

impl Run {
    /// Reads `config.json` and `metrics.jsonl` of a run directory.
    pub fn load(dir: &Path) -> Result<Run> {
        let config = RunConfig::load(dir)?;
        let path = dir.join(METRICS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let epochs = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::Checkpoint {
                    path: path.clone(),
                    reason: format!("line {}: {e}", i + 1),
                })
            })
            .collect::<Result<Vec<Value>>>()?;
        Ok(Run {
            dir: dir.to_path_buf(),
            config,
            epochs,
        })
    }

    /// A short name for legends: the norm, or the directory name when runs share a norm.
    pub fn label(&self) -> String {
        format!(
            "{} {} {}",
            self.config.model.architecture, self.config.model.norm, self.config.dataset
        )
    }

    fn series(&self, key: &str) -> Vec<(f64, f64)> {
        self.epochs
            .iter()
            .filter_map(|m| Some((m["epoch"].as_f64()?, m[key].as_f64()?)))
            .collect()
    }

    /// Best and final test accuracy (fractions).
    pub fn accuracy(&self) -> (f64, f64) {
        let acc = self.series("test_acc");
        let best = acc.iter().map(|p| p.1).fold(0.0, f64::max);
        (best, acc.last().map_or(0.0, |p| p.1))
    }

    /// Mean seconds per training epoch.
    pub fn epoch_seconds(&self) -> f64 {
        let t = self.series("epoch_seconds");
        t.iter().map(|p| p.1).sum::<f64>() / t.len().max(1) as f64
    }

    /// Per-layer series of `key` (`mean`, `std`, `grad_sparsity`), in layer order.
    fn layer_series(&self, key: &str) -> Vec<(String, Vec<(f64, f64)>)> {
        let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for m in &self.epochs {
            let Some(epoch) = m["epoch"].as_f64() else {
                continue;
            };
            for l in m["layers"].as_array().into_iter().flatten() {
                let (Some(name), Some(v)) = (l["layer"].as_str(), l[key].as_f64()) else {
                    continue;
                };
                match out.iter_mut().find(|(n, _)| n == name) {
                    Some((_, s)) => s.push((epoch, v)),
                    None => out.push((name.to_string(), vec![(epoch, v)])),
                }
            }
        }
        out
    }
}

fn draw_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("drawing {what}: {e}"))
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is built in and known to parse; failure would leave text undrawn only.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Renders `draw` into a PNG at `path` (written atomically).
fn png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| draw_error("figure", e))?;
    }
    let img = image::RgbImage::from_raw(size.0, size.1, buf).expect("buffer of the image's size");
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| draw_error("PNG", e))?;
    write_atomic(path, &bytes)
}

fn bounds(points: impl Iterator<Item = (f64, f64)>) -> (f64, f64, f64, f64) {
    let mut b = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        b = (b.0.min(x), b.1.max(x), b.2.min(y), b.3.max(y));
    }
    if b.0 > b.1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((b.3 - b.2) * 0.08).max(1e-3);
    (b.0, b.1.max(b.0 + 1.0), b.2 - pad, b.3 + pad)
}

/// Per line, `(x, low, high)` of a shaded band around it.
type Bands = [Vec<(f64, f64, f64)>];

/// Lines of `(label, points)` on one chart.
fn line_chart(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    lines: &[(String, Vec<(f64, f64)>)],
    bands: Option<&Bands>,
) -> Result<()> {
    let all = lines.iter().flat_map(|(_, p)| p.iter().copied());
    let band_points = bands
        .into_iter()
        .flatten()
        .flat_map(|b| b.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]));
    let (x0, x1, y0, y1) = bounds(all.chain(band_points));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| draw_error(title, e))?;
    chart
        .configure_mesh()
        .max_light_lines(0)
        .x_desc("epoch")
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| draw_error(title, e))?;
    for (i, (label, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        if let Some(band) = bands.and_then(|b| b.get(i)) {
            let mut poly: Vec<(f64, f64)> = band.iter().map(|&(x, lo, _)| (x, lo)).collect();
            poly.extend(band.iter().rev().map(|&(x, _, hi)| (x, hi)));
            chart
                .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.15))))
                .map_err(|e| draw_error(title, e))?;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| draw_error(title, e))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| draw_error(title, e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_error(title, e))?;
    Ok(())
}

/// Writes `accuracy.png` (test accuracy per epoch, runs overlaid), `drift.png` (per-layer
/// pre-activation mean with a ± std band, one panel per run) and `sparsity.png` (per-layer
/// gradient sparsity) into `out`; returns the files written.
pub fn plot(runs: &[Run], out: &Path) -> Result<Vec<PathBuf>> {
    if runs.is_empty() {
        return Err(Error::Config("no runs to plot".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut written = Vec::new();

    let acc: Vec<_> = runs
        .iter()
        .map(|r| (r.label(), r.series("test_acc")))
        .collect();
    let path = out.join("accuracy.png");
    png(&path, SIZE, |root| {
        root.fill(&WHITE).map_err(|e| draw_error("accuracy", e))?;
        line_chart(root, "Test accuracy", "test accuracy", &acc, None)
    })?;
    written.push(path);

    for (file, key, what) in [
        ("drift.png", "mean", "pre-activation mean ± std"),
        ("sparsity.png", "grad_sparsity", "gradient sparsity"),
    ] {
        let path = out.join(file);
        let rows = runs.len().div_ceil(2) as u32;
        let cols = runs.len().min(2) as u32;
        png(&path, (SIZE.0 / 2 * cols.max(1) + 20, 420 * rows), |root| {
            root.fill(&WHITE).map_err(|e| draw_error(file, e))?;
            let panels = root.split_evenly((rows as usize, cols as usize));
            for (run, area) in runs.iter().zip(&panels) {
                let lines = run.layer_series(key);
                let bands = (key == "mean").then(|| {
                    let std = run.layer_series("std");
                    lines
                        .iter()
                        .map(|(name, pts)| {
                            let s = std.iter().find(|(n, _)| n == name);
                            pts.iter()
                                .map(|&(x, m)| {
                                    let sd = s
                                        .and_then(|(_, v)| v.iter().find(|p| p.0 == x))
                                        .map_or(0.0, |p| p.1);
                                    (x, m - sd, m + sd)
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                });
                let y = if key == "mean" {
                    "mean ± std"
                } else {
                    "inputs <= 0 (zero or leaked gradient)"
                };
                let title = format!("{}: {what}", run.label());
                line_chart(area, &title, y, &lines, bands.as_deref())?;
            }
            Ok(())
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Trainable parameters of a run's model.
pub fn trainable_parameters(run: &Run) -> Result<usize> {
    let (_, model) = load_model(&run.dir)?;
    Ok(model.num_parameters())
}

/// The Markdown comparison table: best and final test accuracy, mean epoch time and
/// trainable parameters per run.
pub fn markdown_table(runs: &[Run]) -> Result<String> {
    let mut s = String::from(
        "| model | norm | data set | epochs | best test acc | final test acc | s / epoch | trainable params |\n\
         |---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let (best, last) = r.accuracy();
        s += &format!(
            "| {} | {} | {} | {} | {:.2}% | {:.2}% | {:.1} | {} |\n",
            r.config.model.architecture,
            r.config.model.norm,
            r.config.dataset,
            r.epochs.len(),
            100.0 * best,
            100.0 * last,
            r.epoch_seconds(),
            trainable_parameters(r)?
        );
    }
    Ok(s)
}

/// Mean and spread of the final and best test accuracy over the runs of each (model, norm,
/// data set, epochs), in first-seen order: one row per group, `n` the number of runs (seeds);
/// `std` is the sample standard deviation (n - 1), 0 for one run.
pub fn seed_table(runs: &[Run]) -> String {
    let mut groups: Vec<(String, Vec<&Run>)> = Vec::new();
    for r in runs {
        let key = format!(
            "| {} | {} | {} | {} |",
            r.config.model.architecture,
            r.config.model.norm,
            r.config.dataset,
            r.epochs.len()
        );
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    let mut s = String::from(
        "| model | norm | data set | epochs | seeds | final test acc, mean ± std | min | max | best test acc, mean |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (key, rs) in groups {
        let last: Vec<f64> = rs.iter().map(|r| 100.0 * r.accuracy().1).collect();
        let best: Vec<f64> = rs.iter().map(|r| 100.0 * r.accuracy().0).collect();
        let (mean, std) = mean_std(&last);
        let min = last.iter().copied().fold(f64::INFINITY, f64::min);
        let max = last.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        s += &format!(
            "{key} {} | {mean:.2}% ± {std:.2} | {min:.2}% | {max:.2}% | {:.2}% |\n",
            rs.len(),
            mean_std(&best).0
        );
    }
    s
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod seed_tests {
    #[test]
    fn mean_and_sample_std() {
        let (m, s) = super::mean_std(&[97.0, 98.0, 99.0]);
        assert!((m - 98.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(super::mean_std(&[5.0]), (5.0, 0.0));
    }
}
