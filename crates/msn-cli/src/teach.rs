//! `msn teach`: a new classifier from a pretrained ONNX backbone and a folder of photos.

use crate::PreprocessArgs;
use anyhow::{bail, Result};
use clap::Args;
use msn_nn::NormKind;
use msn_teach::head::HeadConfig;
use std::path::PathBuf;

/// Teach a new classifier: run a pretrained backbone on DIR/train/<class>/* once, train a
/// head on its features, and write one folded ONNX model with the labels and preprocessing.
#[derive(Debug, Args)]
pub struct TeachArgs {
    /// The pretrained ONNX model whose features the head learns from
    #[arg(long, value_name = "MODEL.onnx")]
    pub backbone: PathBuf,
    /// A folder with train/<class>/<images> and optionally test/<class>/<images>
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Where to write the taught model
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// The backbone value the head reads (default: the input of its last Gemm or MatMul)
    #[arg(long, value_name = "NAME")]
    pub feature: Option<String>,
    /// Adds a hidden layer of N units (with --norm) before the linear layer
    #[arg(long, value_name = "N")]
    pub hidden: Option<usize>,
    /// The hidden layer's normalization: msn, bn, sn or none
    #[arg(long, default_value = "msn", value_name = "NORM")]
    pub norm: NormKind,
    /// Passes over the cached features
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub epochs: usize,
    /// Adds random crops and mirrors of each training image (--views in all)
    #[arg(long)]
    pub augment: bool,
    /// Feature rows per training image with --augment (the image itself, then augmented views)
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub views: usize,
    /// Adam's learning rate (decays to zero on a cosine)
    #[arg(long, default_value_t = 1e-3, value_name = "LR")]
    pub lr: f32,
    /// Feature rows per training step
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-4, value_name = "W")]
    pub weight_decay: f32,
    /// Seed of the head's weights, the batch order, the held-out split and augmentation
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of each class held out for testing when DIR has no test/ folder
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub test_fraction: f64,
    /// Images per backbone run, for backbones with a free batch size
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch: usize,
    /// Threads for tract's matrix products (0: every core, 1: single-threaded)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Images on which the written model is checked against the trained head
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub verify: usize,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

pub fn run(args: TeachArgs) -> Result<()> {
    if args.epochs == 0 || args.batch_size == 0 || args.batch == 0 || args.views == 0 {
        bail!("--epochs, --batch-size, --batch and --views must be at least 1");
    }
    if args.hidden == Some(0) {
        bail!("--hidden must be at least 1");
    }
    if !(args.lr.is_finite()
        && args.lr > 0.0
        && args.weight_decay.is_finite()
        && args.weight_decay >= 0.0)
    {
        bail!("--lr must be positive and --weight-decay at least 0");
    }
    msn_runtime::set_threads(args.threads);
    let req = msn_teach::Request {
        backbone: args.backbone.clone(),
        data: args.data.clone(),
        output: args.output.clone(),
        feature: args.feature.clone(),
        head: HeadConfig {
            hidden: args.hidden,
            norm: args.norm,
            epochs: args.epochs,
            batch: args.batch_size,
            lr: args.lr,
            weight_decay: args.weight_decay,
            seed: args.seed,
        },
        views: if args.augment { args.views } else { 1 },
        preprocess: args.preprocess.overrides(),
        batch: args.batch,
        test_fraction: args.test_fraction,
        verify: args.verify,
        progress: !args.json,
    };
    let out = msn_teach::run(&req)?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let acc = out
        .test_accuracy
        .map_or("no test images".into(), |a| format!("test accuracy {a:.4}"));
    println!(
        "taught {} classes ({}) from {} training images{} ({} feature rows of {} from '{}'), head {}: {acc} on {} {}images",
        out.classes.len(),
        out.classes.join(", "),
        out.train_images,
        if out.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} skipped", out.skipped.len())
        },
        out.train_images * out.views,
        out.feature_size,
        out.feature,
        out.head,
        out.test_images,
        if out.test_held_out { "held-out " } else { "test " },
    );
    println!(
        "wrote {} ({} nodes, {:.1} MB); tract matches the head within {:.1e} on {} images; features {:.1} s, head {:.1} s, total {:.1} s",
        out.output.display(),
        out.nodes,
        out.bytes as f64 / 1e6,
        out.verify_max_abs_diff,
        out.verified_images,
        out.extract_seconds,
        out.train_seconds,
        out.total_seconds
    );
    Ok(())
}
