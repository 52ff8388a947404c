//! # msn-train: turning the engine into a trainer
//!
//! - [`data`]: MNIST, Fashion-MNIST, CIFAR-10 and image folders; seeded shuffles; batches.
//! - [`checkpoint`]: a run directory: `config.json`, `checkpoint.safetensors` (weights,
//!   buffers, optimizer state and progress, written atomically) and `metrics.jsonl`.
//! - [`gan`]: DCGAN training (generator against an SN, MSN, BN or plain discriminator),
//!   sample grids.
//! - [`report`]: figures of runs and the Markdown table of an experiment.
//! - [`trainer`]: the loop: progress bar, per-epoch metrics with per-layer statistics,
//!   resume exactly where a run stopped, NaN detection, Ctrl-C handling.

pub mod data;
mod epochs;
pub mod gan;
pub mod report;
pub mod trainer;

/// Run directories live in `msn-checkpoint`, which the exporter shares without the trainer.
pub use msn_checkpoint::{checkpoint, write_atomic, Error, Result};
