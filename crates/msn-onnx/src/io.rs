//! Loading and saving models. Saving goes to a temporary file that is renamed into place, so a
//! failed or interrupted save never leaves a partial model behind.

use crate::{Error, ModelProto, Result};
use prost::Message;
use std::io::Write;
use std::path::Path;

/// Reads and decodes an ONNX model file. The model must have a graph.
pub fn load(path: impl AsRef<Path>) -> Result<ModelProto> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes_named(&bytes, &path.display().to_string())
}

/// Decodes an ONNX model from bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<ModelProto> {
    from_bytes_named(bytes, "<bytes>")
}

/// Decodes an ONNX model from bytes; errors name `origin` (usually the file the bytes came from).
pub fn from_bytes_named(bytes: &[u8], origin: &str) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).map_err(|source| Error::Decode {
        origin: origin.to_string(),
        cause: source,
    })?;
    if model.graph.is_none() {
        return Err(Error::NoGraph {
            origin: origin.to_string(),
        });
    }
    Ok(model)
}

/// Encodes a model to bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a model atomically: to a temporary file in the same folder, then renamed over `path`.
pub fn save(model: &ModelProto, path: impl AsRef<Path>) -> Result<()> {
    write_atomic(path.as_ref(), &to_bytes(model))
}

/// Writes bytes to `path` through a temporary file in the same folder and a rename, so readers
/// see either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    // Temporary files are private (0600); the result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_rejected_with_the_origin_named() {
        let err = from_bytes(&[0xff, 0x13, 0x37, 0x00, 0x42]).unwrap_err();
        assert!(err.to_string().contains("not a valid ONNX model"), "{err}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = load("/no/such/model.onnx").unwrap_err();
        assert!(err.to_string().contains("/no/such/model.onnx"), "{err}");
    }

    #[test]
    fn save_is_atomic_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let model = ModelProto {
            ir_version: Some(8),
            graph: Some(Default::default()),
            ..Default::default()
        };
        save(&model, &path).unwrap();
        assert_eq!(load(&path).unwrap(), model);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
