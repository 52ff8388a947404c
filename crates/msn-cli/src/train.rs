//! `msn train`: train a classifier and write a run directory.

use anyhow::{bail, Result};
use clap::Args;
use msn_nn::models::ModelConfig;
use msn_nn::{Module, NormKind};
use msn_train::checkpoint::TrainSettings;
use msn_train::trainer::{self, Outcome, TrainRequest};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Train a classifier; metrics go to RUN_DIR/metrics.jsonl, checkpoints to RUN_DIR.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Normalization: none, bn, sn or msn
    #[arg(long, default_value = "msn")]
    pub norm: NormKind,
    #[command(flatten)]
    pub options: TrainOptions,
    /// Run directory to create
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint (other flags are ignored)
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

/// The model, data and optimization settings that `msn train` and `msn experiment` share.
/// clap's parser for counts and sizes that must be at least 1 (batch, epochs, limits).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct TrainOptions {
    /// Architecture: cnn3, vgg7 or densenet-bc
    #[arg(long, default_value = "cnn3")]
    pub model: String,
    /// Data set: mnist, fashion-mnist, cifar10 or folder (DIR/train/<class>/*.png, DIR/test/...)
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Folder holding the data set's files
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub batch: usize,
    /// sgd or adam
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// SGD momentum
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Learning-rate schedule: constant, cosine or step:EVERY:GAMMA
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// vgg7 width in percent of the paper's
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub width: usize,
    /// densenet-bc depth (6n + 4)
    #[arg(long, default_value_t = 16)]
    pub depth: usize,
    /// Random crops and flips (default: on for cifar10)
    #[arg(long)]
    pub augment: Option<bool>,
    /// Train on the first N training images only
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first N test images only
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub test_limit: Option<usize>,
    /// Threads for the convolutions and matrix products (0: all cores). Results are
    /// reproducible for a given seed and thread count.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Spectral-norm power iterations per training step (sn, msn)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub sn_iterations: u64,
    /// Momentum of the running mean (and variance) of bn and msn, in (0, 1]
    #[arg(long, default_value_t = 0.1, value_parser = momentum)]
    pub norm_momentum: f32,
    /// MSN's per-channel scale g: learned, or fixed at its initial value
    #[arg(long, default_value = "learned", value_parser = ["learned", "fixed"])]
    pub msn_scale: String,
    /// MSN's initial g: data (1 / the std of each block's input on the first 256 training
    /// images, so that no block shrinks the signal at the start), or ones (the paper's). With
    /// g from 1, MSN starts with each block shrinking the signal (a spectrally normalised conv
    /// has gain below 1 and the mean-only norm does not restore it) and trails BN by about 5
    /// points on short runs (vgg7, CIFAR-10, 4 epochs); the data init closes that gap
    /// (docs/RESULTS.md, "MSN initialisation")
    #[arg(long, default_value = "data", value_parser = ["ones", "data"])]
    pub msn_init: String,
    /// Linear learning-rate warm-up over the first N steps
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warmup_steps: usize,
}

fn momentum(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(m) if m > 0.0 && m <= 1.0 => Ok(m),
        Ok(m) => Err(format!("{m} is outside (0, 1]")),
        Err(e) => Err(e.to_string()),
    }
}

/// Ctrl-C sets the returned flag (the trainer then saves and stops); a second one exits.
pub(crate) fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint (Ctrl-C again to quit without saving)");
    });
    stop
}

impl TrainOptions {
    /// The request that starts a run with normalization `norm`.
    pub fn request(&self, norm: NormKind) -> Result<TrainRequest> {
        let Some(data_dir) = self.data_dir.clone() else {
            bail!(
                "--data-dir is required: the folder with the {} files",
                self.dataset
            );
        };
        Ok(TrainRequest {
            model: ModelConfig {
                architecture: self.model.clone(),
                norm,
                input_shape: [0, 0, 0],
                num_classes: 0,
                width: self.width,
                depth: self.depth,
                latent: 128,
            },
            dataset: self.dataset.clone(),
            data_dir: data_dir.display().to_string(),
            train: TrainSettings {
                epochs: self.epochs,
                batch: self.batch,
                optimizer: self.optimizer.clone(),
                lr: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                schedule: self.schedule.clone(),
                seed: self.seed,
                augment: self.augment.unwrap_or(self.dataset == "cifar10"),
                train_limit: self.train_limit,
                test_limit: self.test_limit,
                sn_iterations: self.sn_iterations as usize,
                norm_momentum: self.norm_momentum,
                msn_scale: self.msn_scale.clone(),
                msn_init: self.msn_init.clone(),
                warmup_steps: self.warmup_steps,
            },
        })
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    msn_autograd::kernels::set_threads(args.options.threads);
    msn_autograd::kernels::join_global_pool();
    let stop = stop_on_ctrl_c();
    let progress = true;
    let (outcome, dir) = match &args.resume {
        Some(dir) => (trainer::resume(dir, &stop, progress)?, dir.clone()),
        None => {
            let out = args
                .out
                .clone()
                .expect("clap requires --out without --resume");
            let req = args.options.request(args.norm)?;
            (trainer::start(&req, &out, &stop, progress)?, out)
        }
    };
    match outcome {
        Outcome::Finished(history) => {
            let (_, model) = msn_train::checkpoint::load_model(&dir)?;
            let best = history
                .iter()
                .filter_map(|m| m["test_acc"].as_f64())
                .fold(0.0, f64::max);
            let last = history
                .last()
                .and_then(|m| m["test_acc"].as_f64())
                .unwrap_or(0.0);
            eprintln!(
                "done: {} epochs, final test accuracy {:.4}, best {:.4}, {} trainable parameters; run in {}",
                history.len(),
                last,
                best,
                model.num_parameters(),
                dir.display()
            );
            Ok(())
        }
        Outcome::Interrupted { epoch, step } => {
            bail!("interrupted at epoch {epoch} step {step}; checkpoint saved; continue with: msn train --resume {}", dir.display())
        }
    }
}
