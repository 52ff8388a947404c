//! `msn-classify` / `msn classify`: top-k labels for image files, folders and streams, and the
//! accuracy on folders laid out one subfolder per class.

mod stream;

use crate::PreprocessArgs;
use anyhow::{bail, Result};
use clap::Args;
use msn_runtime::evaluate::{class_folders, Confusion};
use msn_runtime::{softmax, topk, Classifier, LoadOptions};
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Classify images with an ONNX model and print the most probable labels.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The ONNX classifier (default: the Fashion-MNIST model built into this binary)
    #[arg(long, value_name = "M.onnx")]
    pub model: Option<PathBuf>,
    /// Class names, one per line (default: the model's own labels)
    #[arg(long, value_name = "L.txt")]
    pub labels: Option<PathBuf>,
    /// How many labels to print per image
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top_k: usize,
    /// One JSON object per line per image (with --evaluate: one object with the figures)
    #[arg(long)]
    pub json: bool,
    /// Accuracy, per-class recall and the confusion matrix of each DIR, laid out one subfolder
    /// per class (DIR/<label>/*.png, as torchvision's ImageFolder and `msn teach` read them),
    /// instead of a line per image
    #[arg(long)]
    pub evaluate: bool,
    /// Images per inference run when classifying many (for models with a free batch size)
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub batch: usize,
    /// Threads for tract's matrix products (0: every core, 1: single-threaded)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Compute in half precision (tract's f16 plan) on CPUs with f16 arithmetic: ARMv8.2-A
    /// boards (Raspberry Pi 5, Jetson Orin) or x86-64 with AVX512-FP16; refused elsewhere
    #[arg(long)]
    pub f16: bool,
    /// With `-`: the stream is raw RGB24 frames of W x H pixels (ffmpeg -f rawvideo -pix_fmt
    /// rgb24), not PNG/JPEG images
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub raw: Option<(u32, u32)>,
    /// With `-`: classify every Nth frame only (1: all)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub every: usize,
    /// With `-`: classify at most F frames a second, dropping those that arrive sooner (when
    /// the model is slower than the camera)
    #[arg(long, value_name = "F")]
    pub max_fps: Option<f64>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// Image files (PNG, JPEG, WebP, BMP, TIFF, GIF), folders of them (subfolders too), or `-`:
    /// images one after another on standard input (concatenated PNG/JPEG as `ffmpeg -f
    /// image2pipe` writes them, MJPEG, or --raw frames)
    #[arg(required = true, value_name = "IMAGE|DIR|-")]
    pub inputs: Vec<PathBuf>,
}

/// `WxH`, each side 1 to the largest image side accepted.
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let max = msn_runtime::preprocess::MAX_SIDE;
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}' is not WxH (e.g. 224x224)"))?;
    let side = |v: &str| match v.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("'{v}' is not a side from 1 to {max}")),
    };
    Ok((side(w)?, side(h)?))
}

#[derive(Serialize)]
struct Top {
    index: usize,
    label: String,
    prob: f32,
}

#[derive(Serialize)]
struct Line<'a> {
    file: &'a str,
    top: Vec<Top>,
}

/// The files to classify: files as given, folders expanded to the images under them (in
/// subfolders too), in name order.
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let found = msn_runtime::preprocess::images_under(input)
                .map_err(|(p, e)| anyhow::anyhow!("{}: {e}", p.display()))?;
            if found.is_empty() {
                bail!(
                    "{}: the folder has no .{} files (subfolders included)",
                    input.display(),
                    msn_runtime::preprocess::IMAGE_EXTENSIONS.join(", .")
                );
            }
            files.extend(found);
        } else if input.exists() {
            files.push(input.clone());
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    Ok(files)
}

/// The built-in default model: the Fashion-MNIST `cnn3` MSN classifier that our trainer made
/// (`models/README.md`), folded. Built into the binary so one file is all a board needs.
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../../../models/fashion-cnn3-msn.folded.onnx");

/// How the built-in model is named in messages.
pub const DEFAULT_MODEL_NAME: &str = "fashion-cnn3-msn.folded.onnx (built in)";

/// Loads the classifier named by `--model`, or the built-in default.
pub fn load_classifier(model: Option<&Path>, options: &LoadOptions) -> Result<Classifier> {
    Ok(match model {
        Some(path) => Classifier::load(path, options)?,
        None => Classifier::from_bytes(DEFAULT_MODEL, Path::new(DEFAULT_MODEL_NAME), options)?,
    })
}

/// One batch's images as decoded (index into the file list and input), and the errors of
/// those that failed.
struct Decoded<T> {
    images: Vec<(usize, T)>,
    errors: Vec<String>,
}

impl<T> Default for Decoded<T> {
    fn default() -> Self {
        Decoded {
            images: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// The k most probable classes of one logits row.
fn top_of(clf: &Classifier, logits: &[f32], k: usize) -> Vec<Top> {
    topk(&softmax(logits), k)
        .into_iter()
        .map(|(index, prob)| Top {
            index,
            label: clf.label(index),
            prob,
        })
        .collect()
}

/// Runs the command, writing results to stdout. Per-image failures are reported on stderr and
/// the other images still classified; any failure makes the result an error.
pub fn run(args: ClassifyArgs) -> Result<()> {
    if args.top_k == 0 || args.batch == 0 || args.every == 0 {
        bail!("--top-k, --batch and --every must be at least 1");
    }
    if let Some(f) = args.max_fps {
        if !(f.is_finite() && f > 0.0) {
            bail!("--max-fps must be a positive number, got {f}");
        }
    }
    let streaming = args.inputs.iter().any(|p| p.as_os_str() == "-");
    if streaming && args.inputs.len() > 1 {
        bail!("`-` (images on standard input) must be the only input");
    }
    if !streaming && (args.raw.is_some() || args.max_fps.is_some() || args.every != 1) {
        bail!("--raw, --every and --max-fps apply to `-` (images on standard input) only");
    }
    if streaming && args.evaluate {
        bail!("--evaluate reads class folders, not standard input");
    }
    msn_runtime::set_threads(args.threads);
    crate::plan_for(args.f16)?;
    if streaming {
        return stream::run(&args);
    }
    if args.evaluate {
        return evaluate(&args);
    }
    let files = expand(&args.inputs)?;
    let clf = load(&args, files.len())?;
    let failed = classify_files(&clf, &files, |i, logits| {
        let top = top_of(&clf, logits, args.top_k);
        print_result(&files[i].display().to_string(), top, args.json);
    })?;
    if failed > 0 {
        bail!(
            "{failed} of {} image(s) could not be classified",
            files.len()
        );
    }
    Ok(())
}

/// The classifier for `images` images in batches of `--batch`.
fn load(args: &ClassifyArgs, images: usize) -> Result<Classifier> {
    let options = LoadOptions {
        batch: Some(args.batch.min(images).max(1)),
        preprocess: args.preprocess.overrides(),
        labels: args.labels.clone(),
        plan: crate::plan_for(args.f16)?,
    };
    load_classifier(args.model.as_deref(), &options)
}

/// Classifies `files` in batches, decoding on another thread a batch or two ahead while the
/// model runs; `answer(index, logits)` is called for each image in order. Files that cannot be
/// read are reported on stderr and counted; the count is returned.
fn classify_files(
    clf: &Classifier,
    files: &[PathBuf],
    mut answer: impl FnMut(usize, &[f32]),
) -> Result<usize> {
    let mut failed = 0usize;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Decoded<_>>(2);
        let (pre, batch) = (clf.preprocess(), clf.batch());
        scope.spawn(move || {
            for (c, chunk) in files.chunks(batch).enumerate() {
                let mut decoded = Decoded::default();
                for (j, f) in chunk.iter().enumerate() {
                    match pre.load(f) {
                        Ok(img) => decoded.images.push((c * batch + j, img)),
                        Err(e) => decoded.errors.push(e.to_string()),
                    }
                }
                if tx.send(decoded).is_err() {
                    return; // the model side stopped on an error
                }
            }
        });
        for decoded in rx {
            for e in &decoded.errors {
                eprintln!("error: {e}");
            }
            failed += decoded.errors.len();
            if decoded.images.is_empty() {
                continue;
            }
            let (index, images): (Vec<usize>, Vec<_>) = decoded.images.into_iter().unzip();
            let logits = clf.run_many(&images)?;
            for (&i, row) in index.iter().zip(logits.rows()) {
                answer(
                    i,
                    row.as_slice()
                        .expect("rows of a standard array are contiguous"),
                );
            }
        }
        Ok(())
    })?;
    Ok(failed)
}

/// `--evaluate`: each folder's images by class folder, the answers counted in a confusion
/// matrix; the figures printed as text or one JSON object per folder.
fn evaluate(args: &ClassifyArgs) -> Result<()> {
    for dir in &args.inputs {
        if !dir.is_dir() {
            bail!(
                "{}: --evaluate takes folders laid out one subfolder per class",
                dir.display()
            );
        }
    }
    // Loaded first: the class folders are matched to its labels.
    let model = load(args, args.batch)?;
    for dir in &args.inputs {
        let start = std::time::Instant::now();
        let labelled =
            class_folders(dir, model.labels(), model.classes()).map_err(anyhow::Error::msg)?;
        if labelled.loose > 0 {
            eprintln!(
                "warning: {}: {} image(s) outside the class folders are not counted",
                dir.display(),
                labelled.loose
            );
        }
        let (files, truth): (Vec<PathBuf>, Vec<usize>) = labelled.images.into_iter().unzip();
        let mut confusion = Confusion::new(model.classes());
        let failed = classify_files(&model, &files, |i, logits| {
            let predicted = topk(logits, 1)[0].0;
            confusion.add(truth[i], predicted);
        })?;
        let seconds = start.elapsed().as_secs_f64();
        if args.json {
            let per_class: Vec<_> = (0..model.classes())
                .filter(|&c| confusion.support(c) > 0)
                .map(|c| {
                    json!({"index": c, "label": model.label(c), "images": confusion.support(c),
                           "recall": confusion.recall(c)})
                })
                .collect();
            println!(
                "{}",
                json!({
                    "folder": dir.display().to_string(),
                    "images": confusion.total(),
                    "correct": confusion.correct(),
                    "accuracy": confusion.accuracy(),
                    "unreadable": failed,
                    "per_class": per_class,
                    "labels": (0..model.classes()).map(|c| model.label(c)).collect::<Vec<_>>(),
                    "confusion": confusion.rows(),
                    "seconds": seconds,
                })
            );
        } else {
            println!("{}", dir.display());
            print!("{}", confusion.render(|c| model.label(c)));
            println!(
                "({} images in {seconds:.1} s{})",
                confusion.total(),
                if failed > 0 {
                    format!("; {failed} unreadable, not counted")
                } else {
                    String::new()
                }
            );
        }
        if failed > 0 {
            bail!(
                "{}: {failed} of {} image(s) could not be classified",
                dir.display(),
                files.len()
            );
        }
    }
    Ok(())
}

fn print_result(file: &str, top: Vec<Top>, json: bool) {
    if json {
        let line = Line { file, top };
        println!(
            "{}",
            serde_json::to_string(&line).expect("plain data serializes")
        );
    } else {
        println!("{file}");
        for t in top {
            println!("  {:6.2}%  {:>4}  {}", t.prob * 100.0, t.index, t.label);
        }
    }
}
