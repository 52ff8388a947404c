//! `msn-classify` / `msn classify`: top-k labels for image files and folders.

use crate::PreprocessArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use msn_runtime::{softmax, topk, Classifier, LoadOptions};
use serde::Serialize;
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
    /// One JSON object per line per image
    #[arg(long)]
    pub json: bool,
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
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// Image files (PNG, JPEG, WebP, BMP, TIFF) or folders of them
    #[arg(required = true, value_name = "IMAGE|DIR")]
    pub inputs: Vec<PathBuf>,
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

/// The files to classify: files as given, folders expanded to their images in name order.
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("{}: cannot list the folder", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && msn_runtime::preprocess::is_image_file(p))
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: the folder has no .png, .jpg, .jpeg, .webp, .bmp or .tiff files",
                    input.display()
                );
            }
            found.sort();
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
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../../models/fashion-cnn3-msn.folded.onnx");

/// How the built-in model is named in messages.
pub const DEFAULT_MODEL_NAME: &str = "fashion-cnn3-msn.folded.onnx (built in)";

/// Loads the classifier named by `--model`, or the built-in default.
pub fn load_classifier(model: Option<&Path>, options: &LoadOptions) -> Result<Classifier> {
    Ok(match model {
        Some(path) => Classifier::load(path, options)?,
        None => Classifier::from_bytes(DEFAULT_MODEL, Path::new(DEFAULT_MODEL_NAME), options)?,
    })
}

/// One batch's images as decoded (file name and input), and the errors of those that failed.
struct Decoded<T> {
    images: Vec<(String, T)>,
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

/// Runs the command, writing results to stdout. Per-image failures are reported on stderr and
/// the other images still classified; any failure makes the result an error.
pub fn run(args: ClassifyArgs) -> Result<()> {
    if args.top_k == 0 || args.batch == 0 {
        bail!("--top-k and --batch must be at least 1");
    }
    msn_runtime::set_threads(args.threads);
    msn_runtime::set_half(args.f16).map_err(anyhow::Error::msg)?;
    let files = expand(&args.inputs)?;
    let options = LoadOptions {
        batch: Some(args.batch.min(files.len())),
        preprocess: args.preprocess.overrides(),
        labels: args.labels.clone(),
    };
    let clf = load_classifier(args.model.as_deref(), &options)?;
    let mut failed = 0usize;
    // Images are decoded on another thread, a batch or two ahead, while the model runs.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Decoded<_>>(2);
        let (pre, batch, files) = (clf.preprocess(), clf.batch(), &files);
        scope.spawn(move || {
            for chunk in files.chunks(batch) {
                let mut decoded = Decoded::default();
                for f in chunk {
                    match pre.load(f) {
                        Ok(img) => decoded.images.push((f.display().to_string(), img)),
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
            let (names, images): (Vec<String>, Vec<_>) = decoded.images.into_iter().unzip();
            let logits = clf.run_many(&images)?;
            for (file, row) in names.iter().zip(logits.rows()) {
                let probs = softmax(
                    row.as_slice()
                        .expect("rows of a standard array are contiguous"),
                );
                let top: Vec<Top> = topk(&probs, args.top_k)
                    .into_iter()
                    .map(|(index, prob)| Top {
                        index,
                        label: clf.label(index),
                        prob,
                    })
                    .collect();
                print_result(file, top, args.json);
            }
        }
        Ok(())
    })?;
    if failed > 0 {
        bail!(
            "{failed} of {} image(s) could not be classified",
            files.len()
        );
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
