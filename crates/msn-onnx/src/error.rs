use std::path::PathBuf;

/// Everything that can go wrong while reading, checking or writing an ONNX model.
///
/// Each message names the file or the graph element at fault, so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{origin}: not a valid ONNX model (truncated or not protobuf): {cause}")]
    Decode {
        origin: String,
        cause: prost::DecodeError,
    },
    #[error("{origin}: the model has no graph")]
    NoGraph { origin: String },
    #[error("initializer '{name}' stores its data in an external file, and this model was not read from a file whose folder holds it; load it from its .onnx file (the data file beside it), or re-save it with its tensors inline (onnx.save_model(..., save_as_external_data=False))")]
    ExternalData { name: String },
    #[error("tensor '{name}' has element type {data_type}, which is not supported here (expected {expected})")]
    UnsupportedType {
        name: String,
        data_type: String,
        expected: &'static str,
    },
    #[error("tensor '{name}': {reason}")]
    BadTensor { name: String, reason: String },
    #[error("the graph has a cycle through node '{node}'")]
    Cycle { node: String },
    #[error("node '{node}' reads '{input}', which no node, graph input or initializer provides")]
    DanglingInput { node: String, input: String },
    #[error("value '{name}' is produced twice (by '{first}' and '{second}')")]
    DuplicateOutput {
        name: String,
        first: String,
        second: String,
    },
    #[error("graph output '{name}' is not produced by any node, input or initializer")]
    DanglingOutput { name: String },
    #[error("node '{node}' ({op}): {reason}")]
    BadNode {
        node: String,
        op: String,
        reason: String,
    },
    #[error("metadata '{key}': {reason}")]
    BadMetadata { key: String, reason: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}
