use std::path::PathBuf;

/// Everything that can go wrong while loading a model, reading an image or running inference.
/// Each message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Onnx(#[from] msn_onnx::Error),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: tract cannot {action}: {message}")]
    Tract {
        path: PathBuf,
        action: &'static str,
        message: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: model input is not an image: {reason}")]
    NotImageModel { path: PathBuf, reason: String },
    #[error("{path}: not a generator: {reason}")]
    NotGenerator { path: PathBuf, reason: String },
    #[error("{path}: not a readable image: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("{path}: image is too large ({width}x{height}; the limits are {limit} pixels a side and 64 M pixels)")]
    ImageTooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u32,
    },
    #[error("{path}: {count} labels, but the model has {outputs} outputs")]
    LabelCount {
        path: PathBuf,
        count: usize,
        outputs: usize,
    },
    #[error("preprocessing: {0}")]
    Preprocess(String),
    #[error("inference: {0}")]
    Inference(String),
}

impl From<tract_onnx::prelude::TractError> for Error {
    fn from(e: tract_onnx::prelude::TractError) -> Self {
        Error::Inference(format!("{e:#}"))
    }
}
