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

pub mod checkpoint;
pub mod data;
mod epochs;
pub mod gan;
pub mod report;
pub mod trainer;

use std::path::{Path, PathBuf};

/// Everything that can stop a training run, each naming the file or the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Data(String),
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{0}")]
    Diverged(String),
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: &Path, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename (the
/// one atomic write of the workspace, `msn_onnx::io::write_atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    msn_onnx::io::write_atomic(path, bytes).map_err(|e| match e {
        msn_onnx::Error::Io { path, cause } => Error::Io { path, cause },
        other => Error::Data(other.to_string()),
    })
}

/// Parses one JSON value (a line of `metrics.jsonl`), or `None` if it is not JSON.
pub fn serde_json_value(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line).ok()
}
