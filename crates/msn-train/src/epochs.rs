//! The steps of one epoch, shared by the classifier and the GAN trainer: batches made ahead on
//! another thread from the step a (resumed) epoch starts at, the caller's training step on each,
//! the progress bar (or plain lines without a terminal), and a clean stop on Ctrl-C between
//! two steps. What makes `--resume` exact lives here once: the batch order and the step
//! numbers come from `(seed, epoch, step)`, and a stopped epoch saves its partial sums.

use crate::checkpoint::Progress;
use crate::data::{BatchSpec, Dataset};
use crate::trainer::{epoch_bar, prefetch, Outcome};
use crate::Result;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One epoch to run.
pub(crate) struct Epoch<'a> {
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
pub(crate) struct Ran {
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
pub(crate) fn stop_mid_epoch<S: Serialize>(
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
