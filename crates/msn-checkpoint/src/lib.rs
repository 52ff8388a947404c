//! # msn-checkpoint: run directories, without the trainer
//!
//! What `msn train` and `msn train-gan` leave behind, and what `msn-export` reads:
//! - [`checkpoint`]: `config.json` (architecture, norm, data set, preprocessing, labels,
//!   settings), `checkpoint.safetensors` (every named tensor, the optimizer's state and the
//!   progress, written atomically) and `metrics.jsonl`; loading a trained classifier.
//! - [`gan`]: the same for a GAN run (generator and discriminator in one checkpoint).
//!
//! It depends on the model definitions (msn-nn) but not on the training loop, its data sets,
//! plots or progress bars, so the exporter can read a run without linking any of them.

pub mod checkpoint;
pub mod gan;

use std::path::{Path, PathBuf};

/// Everything that can stop a training run or the reading of one, each naming the file or
/// the cause.
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
    /// An I/O error on `path`.
    pub fn io(path: &Path, cause: std::io::Error) -> Self {
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

/// The last line of `metrics.jsonl` in `dir` as JSON, if there is one.
pub fn last_metrics(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(checkpoint::METRICS_FILE)).ok()?;
    serde_json::from_str(text.lines().last()?).ok()
}
