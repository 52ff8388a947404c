//! The training loop.
//!
//! Everything random in an epoch (the sample order, augmentation, dropout) is drawn from
//! `(seed, epoch, step)` alone. Together with the checkpoint (weights, buffers, optimizer
//! state, running sums of the current epoch) this makes a resumed run give exactly the
//! metrics of an uninterrupted one.

use crate::checkpoint::{self, Preprocessing, Progress, RunConfig, TrainSettings};
use crate::data::{self, make_batch, BatchSpec, Dataset, Split};
use crate::epochs::{At, Images, Loop, Steps};
use crate::{write_atomic, Error, Result};
use msn_autograd::{no_grad, Var};
use msn_nn::models::ModelConfig;
use msn_nn::optim::{self, Adam, Optimizer, Schedule, Sgd};
use msn_nn::{ActivationStats, Ctx, Module, Sequential};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

/// How often (in steps) per-layer statistics are recorded.
const RECORD_EVERY: usize = 10;
/// Images per evaluation batch: small enough that im2col buffers stay modest.
const EVAL_BATCH: usize = 100;

/// What `msn train` asks for.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub model: ModelConfig,
    pub dataset: String,
    pub data_dir: String,
    pub train: TrainSettings,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All epochs ran; the metrics of each.
    Finished(Vec<Value>),
    /// Stopped by the user; a checkpoint was saved at this epoch (1-based) and step.
    Interrupted { epoch: usize, step: usize },
}

fn parse_schedule(s: &str, epochs: usize) -> Result<Schedule> {
    match s {
        "constant" => Ok(Schedule::Constant),
        "cosine" => Ok(Schedule::Cosine { epochs }),
        _ => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                ["step", every, gamma] => Ok(Schedule::Step {
                    every: every
                        .parse()
                        .map_err(|_| Error::Config(format!("bad schedule '{s}'")))?,
                    gamma: gamma
                        .parse()
                        .map_err(|_| Error::Config(format!("bad schedule '{s}'")))?,
                }),
                _ => Err(Error::Config(format!(
                    "unknown schedule '{s}' (expected constant, cosine or step:EVERY:GAMMA)"
                ))),
            }
        }
    }
}

fn make_optimizer(t: &TrainSettings) -> Result<Box<dyn Optimizer>> {
    match t.optimizer.as_str() {
        "sgd" => Ok(Box::new(Sgd::new(t.momentum, false, t.weight_decay))),
        "adam" => Ok(Box::new(Adam::new(0.9, 0.999, t.weight_decay))),
        other => Err(Error::Config(format!(
            "unknown optimizer '{other}' (expected sgd or adam)"
        ))),
    }
}

pub(crate) fn step_rng(seed: u64, epoch: usize, step: usize) -> ChaCha8Rng {
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((epoch as u64) << 32)
        .wrapping_add(step as u64 + 1);
    ChaCha8Rng::seed_from_u64(mix)
}

/// Mean loss and accuracy of the model on a data set, in eval mode.
pub fn evaluate(model: &Sequential, data: &Dataset, spec: &BatchSpec) -> (f32, f32) {
    let spec = BatchSpec {
        augment: None,
        ..spec.clone()
    };
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let order: Vec<usize> = (0..data.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    no_grad(|| {
        for idx in order.chunks(EVAL_BATCH) {
            let (x, y) = make_batch(data, idx, &spec, &mut rng);
            let logits = model.forward(&Var::constant(x.into_dyn()), &mut Ctx::eval());
            loss += logits.cross_entropy(&y).value()[[]] as f64 * idx.len() as f64;
            correct += count_correct(&logits, &y);
        }
    });
    (
        (loss / data.len() as f64) as f32,
        correct as f32 / data.len() as f32,
    )
}

fn count_correct(logits: &Var, labels: &[usize]) -> usize {
    let v = logits.value();
    v.outer_iter()
        .zip(labels)
        .filter(|(row, &l)| {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                );
            best.0 == l
        })
        .count()
}

/// A batch, its labels, and its step number.
pub(crate) type Batch = (usize, (ndarray::Array4<f32>, Vec<usize>));

/// Makes the batches of one epoch (steps `first_step..`) on another thread, a few ahead of
/// the step that uses them.
pub(crate) fn prefetch(
    train: &Arc<Dataset>,
    spec: &BatchSpec,
    seed: u64,
    epoch: usize,
    first_step: usize,
) -> (mpsc::Receiver<Batch>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::sync_channel(4);
    let data = Arc::clone(train);
    let spec = spec.clone();
    let order = data::epoch_order(train.len(), seed, epoch);
    let worker = std::thread::spawn(move || {
        let steps = order.len().div_ceil(spec.batch);
        for step in first_step..steps {
            let idx = &order[step * spec.batch..((step + 1) * spec.batch).min(order.len())];
            let batch = make_batch(&data, idx, &spec, &mut step_rng(seed, epoch, step));
            if tx.send((step, batch)).is_err() {
                return;
            }
        }
    });
    (rx, worker)
}

/// The progress bar of one epoch, and whether to print plain lines instead (no TTY).
pub(crate) fn epoch_bar(
    show: bool,
    steps: usize,
    epoch: usize,
    epochs: usize,
    first_step: usize,
) -> (indicatif::ProgressBar, bool) {
    let bar = if show {
        indicatif::ProgressBar::new(steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{epochs}", epoch + 1));
    bar.set_position(first_step as u64);
    let plain = show && bar.is_hidden();
    (bar, plain)
}

/// Running sums of one epoch.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct EpochSums {
    loss: f64,
    correct: usize,
    seen: usize,
    /// layer -> (sum of means, sum of stds, sum of zero fractions, count)
    layers: Vec<(String, f64, f64, f64, usize)>,
    /// Sum and count of the global gradient norm on the recorded steps.
    #[serde(default)]
    grad_norm: (f64, usize),
}

impl EpochSums {
    fn add_stats(&mut self, stats: &[ActivationStats]) {
        for s in stats {
            match self.layers.iter_mut().find(|l| l.0 == s.layer) {
                Some(l) => {
                    l.1 += s.mean as f64;
                    l.2 += s.std as f64;
                    l.3 += s.zero_grad_fraction as f64;
                    l.4 += 1;
                }
                None => self.layers.push((
                    s.layer.clone(),
                    s.mean as f64,
                    s.std as f64,
                    s.zero_grad_fraction as f64,
                    1,
                )),
            }
        }
    }
}

/// Loads the train and test splits a request names, limited as asked.
pub fn load_data(dataset: &str, dir: &Path, t: &TrainSettings) -> Result<(Dataset, Dataset)> {
    let mut train = data::load(dataset, dir, Split::Train)?;
    let mut test = data::load(dataset, dir, Split::Test)?;
    if let Some(n) = t.train_limit {
        train.truncate(n);
    }
    if let Some(n) = t.test_limit {
        test.truncate(n);
    }
    Ok((train, test))
}

/// Starts a new run in `out` (which must not hold one) and trains it.
pub fn start(req: &TrainRequest, out: &Path, stop: &AtomicBool, progress: bool) -> Result<Outcome> {
    checkpoint::ensure_new_run(out)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (train, test) = load_data(&req.dataset, Path::new(&req.data_dir), &req.train)?;
    let mut model_cfg = req.model.clone();
    model_cfg.input_shape = train.shape();
    model_cfg.num_classes = train.classes.len();
    let cfg = RunConfig {
        version: checkpoint::FORMAT_VERSION,
        model: model_cfg,
        dataset: req.dataset.clone(),
        data_dir: req.data_dir.clone(),
        preprocessing: Preprocessing {
            scale: 1.0 / 255.0,
            mean: train.mean.clone(),
            std: train.std.clone(),
        },
        labels: train.classes.clone(),
        train: req.train.clone(),
    };
    cfg.train.validate().map_err(Error::Config)?;
    cfg.save(out)?;
    let mut model = msn_nn::models::build(&cfg.model, req.train.seed).map_err(Error::Config)?;
    model.set_norm_options(cfg.train.sn_iterations, cfg.train.norm_momentum);
    if cfg.train.msn_init == "data" {
        init_msn_scales(&model, &train, &cfg);
    }
    let optimizer = make_optimizer(&cfg.train)?;
    run(
        &cfg,
        model,
        optimizer,
        Progress::default(),
        &Arc::new(train),
        &test,
        out,
        stop,
        progress,
    )
}

/// Continues the run in `dir` from its last checkpoint.
pub fn resume(dir: &Path, stop: &AtomicBool, progress: bool) -> Result<Outcome> {
    let cfg = RunConfig::load(dir)?;
    let path = dir.join(checkpoint::CHECKPOINT_FILE);
    cfg.train.validate().map_err(|e| {
        Error::Config(format!(
            "{}: {e}",
            dir.join(checkpoint::CONFIG_FILE).display()
        ))
    })?;
    let mut model = msn_nn::models::build(&cfg.model, cfg.train.seed).map_err(Error::Config)?;
    model.set_norm_options(cfg.train.sn_iterations, cfg.train.norm_momentum);
    let (train, test) = load_data(&cfg.dataset, Path::new(&cfg.data_dir), &cfg.train)?;
    let (optimizer, prog) = if path.exists() {
        let ckpt = checkpoint::load(&path)?;
        checkpoint::restore(&model, &ckpt, &path)?;
        let mut optimizer = make_optimizer(&cfg.train)?;
        optimizer.load_state(checkpoint::optimizer_state(&ckpt, &model, &path)?);
        (optimizer, ckpt.progress)
    } else {
        (make_optimizer(&cfg.train)?, Progress::default())
    };
    run(
        &cfg,
        model,
        optimizer,
        prog,
        &Arc::new(train),
        &test,
        dir,
        stop,
        progress,
    )
}

/// The mean |g| of every MSN scale (null without MSN): how far the scales moved from their start.
fn msn_scale_mean(model: &Sequential) -> Value {
    let scales = model.msn_scales();
    let (sum, n) = scales.iter().fold((0.0f64, 0usize), |(s, n), g| {
        let v = g.value();
        (
            s + v.iter().map(|x| x.abs() as f64).sum::<f64>(),
            n + v.len(),
        )
    });
    if n == 0 {
        Value::Null
    } else {
        json!(sum / n as f64)
    }
}

/// MSN's data-dependent initialisation on the first (up to 256) training images, unaugmented.
fn init_msn_scales(model: &Sequential, train: &Dataset, cfg: &RunConfig) {
    let spec = BatchSpec {
        batch: cfg.train.batch,
        mean: cfg.preprocessing.mean.clone(),
        std: cfg.preprocessing.std.clone(),
        augment: None,
    };
    let idx: Vec<usize> = (0..train.len().min(256)).collect();
    let (x, _) = make_batch(train, &idx, &spec, &mut ChaCha8Rng::seed_from_u64(0));
    model.init_msn_scales(&Var::constant(x.into_dyn()));
}

pub(crate) fn write_metrics(dir: &Path, history: &[Value]) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&m.to_string());
        text.push('\n');
    }
    write_atomic(&dir.join(checkpoint::METRICS_FILE), text.as_bytes())
}

/// The classifier's part of the loop: a cross-entropy step, then evaluation on the test split.
struct Classify<'a> {
    model: Sequential,
    params: Vec<Var>,
    optimizer: Box<dyn Optimizer>,
    schedule: Schedule,
    settings: &'a TrainSettings,
    test: &'a Dataset,
    spec: &'a BatchSpec,
    ckpt_path: std::path::PathBuf,
    steps_per_epoch: usize,
}

impl Steps for Classify<'_> {
    type Sums = EpochSums;

    fn step(&mut self, sums: &mut EpochSums, at: At, (x, y): Images) -> Result<String> {
        let (epoch, step, seconds) = (at.epoch, at.step, at.seconds);
        let (t, mut lr) = (self.settings, self.schedule.lr(self.settings.lr, epoch));
        let global = epoch * self.steps_per_epoch + step;
        if global < t.warmup_steps {
            lr *= (global + 1) as f32 / t.warmup_steps as f32;
        }
        let mut ctx = Ctx {
            training: true,
            rng: step_rng(t.seed ^ 0xD20F, epoch, step),
            record: step.is_multiple_of(RECORD_EVERY).then(Vec::new),
        };
        let logits = self.model.forward(&Var::constant(x.into_dyn()), &mut ctx);
        let loss = logits.cross_entropy(&y);
        let loss_value = loss.value()[[]];
        if !loss_value.is_finite() {
            return Err(Error::Diverged(format!(
                "the loss became {loss_value} at epoch {} step {}; lower --lr (now {lr}) or use another norm",
                epoch + 1,
                step + 1
            )));
        }
        loss.backward();
        if ctx.record.is_some() {
            let sq: f64 = self
                .params
                .iter()
                .filter_map(|p| p.grad())
                .map(|g| g.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
                .sum();
            sums.grad_norm.0 += sq.sqrt();
            sums.grad_norm.1 += 1;
        }
        self.optimizer.step(&self.params, lr);
        optim::zero_grad(&self.params);
        sums.loss += loss_value as f64 * y.len() as f64;
        sums.correct += count_correct(&logits, &y);
        sums.seen += y.len();
        if let Some(stats) = ctx.record.take() {
            sums.add_stats(&stats);
        }
        Ok(format!(
            "loss {:.4} acc {:.4} {:.0} img/s",
            sums.loss / sums.seen as f64,
            sums.correct as f64 / sums.seen as f64,
            (sums.seen as f64) / seconds.max(1e-9)
        ))
    }

    fn finish_epoch(&mut self, sums: &EpochSums, at: At) -> Result<(Value, String)> {
        let (epoch, seconds) = (at.epoch, at.seconds);
        let (test_loss, test_acc) = evaluate(&self.model, self.test, self.spec);
        let layers: Vec<Value> = sums
            .layers
            .iter()
            .map(|(name, m, s, z, n)| json!({"layer": name, "mean": m / *n as f64, "std": s / *n as f64, "grad_sparsity": z / *n as f64}))
            .collect();
        let (train_loss, train_acc) = (
            sums.loss / sums.seen as f64,
            sums.correct as f64 / sums.seen as f64,
        );
        let metrics = json!({
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_seconds": seconds,
            "images_per_second": sums.seen as f64 / seconds,
            "lr": self.schedule.lr(self.settings.lr, epoch),
            "grad_norm": sums.grad_norm.0 / sums.grad_norm.1.max(1) as f64,
            "msn_scale_mean": msn_scale_mean(&self.model),
            "layers": layers,
        });
        let summary = format!(
            "train loss {train_loss:.4} acc {train_acc:.4} | test loss {test_loss:.4} acc {test_acc:.4}"
        );
        Ok((metrics, summary))
    }

    fn save(&self, progress: &Progress) -> Result<()> {
        let state = self.optimizer.state();
        checkpoint::save(&self.ckpt_path, &self.model, &state, progress)
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    cfg: &RunConfig,
    model: Sequential,
    optimizer: Box<dyn Optimizer>,
    prog: Progress,
    train: &Arc<Dataset>,
    test: &Dataset,
    dir: &Path,
    stop: &AtomicBool,
    show_progress: bool,
) -> Result<Outcome> {
    let t = &cfg.train;
    let spec = BatchSpec {
        batch: t.batch,
        mean: cfg.preprocessing.mean.clone(),
        std: cfg.preprocessing.std.clone(),
        augment: t.augment.then_some(4),
    };
    // A fixed MSN scale stays out of the optimizer.
    let fixed: Vec<Var> = if t.msn_scale == "fixed" {
        model.msn_scales()
    } else {
        Vec::new()
    };
    let params = model
        .parameters()
        .into_iter()
        .filter(|p| !fixed.iter().any(|f| f.same(p)))
        .collect();
    let steps_per_epoch = train.len().div_ceil(t.batch);
    let mut steps = Classify {
        params,
        steps_per_epoch,
        model,
        optimizer,
        schedule: parse_schedule(&t.schedule, t.epochs)?,
        settings: t,
        test,
        spec: &spec,
        ckpt_path: dir.join(checkpoint::CHECKPOINT_FILE),
    };
    Loop {
        train,
        spec: &spec,
        seed: t.seed,
        epochs: t.epochs,
        dir,
        show_progress,
        stop,
    }
    .run(&mut steps, prog)
}
