//! Tensors whose bytes sit in a file beside the model (ONNX "external data", what
//! `torch.onnx.export` writes for models over 2 GB and `onnx.save_model(...,
//! save_as_external_data=True)` for any). [`inline`] reads each one into `raw_data`, so the rest
//! of the toolkit sees an ordinary model.
//!
//! The model is untrusted, so is its `location`: only a relative path made of plain names is
//! followed (no `..`, no absolute path, no drive or root), and the file it names must resolve,
//! symbolic links and all, to a place inside the model's own folder. `offset` and `length` are
//! checked against the file's size and against the size the tensor's dims and type declare
//! before anything is read or allocated.

use crate::proto::tensor_proto::DataLocation;
use crate::validate::{element_count, element_size};
use crate::{Error, ModelProto, Result, TensorProto};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

fn bad(name: &str, reason: impl Into<String>) -> Error {
    Error::BadTensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// True when a tensor of the model (an initializer or a constant attribute, at any depth)
/// keeps its data in an external file.
pub fn has_external_data(model: &ModelProto) -> bool {
    let mut any = false;
    for_each_tensor(model, &mut |t| {
        any |= is_external(t);
        Ok(())
    })
    .expect("the visitor never fails");
    any
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location() == DataLocation::External || !t.external_data.is_empty()
}

/// Reads every external tensor of `model` from the files beside `model_path` into its
/// `raw_data`. Errors name the tensor and what is wrong with its location, offset or length.
pub fn inline(model: &mut ModelProto, model_path: &Path) -> Result<()> {
    let dir = match model_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Resolved once: every data file must land inside it.
    let mut root: Option<PathBuf> = None;
    for_each_tensor_mut(model, &mut |t| {
        if !is_external(t) {
            return Ok(());
        }
        let root = match &root {
            Some(r) => r.clone(),
            None => {
                let r = dir.canonicalize().map_err(|e| Error::io(&dir, e))?;
                root = Some(r.clone());
                r
            }
        };
        inline_one(t, &dir, &root)
    })
}

/// A `location` that stays inside the model's folder by its words alone: plain names only.
fn checked_location(name: &str, location: &str) -> Result<PathBuf> {
    if location.is_empty() {
        return Err(bad(name, "external data with an empty location"));
    }
    let p = Path::new(location);
    let plain = p.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || location.contains('\\') || location.contains(':') {
        return Err(bad(
            name,
            format!(
                "external data location '{location}' is not a plain relative path inside the \
                 model's folder (no '..', no absolute path)"
            ),
        ));
    }
    Ok(p.to_path_buf())
}

fn parse_u64(name: &str, key: &str, value: &str) -> Result<u64> {
    value.trim().parse::<u64>().map_err(|_| {
        bad(
            name,
            format!("external data {key} '{value}' is not a non-negative integer"),
        )
    })
}

fn inline_one(t: &mut TensorProto, dir: &Path, root: &Path) -> Result<()> {
    let name = t.name().to_string();
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for e in &t.external_data {
        match e.key() {
            "location" => location = Some(e.value().to_string()),
            "offset" => offset = parse_u64(&name, "offset", e.value())?,
            "length" => length = Some(parse_u64(&name, "length", e.value())?),
            _ => {} // "checksum" and others: not needed to read the bytes
        }
    }
    let location = location.ok_or_else(|| bad(&name, "external data without a location"))?;
    let relative = checked_location(&name, &location)?;
    let size = element_size(t.data_type()).ok_or_else(|| {
        bad(
            &name,
            "external data of a type without a fixed element size (strings are not supported)",
        )
    })? as u64;
    let want = element_count(t)?
        .checked_mul(size)
        .ok_or_else(|| bad(&name, "the tensor's size overflows"))?;
    if let Some(len) = length {
        if len != want {
            return Err(bad(
                &name,
                format!(
                    "external data length {len} does not match the {want} bytes its dims {:?} \
                     declare",
                    t.dims
                ),
            ));
        }
    }
    let path = dir.join(&relative);
    let real = path.canonicalize().map_err(|e| Error::io(&path, e))?;
    if !real.starts_with(root) {
        return Err(bad(
            &name,
            format!(
                "external data file '{location}' resolves to {}, outside the model's folder",
                real.display()
            ),
        ));
    }
    let mut file = std::fs::File::open(&real).map_err(|e| Error::io(&path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
    if !meta.is_file() {
        return Err(bad(
            &name,
            format!("external data '{location}' is not a file"),
        ));
    }
    let end = offset
        .checked_add(want)
        .filter(|&end| end <= meta.len())
        .ok_or_else(|| {
            bad(
                &name,
                format!(
                    "external data needs bytes {offset}..{} of '{location}', which has {}",
                    offset.saturating_add(want),
                    meta.len()
                ),
            )
        })?;
    let len = usize::try_from(end - offset).map_err(|_| bad(&name, "too large"))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io(&path, e))?;
    let mut raw = vec![0u8; len];
    file.read_exact(&mut raw).map_err(|e| Error::io(&path, e))?;
    t.raw_data = Some(raw);
    t.external_data.clear();
    t.data_location = None;
    Ok(())
}

/// Calls `f` on every tensor the model holds: initializers and tensor attributes of nodes, in
/// subgraphs too.
fn for_each_tensor(m: &ModelProto, f: &mut dyn FnMut(&TensorProto) -> Result<()>) -> Result<()> {
    fn graph(g: &crate::GraphProto, f: &mut dyn FnMut(&TensorProto) -> Result<()>) -> Result<()> {
        for t in &g.initializer {
            f(t)?;
        }
        for n in &g.node {
            for a in &n.attribute {
                if let Some(t) = &a.t {
                    f(t)?;
                }
                for t in &a.tensors {
                    f(t)?;
                }
                if let Some(sub) = &a.g {
                    graph(sub, f)?;
                }
                for sub in &a.graphs {
                    graph(sub, f)?;
                }
            }
        }
        Ok(())
    }
    match &m.graph {
        Some(g) => graph(g, f),
        None => Ok(()),
    }
}

/// [`for_each_tensor`], mutably.
fn for_each_tensor_mut(
    m: &mut ModelProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    fn graph(
        g: &mut crate::GraphProto,
        f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
    ) -> Result<()> {
        for t in &mut g.initializer {
            f(t)?;
        }
        for n in &mut g.node {
            for a in &mut n.attribute {
                if let Some(t) = &mut a.t {
                    f(t)?;
                }
                for t in &mut a.tensors {
                    f(t)?;
                }
                if let Some(sub) = &mut a.g {
                    graph(sub, f)?;
                }
                for sub in &mut a.graphs {
                    graph(sub, f)?;
                }
            }
        }
        Ok(())
    }
    match &mut m.graph {
        Some(g) => graph(g, f),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tensor_proto::DataType;
    use crate::proto::StringStringEntryProto;
    use crate::GraphProto;

    fn entry(k: &str, v: &str) -> StringStringEntryProto {
        StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        }
    }

    /// A model with one external f32 initializer `w` of 3 values.
    fn model(entries: Vec<StringStringEntryProto>) -> ModelProto {
        let t = TensorProto {
            name: Some("w".into()),
            dims: vec![3],
            data_type: Some(DataType::Float as i32),
            data_location: Some(DataLocation::External as i32),
            external_data: entries,
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                initializer: vec![t],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn data_beside_the_model_is_read_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![9u8; 4];
        bytes.extend(floats(&[1.0, 2.0, 3.0]));
        std::fs::write(dir.path().join("w.bin"), &bytes).unwrap();
        let mut m = model(vec![
            entry("location", "w.bin"),
            entry("offset", "4"),
            entry("length", "12"),
        ]);
        assert!(has_external_data(&m));
        inline(&mut m, &dir.path().join("m.onnx")).unwrap();
        assert!(!has_external_data(&m));
        let t = &m.graph.unwrap().initializer[0];
        assert_eq!(t.raw_data.as_deref(), Some(&floats(&[1.0, 2.0, 3.0])[..]));
    }

    #[test]
    fn locations_outside_the_folder_are_refused_before_any_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        for location in ["../w.bin", "/etc/passwd", "a/../../w.bin", "", "./../x"] {
            let mut m = model(vec![entry("location", location)]);
            let err = inline(&mut m, &dir.path().join("m.onnx"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("'w'") && (err.contains("plain relative") || err.contains("empty")),
                "{location}: {err}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_out_of_the_folder_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("w.bin"), floats(&[1.0, 2.0, 3.0])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("w.bin"), dir.path().join("w.bin")).unwrap();
        let mut m = model(vec![entry("location", "w.bin")]);
        let err = inline(&mut m, &dir.path().join("m.onnx"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the model's folder"), "{err}");
    }

    #[test]
    fn lengths_and_offsets_are_checked_against_the_dims_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), floats(&[1.0, 2.0, 3.0])).unwrap();
        let cases = [
            (
                vec![entry("location", "w.bin"), entry("length", "8")],
                "does not match",
            ),
            (
                vec![entry("location", "w.bin"), entry("offset", "4")],
                "which has 12",
            ),
            (
                vec![
                    entry("location", "w.bin"),
                    entry("offset", "18446744073709551615"),
                ],
                "which has 12",
            ),
            (
                vec![entry("location", "w.bin"), entry("offset", "-1")],
                "non-negative",
            ),
            (vec![entry("offset", "0")], "without a location"),
        ];
        for (entries, want) in cases {
            let mut m = model(entries);
            let err = inline(&mut m, &dir.path().join("m.onnx"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
