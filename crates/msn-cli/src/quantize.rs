//! `msn-quantize` / `msn quantize`: an int8 model calibrated on the user's own images.

use crate::PreprocessArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use msn_quantize::{Format, Method, Options, QType, Settings};
use msn_runtime::{Classifier, LoadOptions, Preprocess};
use ndarray::{Array4, Axis};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MethodArg {
    Minmax,
    Percentile,
    Entropy,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Qoperator,
    Qdq,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActivationArg {
    U8,
    S8,
}

/// Quantize a float ONNX model to int8, calibrated on your images (folds it first).
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The float ONNX model
    #[arg(value_name = "IN.onnx")]
    pub input: PathBuf,
    /// Where to write the int8 model (atomically)
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// A folder of calibration images (read recursively)
    #[arg(long, value_name = "DIR", required_unless_present = "dataset")]
    pub calibration: Option<PathBuf>,
    /// Calibrate on a data set the trainer reads instead (mnist, fashion-mnist, cifar10; its
    /// training split), from --data-dir
    #[arg(
        long,
        value_name = "NAME",
        requires = "data_dir",
        conflicts_with = "calibration"
    )]
    pub dataset: Option<String>,
    /// The data set's folder
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How many calibration images (spread evenly over what the folder or data set holds)
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub images: usize,
    /// How activation ranges are chosen from what calibration saw
    #[arg(long, value_enum, default_value = "minmax")]
    pub method: MethodArg,
    /// With --method percentile: the percentile kept
    #[arg(long, value_name = "P", default_value_t = 99.99)]
    pub percentile: f64,
    /// One weight scale per output channel (the default)
    #[arg(long, conflicts_with = "per_tensor")]
    pub per_channel: bool,
    /// One weight scale per tensor
    #[arg(long)]
    pub per_tensor: bool,
    /// qoperator: QLinearConv and integer matrix products; qdq: float operators between
    /// QuantizeLinear/DequantizeLinear pairs
    #[arg(long, value_enum, default_value = "qoperator")]
    pub format: FormatArg,
    /// Activation type: u8 (asymmetric) or s8
    #[arg(long, value_enum, default_value = "u8")]
    pub activations: ActivationArg,
    /// Quantize depthwise convolutions too (off by default: tract runs them in int8 far slower
    /// than in float)
    #[arg(long)]
    pub int8_depthwise: bool,
    /// Compare int8 and float in tract on N calibration images before writing
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub verify: usize,
    /// Smallest top-1 agreement with the float model --verify accepts
    #[arg(long, value_name = "F", default_value_t = 0.9)]
    pub min_agreement: f64,
    /// Write the model even if --verify finds it below --min-agreement
    #[arg(long)]
    pub force: bool,
    /// Also compare int8 and float on the images of DIR (recursive; say, images not used for
    /// calibration): top-1 and top-5 agreement, output error
    #[arg(long, value_name = "DIR")]
    pub evaluate: Option<PathBuf>,
    /// With --evaluate: how many of its images (spread evenly; 0: all)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub evaluate_images: usize,
    /// With --dataset: also evaluate both models on N images of its test split (0: all)
    #[arg(long, value_name = "N")]
    pub test: Option<usize>,
    /// Write a JSON report (ranges, coverage, verification, evaluation)
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Threads for tract's matrix products (0: every core)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// `count` indices spread evenly over `0..len`.
fn spread(len: usize, count: usize) -> Vec<usize> {
    let count = count.min(len);
    (0..count).map(|i| i * len / count).collect()
}

fn batch_of_one(image: ndarray::Array3<f32>) -> Array4<f32> {
    image.insert_axis(Axis(0))
}

/// The most preprocessed images held in memory at once (calibration, verification, evaluation
/// or the test split each keep their images until they are done).
const MAX_IMAGE_BYTES: usize = 2 << 30;

/// Refuses to decode `count` images that would not fit in [`MAX_IMAGE_BYTES`].
fn ensure_fits(count: usize, p: &Preprocess, what: &str) -> Result<()> {
    let each = p.channels * p.height * p.width * 4;
    let limit = MAX_IMAGE_BYTES / each.max(1);
    if count > limit {
        bail!(
            "{what}: {count} images of {}x{}x{} would hold {:.1} GB in memory; use at most {limit}",
            p.channels,
            p.height,
            p.width,
            (count as f64) * (each as f64) / 1e9
        );
    }
    Ok(())
}

fn folder_images(dir: &Path, p: &Preprocess, count: usize) -> Result<Vec<Array4<f32>>> {
    let files = msn_runtime::preprocess::images_under(dir)
        .map_err(|(path, e)| anyhow::anyhow!("{}: {e}", path.display()))?;
    if files.is_empty() {
        bail!(
            "{}: no images (.{}) in the folder or its subfolders",
            dir.display(),
            msn_runtime::preprocess::IMAGE_EXTENSIONS.join(", .")
        );
    }
    let picked = spread(files.len(), count);
    ensure_fits(picked.len(), p, &dir.display().to_string())?;
    let mut out = Vec::new();
    for i in picked {
        match p.load(&files[i]) {
            Ok(x) => out.push(batch_of_one(x)),
            Err(e) => eprintln!("warning: skipped {}: {e}", files[i].display()),
        }
    }
    if out.is_empty() {
        bail!("{}: none of the images could be read", dir.display());
    }
    Ok(out)
}

/// Preprocessed images and labels from a data set the trainer reads.
#[cfg(feature = "train")]
fn dataset_images(
    name: &str,
    dir: &Path,
    test: bool,
    p: &Preprocess,
    count: usize,
) -> Result<(Vec<Array4<f32>>, Vec<usize>)> {
    use msn_train::data::{load, Split};
    let split = if test { Split::Test } else { Split::Train };
    let data =
        load(name, dir, split).with_context(|| format!("{}: data set {name}", dir.display()))?;
    let [c, h, w] = data.shape();
    let count = if count == 0 { data.len() } else { count };
    let picked = spread(data.len(), count);
    ensure_fits(
        picked.len(),
        p,
        &format!("{}: data set {name}", dir.display()),
    )?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in picked {
        let px = data.images.index_axis(Axis(0), i);
        let img = match c {
            1 => image::DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w as u32, h as u32, px.iter().copied().collect())
                    .expect("h x w pixels"),
            ),
            _ => {
                let hwc: Vec<u8> = px.permuted_axes([1, 2, 0]).iter().copied().collect();
                image::DynamicImage::ImageRgb8(
                    image::RgbImage::from_raw(w as u32, h as u32, hwc).expect("h x w x 3 pixels"),
                )
            }
        };
        images.push(batch_of_one(p.apply(&img)));
        labels.push(data.labels[i] as usize);
    }
    Ok((images, labels))
}

#[cfg(not(feature = "train"))]
fn dataset_images(
    _: &str,
    _: &Path,
    _: bool,
    _: &Preprocess,
    _: usize,
) -> Result<(Vec<Array4<f32>>, Vec<usize>)> {
    bail!("--dataset needs the data set readers of the full build (this one is runtime-only): use --calibration DIR")
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    msn_runtime::set_threads(args.threads);
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.min_agreement) {
        bail!("--min-agreement must be between 0 and 1");
    }
    if !(50.0..100.0).contains(&args.percentile) {
        bail!("--percentile must be at least 50 and below 100");
    }
    if args.test.is_some() && args.dataset.is_none() {
        bail!("--test needs --dataset");
    }
    let source = msn_runtime::Source::read(&args.input)?;
    // The classifier's preprocessing: the model's metadata, overridden by the flags.
    let options = LoadOptions {
        preprocess: args.preprocess.overrides(),
        ..Default::default()
    };
    let classifier = Classifier::load(&args.input, &options)?;
    let pre = classifier.preprocess().clone();
    let images = match (&args.calibration, &args.dataset) {
        (Some(dir), _) => folder_images(dir, &pre, args.images)?,
        (None, Some(name)) => {
            let dir = args.data_dir.as_deref().expect("clap: requires data_dir");
            dataset_images(name, dir, false, &pre, args.images)?.0
        }
        (None, None) => unreachable!("clap: one of them is required"),
    };
    let method = match args.method {
        MethodArg::Minmax => Method::MinMax,
        MethodArg::Percentile => Method::Percentile(args.percentile),
        MethodArg::Entropy => Method::Entropy,
    };
    let opts = Options {
        method,
        settings: Settings {
            format: match args.format {
                FormatArg::Qoperator => Format::QOperator,
                FormatArg::Qdq => Format::Qdq,
            },
            per_channel: !args.per_tensor,
            activations: match args.activations {
                ActivationArg::U8 => QType::U8,
                ActivationArg::S8 => QType::I8,
            },
        },
        depthwise: args.int8_depthwise,
    };
    let bar = indicatif::ProgressBar::new(0).with_message("calibrating");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    let start = std::time::Instant::now();
    let (model, report) = msn_quantize::quantize(&source, &images, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("{}: cannot quantize", args.input.display()))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let bytes = msn_onnx::io::to_bytes(&model);
    let int8 = msn_runtime::Source::from_bytes(bytes.clone(), &args.output)?;
    let verify_images = &images[..args.verify.min(images.len())];
    let (agreement, _, _) = msn_quantize::compare(&source, &int8, verify_images)?;
    let float_bytes = std::fs::metadata(&args.input).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} images calibrated ({}) in {seconds:.1} s",
        args.input.display(),
        images.len(),
        report.method
    );
    let hist = |h: &std::collections::BTreeMap<String, usize>| {
        h.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  int8:  {}", hist(&report.quantized_ops));
    println!(
        "  float: {}",
        if report.float_ops.is_empty() {
            "nothing".into()
        } else {
            hist(&report.float_ops)
        }
    );
    println!(
        "  size: {} -> {} bytes ({:.3}x)",
        float_bytes,
        bytes.len(),
        bytes.len() as f64 / float_bytes.max(1) as f64
    );
    if agreement.images > 0 {
        println!(
            "  verify on {} images: top-1 agreement {:.3}, float top-1 in int8 top-5 {:.3}, max |output error| {:.4}, max |probability error| {:.4}",
            agreement.images, agreement.top1_agreement, agreement.top5_agreement, agreement.max_abs_error, agreement.max_probability_error
        );
    }
    let mut test = serde_json::Value::Null;
    if let (Some(n), Some(name)) = (args.test, &args.dataset) {
        let dir = args.data_dir.as_deref().expect("clap: requires data_dir");
        let (timages, labels) = dataset_images(name, dir, true, &pre, n)?;
        let (a, top_f, top_q) = msn_quantize::compare(&source, &int8, &timages)?;
        let acc = |t: &[usize]| {
            t.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64
        };
        let (af, aq) = (acc(&top_f), acc(&top_q));
        println!(
            "  test split, {} images: float accuracy {af:.4}, int8 accuracy {aq:.4} ({:+.2} points), top-1 agreement {:.4}",
            labels.len(),
            (aq - af) * 100.0,
            a.top1_agreement
        );
        test = json!({"images": labels.len(), "float_accuracy": af, "int8_accuracy": aq,
            "agreement": a, "int8_top1": top_q, "float_top1": top_f});
    }
    let mut evaluated = serde_json::Value::Null;
    if let Some(dir) = &args.evaluate {
        let n = if args.evaluate_images == 0 {
            usize::MAX
        } else {
            args.evaluate_images
        };
        let eimages = folder_images(dir, &pre, n)?;
        let (a, _, _) = msn_quantize::compare(&source, &int8, &eimages)?;
        println!(
            "  {}: {} images: top-1 agreement {:.3}, float top-1 in int8 top-5 {:.3}, max |probability error| {:.4}",
            dir.display(),
            a.images,
            a.top1_agreement,
            a.top5_agreement,
            a.max_probability_error
        );
        evaluated = json!(a);
    }
    let refused = agreement.images > 0 && agreement.top1_agreement < args.min_agreement;
    if let Some(path) = &args.report {
        let r = json!({"input": args.input, "output": args.output, "seconds": seconds,
            "float_bytes": float_bytes, "int8_bytes": bytes.len(),
            "size_ratio": bytes.len() as f64 / float_bytes.max(1) as f64,
            "written": !refused || args.force,
            "quantization": report, "verify": agreement, "evaluate": evaluated, "test": test});
        msn_onnx::io::write_atomic(path, serde_json::to_string_pretty(&r)?.as_bytes())
            .with_context(|| format!("{}: cannot write the report", path.display()))?;
    }
    if refused && !args.force {
        bail!(
            "{}: int8 top-1 agreement with the float model is {:.3} on {} images, below --min-agreement {}: not written (try --method percentile or entropy, or --force)",
            args.input.display(),
            agreement.top1_agreement,
            agreement.images,
            args.min_agreement
        );
    }
    msn_onnx::io::write_atomic(&args.output, &bytes)
        .with_context(|| format!("{}: cannot write the model", args.output.display()))?;
    println!("  wrote {}", args.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_that_would_not_fit_in_memory_are_refused_before_decoding() {
        let p = Preprocess {
            channels: 3,
            height: 4096,
            width: 4096,
            resize: msn_onnx::meta::Resize::Exact,
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
        };
        // 201 MB each: 10 fit in the 2 GiB budget, 11 do not.
        assert!(ensure_fits(10, &p, "dir").is_ok());
        let e = ensure_fits(11, &p, "dir").unwrap_err().to_string();
        assert!(
            e.contains("dir: 11 images of 3x4096x4096") && e.contains("at most 10"),
            "{e}"
        );
    }
}
