//! Loading and saving models. Saving goes to a temporary file that is renamed into place, so a
//! failed or interrupted save never leaves a partial model behind.

use crate::{Error, ModelProto, Result};
use prost::Message;
use std::io::Write;
use std::path::Path;

/// Reads and decodes an ONNX model file. The model must have a graph. Tensors kept in data
/// files beside the model (external data) are read in ([`crate::external::inline`]).
pub fn load(path: impl AsRef<Path>) -> Result<ModelProto> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut model = from_bytes_named(&bytes, &path.display().to_string())?;
    if crate::external::has_external_data(&model) {
        crate::external::inline(&mut model, path)?;
    }
    Ok(model)
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
///
/// The bytes are streamed: everything but the initializers is encoded at once (it is small),
/// then each initializer on its own, so saving needs memory for one tensor at a time, not a
/// second copy of the model. The result is the same protobuf message as [`to_bytes`] (field
/// order within a message is free in protobuf; `onnx.load` and tract read it alike).
pub fn save(model: &ModelProto, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    with_atomic_file(path, |w| write_streamed(model, w))
}

fn write_streamed(model: &ModelProto, w: &mut impl Write) -> std::io::Result<()> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    const MODEL_GRAPH: u32 = 7;
    const GRAPH_INITIALIZER: u32 = 5;
    let Some(graph) = &model.graph else {
        return w.write_all(&to_bytes(model));
    };
    // prost encodes fields in tag order; splitting each message around the field that is
    // streamed keeps the bytes identical to `to_bytes`. Every field is spelled out, so a field
    // added to the schema cannot be dropped silently.
    let model_head = ModelProto {
        ir_version: model.ir_version,
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: None,
        opset_import: Vec::new(),
        metadata_props: Vec::new(),
        training_info: Vec::new(),
        functions: Vec::new(),
        configuration: Vec::new(),
    };
    let model_tail = ModelProto {
        ir_version: None,
        producer_name: None,
        producer_version: None,
        domain: None,
        model_version: None,
        doc_string: None,
        graph: None,
        opset_import: model.opset_import.clone(),
        metadata_props: model.metadata_props.clone(),
        training_info: model.training_info.clone(),
        functions: model.functions.clone(),
        configuration: model.configuration.clone(),
    };
    let graph_head = crate::GraphProto {
        node: graph.node.clone(),
        name: graph.name.clone(),
        initializer: Vec::new(),
        sparse_initializer: Vec::new(),
        doc_string: None,
        input: Vec::new(),
        output: Vec::new(),
        value_info: Vec::new(),
        quantization_annotation: Vec::new(),
        metadata_props: Vec::new(),
    };
    let graph_tail = crate::GraphProto {
        node: Vec::new(),
        name: None,
        initializer: Vec::new(),
        sparse_initializer: graph.sparse_initializer.clone(),
        doc_string: graph.doc_string.clone(),
        input: graph.input.clone(),
        output: graph.output.clone(),
        value_info: graph.value_info.clone(),
        quantization_annotation: graph.quantization_annotation.clone(),
        metadata_props: graph.metadata_props.clone(),
    };
    let mut head = model_head.encode_to_vec();
    encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut head);
    encode_varint(graph.encoded_len() as u64, &mut head);
    graph_head.encode(&mut head).expect("a Vec grows as needed");
    w.write_all(&head)?;
    drop(head);
    let mut buf = Vec::new();
    for t in &graph.initializer {
        buf.clear();
        encode_key(GRAPH_INITIALIZER, WireType::LengthDelimited, &mut buf);
        t.encode_length_delimited(&mut buf)
            .expect("a Vec grows as needed");
        w.write_all(&buf)?;
    }
    w.write_all(&graph_tail.encode_to_vec())?;
    w.write_all(&model_tail.encode_to_vec())
}

/// Writes bytes to `path` through a temporary file in the same folder and a rename, so readers
/// see either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    with_atomic_file(path, |w| w.write_all(bytes))
}

/// Runs `write` on a buffered temporary file in `path`'s folder, then renames it to `path`;
/// on any error the temporary file is removed and `path` is untouched.
fn with_atomic_file(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
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

    #[test]
    fn streamed_saving_writes_the_same_bytes_as_encoding_at_once() {
        use crate::builder::{attr, GraphBuilder};
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", &[-1, 3]);
        let w = b.initializer_f32("w", &ndarray::ArrayD::from_elem(vec![3, 4], 0.5));
        let c = b.initializer_f32("c", &ndarray::ArrayD::from_elem(vec![4], -1.0));
        let y = b.node("Gemm", &[&x, &w, &c], "y", &[attr::float("alpha", 2.0)]);
        b.output(&y, &[-1, 4]);
        b.metadata("msn.labels", "a,b,c,d");
        let mut model = b.into_model(17);
        model.doc_string = Some("doc".into());
        model.graph.as_mut().unwrap().doc_string = Some("graph doc".into());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        save(&model, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), to_bytes(&model));
        // A model without a graph is written whole.
        let bare = ModelProto::default();
        save(&bare, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), to_bytes(&bare));
    }
}
