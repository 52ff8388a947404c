//! The steps of one epoch, shared by the classifier and the GAN trainer: batches made ahead on
//! another thread from the step a (resumed) epoch starts at, the caller's training step on each,
//! the progress bar (or plain lines without a terminal), and a clean stop on Ctrl-C between
//! two steps. What makes `--resume` exact lives here once: the batch order and the step
//! numbers come from `(seed, epoch, step)`, and a stopped epoch saves its partial sums.

use crate::checkpoint::{self, Progress};
use crate::data::{BatchSpec, Dataset};
use crate::trainer::{epoch_bar, prefetch, write_metrics, Outcome};
use crate::Result;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where a step or the end of an epoch stands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    /// 0-based.
    pub epoch: usize,
    /// 0-based, within the epoch (its step count at the end of an epoch).
    pub step: usize,
    /// The epoch's training time so far, across a resume.
    pub seconds: f64,
}

/// A batch: images `[N, C, H, W]` and their labels.
pub(crate) type Images = (ndarray::Array4<f32>, Vec<usize>);

/// What a trainer brings to the shared loop: its step, its end of an epoch, its checkpoint.
pub(crate) trait Steps {
    /// The running sums of one epoch, saved with a mid-epoch checkpoint.
    type Sums: Serialize + DeserializeOwned + Default;

    /// Trains on one batch, adds to `sums` and returns the progress line.
    fn step(&mut self, sums: &mut Self::Sums, at: At, batch: Images) -> Result<String>;

    /// After an epoch's last step: its metrics (one line of `metrics.jsonl`) and the summary
    /// shown after `epoch i/n:`.
    fn finish_epoch(&mut self, sums: &Self::Sums, at: At) -> Result<(Value, String)>;

    /// Writes the checkpoint (models, optimizers) with this progress.
    fn save(&self, progress: &Progress) -> Result<()>;
}

/// A run's epochs: the loop both trainers drive with their own [`Steps`].
pub(crate) struct Loop<'a> {
    pub train: &'a Arc<Dataset>,
    pub spec: &'a BatchSpec,
    pub seed: u64,
    pub epochs: usize,
    pub dir: &'a Path,
    pub show_progress: bool,
    pub stop: &'a AtomicBool,
}

/// A stopped epoch's sums and its training time so far (saved in the checkpoint).
#[derive(Default, Serialize, Deserialize)]
struct Partial<S> {
    #[serde(flatten)]
    sums: S,
    seconds: f64,
}

impl Loop<'_> {
    /// Runs the epochs from where `prog` stands: after each, its metrics, the checkpoint and
    /// `metrics.jsonl`; on Ctrl-C, a checkpoint with the partial sums, then `Interrupted`.
    pub fn run<S: Steps>(&self, steps: &mut S, mut prog: Progress) -> Result<Outcome> {
        let ckpt_path = self.dir.join(checkpoint::CHECKPOINT_FILE);
        let n_steps = self.train.len().div_ceil(self.spec.batch);
        while prog.epoch < self.epochs {
            let epoch = prog.epoch;
            let mut partial: Partial<S::Sums> = prog.take_partial(&ckpt_path)?;
            let ran = Epoch {
                train: self.train,
                spec: self.spec,
                seed: self.seed,
                epoch,
                epochs: self.epochs,
                first_step: prog.step,
                steps: n_steps,
                show_progress: self.show_progress,
                stop: self.stop,
            }
            .run(|step, x, y, seconds| {
                let at = At {
                    epoch,
                    step,
                    seconds: partial.seconds + seconds,
                };
                steps.step(&mut partial.sums, at, (x, y))
            })?;
            partial.seconds += ran.seconds;
            if let Some(next_step) = ran.interrupted {
                return stop_mid_epoch(&mut prog, &partial, next_step, |p| steps.save(p));
            }
            let at = At {
                epoch,
                step: n_steps,
                seconds: partial.seconds,
            };
            let (metrics, summary) = steps.finish_epoch(&partial.sums, at)?;
            if self.show_progress {
                let (n, seconds) = (self.epochs, partial.seconds);
                eprintln!("epoch {}/{n}: {summary} | {seconds:.1} s", epoch + 1);
            }
            prog.history.push(metrics);
            prog.epoch += 1;
            prog.step = 0;
            steps.save(&prog)?;
            write_metrics(self.dir, &prog.history)?;
            if self.stop.load(Ordering::SeqCst) && prog.epoch < self.epochs {
                return Ok(Outcome::Interrupted {
                    epoch: prog.epoch + 1,
                    step: 0,
                });
            }
        }
        Ok(Outcome::Finished(prog.history))
    }
}

/// One epoch to run.
struct Epoch<'a> {
    pub train: &'a Arc<Dataset>,
    pub spec: &'a BatchSpec,
    pub seed: u64,
    /// 0-based.
    pub epoch: usize,
    pub epochs: usize,
    /// The step to start at (0, or where an interrupted epoch stopped).
    pub first_step: usize,
    pub steps: usize,
    pub show_progress: bool,
    pub stop: &'a AtomicBool,
}

/// How an epoch's steps ended.
struct Ran {
    /// Seconds spent in this call.
    pub seconds: f64,
    /// `Some(next_step)` when Ctrl-C stopped the epoch before its last step.
    pub interrupted: Option<usize>,
}

impl Epoch<'_> {
    /// Runs the steps `first_step..steps`: `step(index, images, labels, seconds_so_far)`
    /// trains on one batch and returns the progress line to show.
    pub fn run(
        &self,
        mut step: impl FnMut(usize, ndarray::Array4<f32>, Vec<usize>, f64) -> Result<String>,
    ) -> Result<Ran> {
        let (rx, worker) = prefetch(
            self.train,
            self.spec,
            self.seed,
            self.epoch,
            self.first_step,
        );
        let (bar, plain) = epoch_bar(
            self.show_progress,
            self.steps,
            self.epoch,
            self.epochs,
            self.first_step,
        );
        let start = Instant::now();
        let mut interrupted = None;
        let mut failed = None;
        for (i, (x, y)) in rx.iter() {
            let line = match step(i, x, y, start.elapsed().as_secs_f64()) {
                Ok(line) => line,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            bar.set_position(i as u64 + 1);
            if plain && (i + 1) % (self.steps / 10).max(1) == 0 {
                eprintln!(
                    "epoch {}/{} step {}/{} {line}",
                    self.epoch + 1,
                    self.epochs,
                    i + 1,
                    self.steps
                );
            }
            bar.set_message(line);
            if self.stop.load(Ordering::SeqCst) && i + 1 < self.steps {
                interrupted = Some(i + 1);
                break;
            }
        }
        drop(rx);
        let _ = worker.join();
        bar.finish_and_clear();
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(Ran {
            seconds: start.elapsed().as_secs_f64(),
            interrupted,
        })
    }
}

/// Records a mid-epoch stop in the progress (the next step and the partial sums), saves the
/// checkpoint with `save`, and reports where the run stopped.
fn stop_mid_epoch<S: Serialize>(
    prog: &mut Progress,
    sums: &S,
    next_step: usize,
    save: impl FnOnce(&Progress) -> Result<()>,
) -> Result<Outcome> {
    prog.step = next_step;
    prog.partial = Some(serde_json::to_value(sums).expect("sums serialize"));
    save(prog)?;
    Ok(Outcome::Interrupted {
        epoch: prog.epoch + 1,
        step: next_step,
    })
}
