//! `msn train-gan`, `msn generate` and `msn gan-score`.

use crate::train::stop_on_ctrl_c;
use anyhow::{bail, Context, Result};
use clap::Args;
use msn_nn::NormKind;
use msn_runtime::gan::{
    classifier_score, frechet_distance, gaussian, FeatureClassifier, Generator,
};
use msn_train::gan::{self, GanLoss, GanRequest, GanSettings};
use msn_train::trainer::Outcome;
use ndarray::{Array2, Array4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// Train a DCGAN: metrics go to RUN_DIR/metrics.jsonl, sample grids to RUN_DIR/samples/.
#[derive(Debug, Args)]
pub struct TrainGanArgs {
    /// Data set: mnist, fashion-mnist, cifar10 or folder (28x28 or 32x32 images)
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
    /// Folder holding the data set's files
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The discriminator's normalization: sn, msn, bn or none (the generator uses BN)
    #[arg(long, default_value = "msn")]
    pub d_norm: NormKind,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// softplus (non-saturating) or hinge
    #[arg(long, default_value = "softplus")]
    pub loss: GanLoss,
    /// Adam learning rate of both networks
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.5)]
    pub beta1: f32,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f32,
    /// Discriminator steps per generator step
    #[arg(long, default_value_t = 1)]
    pub d_steps: usize,
    /// Size of the generator's latent vector
    #[arg(long, default_value_t = 128)]
    pub latent: usize,
    /// Channel widths in percent of DCGAN's 64-128-256
    #[arg(long, default_value_t = 100)]
    pub width: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Train on the first N training images only
    #[arg(long, value_name = "N")]
    pub train_limit: Option<usize>,
    /// Threads for the convolutions and matrix products (0: all cores)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Run directory to create
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the GAN run in RUN_DIR from its last checkpoint (other flags are ignored)
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

pub fn run_train_gan(args: TrainGanArgs) -> Result<()> {
    msn_autograd::kernels::set_threads(args.threads);
    msn_autograd::kernels::join_global_pool();
    let stop = stop_on_ctrl_c();
    let (outcome, dir) = match &args.resume {
        Some(dir) => (gan::resume(dir, &stop, true)?, dir.clone()),
        None => {
            let out = args
                .out
                .clone()
                .expect("clap requires --out without --resume");
            let Some(data_dir) = &args.data_dir else {
                bail!(
                    "--data-dir is required: the folder with the {} files",
                    args.dataset
                );
            };
            let req = GanRequest {
                dataset: args.dataset.clone(),
                data_dir: data_dir.display().to_string(),
                d_norm: args.d_norm,
                latent: args.latent,
                width: args.width,
                train: GanSettings {
                    epochs: args.epochs,
                    batch: args.batch,
                    lr: args.lr,
                    beta1: args.beta1,
                    beta2: args.beta2,
                    loss: args.loss,
                    d_steps: args.d_steps,
                    seed: args.seed,
                    train_limit: args.train_limit,
                },
            };
            (gan::start(&req, &out, &stop, true)?, out)
        }
    };
    match outcome {
        Outcome::Finished(history) => {
            eprintln!(
                "done: {} epochs; samples in {}; export the generator with: msn-export {} -o G.onnx",
                history.len(),
                dir.join(gan::SAMPLES_FILE).display(),
                dir.display()
            );
            Ok(())
        }
        Outcome::Interrupted { epoch, step } => bail!(
            "interrupted at epoch {epoch} step {step}; checkpoint saved; continue with: msn train-gan --resume {}",
            dir.display()
        ),
    }
}

/// A generator from an ONNX file or a GAN run directory (exported in memory), and the data
/// set and data folder it was trained on, when known.
fn load_generator(
    path: &Path,
    batch: usize,
) -> Result<(Generator, Option<String>, Option<String>)> {
    if path.is_dir() {
        let cfg = gan::GanConfig::load(path)?;
        let model = msn_export::export_gan_run(
            path,
            msn_export::GanPart::Generator,
            &msn_export::ExportOptions::default(),
        )?;
        let g = Generator::from_bytes(msn_onnx::io::to_bytes(&model), path, batch)?;
        Ok((g, Some(cfg.dataset), Some(cfg.data_dir)))
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let model = msn_onnx::io::from_bytes_named(&bytes, &path.display().to_string())?;
        let dataset = msn_onnx::graph::metadata(&model, msn_onnx::meta::DATASET).map(String::from);
        Ok((Generator::from_bytes(bytes, path, batch)?, dataset, None))
    }
}

/// `n` latent vectors from N(0, 1), drawn from `seed`.
fn latents(n: usize, latent: usize, seed: u64) -> Array2<f32> {
    gan::latent_batch(n, latent, &mut ChaCha8Rng::seed_from_u64(seed))
        .into_dimensionality()
        .expect("2-D")
}

/// Run a generator (ONNX file or GAN run) with tract and write a grid of its images.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The generator: an ONNX file from msn-export, or a GAN run directory
    #[arg(long, value_name = "G.onnx|RUN_DIR")]
    pub model: PathBuf,
    /// Number of images
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Seed of the latent vectors
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The PNG grid to write (atomically)
    #[arg(short, long, value_name = "grid.png")]
    pub output: PathBuf,
    /// Threads for tract's matrix products (0: every core, 1: single-threaded)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
}

pub fn run_generate(args: GenerateArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n must be positive");
    }
    msn_runtime::set_threads(args.threads);
    let (g, _, _) = load_generator(&args.model, 64)?;
    let images = g.run(latents(args.n, g.latent(), args.seed).view())?;
    gan::write_grid(&images.view(), &args.output)?;
    let [c, h, w] = g.image_shape();
    eprintln!(
        "wrote {} ({} images of {c}x{h}x{w}, seed {})",
        args.output.display(),
        args.n,
        args.seed
    );
    Ok(())
}

/// Score a generator: classifier score and Fréchet distance on our classifier's features.
#[derive(Debug, Args)]
pub struct GanScoreArgs {
    /// The generator: a GAN run directory or an ONNX file from msn-export
    #[arg(value_name = "RUN_DIR|G.onnx")]
    pub model: PathBuf,
    /// The classifier whose logits and features are used (default: the built-in cnn3 MSN
    /// model for mnist or fashion-mnist)
    #[arg(long, value_name = "model.onnx")]
    pub classifier: Option<PathBuf>,
    /// Folder of the real data set (default: the run's own)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Generated images (and real images from each split) to compare
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    /// Seed of the latent vectors
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the scores as JSON
    #[arg(long)]
    pub json: bool,
}

/// The cnn3 MSN classifiers trained by `msn train` on MNIST and Fashion-MNIST (models/).
pub const MNIST_CLASSIFIER: &[u8] = include_bytes!("../../../models/mnist-cnn3-msn.folded.onnx");

fn classifier_for(dataset: &str, file: Option<&Path>) -> Result<FeatureClassifier> {
    const BATCH: usize = 100;
    match file {
        Some(f) => {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            Ok(FeatureClassifier::from_bytes(&bytes, f, BATCH)?)
        }
        None => {
            let (bytes, name) = match dataset {
                "mnist" => (MNIST_CLASSIFIER, "mnist-cnn3-msn.folded.onnx (built in)"),
                "fashion-mnist" => (
                    crate::classify::DEFAULT_MODEL,
                    crate::classify::DEFAULT_MODEL_NAME,
                ),
                other => bail!(
                    "no built-in classifier for data set '{other}': give one with --classifier"
                ),
            };
            Ok(FeatureClassifier::from_bytes(
                bytes,
                Path::new(name),
                BATCH,
            )?)
        }
    }
}

/// Up to `n` images of one split as pixels in `[0, 1]`.
fn real_pixels(
    dataset: &str,
    dir: &Path,
    split: msn_train::data::Split,
    n: usize,
) -> Result<Array4<f32>> {
    let mut data = msn_train::data::load(dataset, dir, split)?;
    data.truncate(n);
    Ok(data.images.mapv(|v| v as f32 / 255.0))
}

pub fn run_gan_score(args: GanScoreArgs) -> Result<()> {
    if args.n < 2 {
        bail!("--n must be at least 2");
    }
    let (g, dataset, run_data_dir) = load_generator(&args.model, 100)?;
    let Some(dataset) = dataset else {
        bail!(
            "{}: no msn.dataset in its metadata; which data set is it?",
            args.model.display()
        );
    };
    let data_dir = match (args.data_dir.clone(), run_data_dir) {
        (Some(d), _) => d,
        (None, Some(d)) => PathBuf::from(d),
        (None, None) => bail!("--data-dir is required: the folder with the {dataset} files"),
    };
    let clf = classifier_for(&dataset, args.classifier.as_deref())?;
    if clf.image_shape() != g.image_shape() {
        bail!(
            "the generator makes {:?} images, the classifier takes {:?}",
            g.image_shape(),
            clf.image_shape()
        );
    }
    let fake = g
        .run(latents(args.n, g.latent(), args.seed).view())?
        .mapv(|v| (v.clamp(-1.0, 1.0) + 1.0) / 2.0);
    let test = real_pixels(&dataset, &data_dir, msn_train::data::Split::Test, args.n)?;
    let train = real_pixels(&dataset, &data_dir, msn_train::data::Split::Train, args.n)?;
    let (fake_logits, fake_feat) = clf.run(fake.view())?;
    let (test_logits, test_feat) = clf.run(test.view())?;
    let (_, train_feat) = clf.run(train.view())?;
    let fd = |a: &Array2<f32>, b: &Array2<f32>| {
        let (m1, s1) = gaussian(a.view());
        let (m2, s2) = gaussian(b.view());
        frechet_distance(&m1, &s1, &m2, &s2)
    };
    let score = classifier_score(fake_logits.view());
    let distance = fd(&fake_feat, &test_feat);
    let real_score = classifier_score(test_logits.view());
    let real_distance = fd(&train_feat, &test_feat);
    // Which classes the samples fall in: a collapsed generator shows here.
    let mut counts = vec![0usize; fake_logits.shape()[1]];
    for row in fake_logits.axis_iter(Axis(0)) {
        let best =
            row.iter().enumerate().fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            );
        counts[best.0] += 1;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model.display().to_string(),
                "dataset": dataset,
                "samples": args.n,
                "seed": args.seed,
                "features": fake_feat.shape()[1],
                "classifier_score": score,
                "frechet_distance": distance,
                "class_counts": counts,
                "real_test": {"classifier_score": real_score, "frechet_distance_to_train": real_distance},
            })
        );
    } else {
        println!(
            "{} ({dataset}, {} samples, seed {})",
            args.model.display(),
            args.n,
            args.seed
        );
        println!("  classifier score   {score:8.3}   (real test images: {real_score:.3})");
        println!(
            "  Frechet distance   {distance:8.4}   (real test vs real train: {real_distance:.4}; {} features)",
            fake_feat.shape()[1]
        );
        println!("  samples per class  {counts:?}");
    }
    Ok(())
}
