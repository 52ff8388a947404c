//! NumPy `.npy` and `.npz` files to tract tensors and back, through `ndarray-npy` (and `zip`
//! for the archive's entries). Every header is checked against the bytes that follow it
//! before an array is allocated, so a hostile file cannot ask for more memory than it holds.

use crate::{Error, Result};
use ndarray::ArrayD;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use std::io::{Cursor, Read};
use std::path::Path;
use tract_onnx::prelude::*;

/// The largest `.npy` or `.npz` file (or archive entry) read: 4 GiB.
pub const MAX_BYTES: u64 = 4 << 30;

fn bad(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Calls `$body` with `$t` bound to the Rust type of an npy descriptor, `$other` when the
/// descriptor is none of these.
macro_rules! by_descriptor {
    ($descr:expr, $t:ident => $body:expr, $other:expr) => {
        by_descriptor!(@table $descr, $t, $body, $other,
            "<f4" => f32, "<f8" => f64, "|i1" | "i1" => i8, "|u1" | "u1" => u8,
            "<i2" => i16, "<u2" => u16, "<i4" => i32, "<u4" => u32,
            "<i8" => i64, "<u8" => u64, "|b1" => bool)
    };
    (@table $descr:expr, $t:ident, $body:expr, $other:expr, $($($d:literal)|+ => $ty:ty),+) => {
        match $descr {
            $($($d)|+ => {
                type $t = $ty;
                $body
            })+
            _ => $other,
        }
    };
}

/// Decodes one `.npy` image held in memory; `path` names it in messages.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Tensor> {
    let (descr, need) = declared(bytes, path, MAX_BYTES)?;
    if need > bytes.len() as u64 {
        return Err(bad(
            path,
            format!(
                "the header declares {need} bytes of data, the file holds fewer ({})",
                bytes.len()
            ),
        ));
    }
    by_descriptor!(descr.as_str(), T => {
        let a = ArrayD::<T>::read_npy(bytes).map_err(|e| bad(path, e))?;
        Ok(Tensor::from(a))
    }, unreachable!("checked by declared"))
}

/// The arrays in a `.npy` (one, unnamed) or `.npz` file (named by their keys, `.npy` dropped),
/// stored or deflate-compressed (`np.savez`, `np.savez_compressed`).
pub fn read(path: &Path) -> Result<Vec<(Option<String>, Tensor)>> {
    read_limited(path, &|_| MAX_BYTES)
}

/// The most an `.npz` entry may unpack to, in times its compressed size (real arrays, even of
/// mostly zeros, stay far below; deflate's own limit is about 1,032).
const MAX_RATIO: u64 = 200;

/// The most bytes an `.npy` header may take (NumPy writes 128 or a few hundred).
const MAX_HEADER: u64 = 1 << 16;

/// [`read`], with each array's data at most `limit(key)` bytes (`key`: the `.npz` entry's name,
/// `None` for a `.npy` file): what the model's input needs. A compressed entry's header is read
/// first and its declared size checked against the limit, so a small archive that inflates
/// to gigabytes (a deflate bomb) is refused after reading a few bytes of it.
pub fn read_limited(
    path: &Path,
    limit: &dyn Fn(Option<&str>) -> u64,
) -> Result<Vec<(Option<String>, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        cause: e,
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_BYTES {
        return Err(bad(path, format!("{len} bytes is larger than {MAX_BYTES}")));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        cause: e,
    })?;
    if !bytes.starts_with(b"PK") {
        declared(&bytes, path, limit(None))?;
        return Ok(vec![(None, decode(&bytes, path)?)]);
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(&bytes))
        .map_err(|e| bad(path, format!("not a NumPy .npz archive: {e}")))?;
    let mut out = Vec::with_capacity(zip.len());
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(path, e))?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        let shown = path.join(&name);
        let most = limit(Some(&name)).min(MAX_BYTES);
        // What the archive says the entry unpacks to: refused before inflating anything.
        if entry.size() > most.saturating_add(MAX_HEADER) {
            return Err(bad(
                &shown,
                format!(
                    "the entry unpacks to {} bytes, more than the {most} its input can take",
                    entry.size()
                ),
            ));
        }
        // The header, then exactly the data it declares (whatever the archive claims).
        let mut data = Vec::new();
        (&mut entry)
            .take(10)
            .read_to_end(&mut data)
            .map_err(|e| bad(&shown, e))?;
        let header_len = match data.get(6) {
            Some(1) if data.len() >= 10 => u64::from(u16::from_le_bytes([data[8], data[9]])),
            Some(2 | 3) if data.len() >= 10 => {
                let mut more = [0u8; 2];
                entry.read_exact(&mut more).map_err(|e| bad(&shown, e))?;
                data.extend(more);
                u64::from(u32::from_le_bytes([data[8], data[9], data[10], data[11]]))
            }
            _ => return Err(bad(&shown, "not a NumPy .npy array")),
        };
        if header_len > MAX_HEADER {
            return Err(bad(&shown, format!("an .npy header of {header_len} bytes")));
        }
        (&mut entry)
            .take(header_len)
            .read_to_end(&mut data)
            .map_err(|e| bad(&shown, e))?;
        let (_, need) = declared(&data, &shown, most)?;
        // A free batch dimension leaves the size open; no real array compresses this well.
        if need > entry.compressed_size().saturating_mul(MAX_RATIO) + (1 << 20) {
            return Err(bad(
                &shown,
                format!(
                    "the entry unpacks to {need} bytes, over {MAX_RATIO} times its compressed \
                     size ({} bytes): refused as a deflate bomb (save it with np.savez)",
                    entry.compressed_size()
                ),
            ));
        }
        (&mut entry)
            .take(need)
            .read_to_end(&mut data)
            .map_err(|e| bad(&shown, format!("entry '{name}': {e}")))?;
        total += data.len() as u64;
        if total > MAX_BYTES {
            return Err(bad(
                path,
                format!("the arrays unpack to more than {MAX_BYTES} bytes"),
            ));
        }
        out.push((Some(name), decode(&data, &shown)?));
    }
    if out.is_empty() {
        return Err(bad(path, "the archive holds no arrays"));
    }
    Ok(out)
}

/// The element type and the data bytes an `.npy` header (at the start of `bytes`) declares;
/// refused above `limit`.
fn declared(bytes: &[u8], path: &Path, limit: u64) -> Result<(String, u64)> {
    let header = ndarray_npy::npy::header::Header::from_reader(&mut &bytes[..])
        .map_err(|e| bad(path, format!("not a NumPy .npy array: {e}")))?;
    let descr = header.type_descriptor.to_string();
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    let size = by_descriptor!(descr.as_str(), T => std::mem::size_of::<T>() as u64,
        return Err(bad(path, format!("element type {descr} is not supported (floats, integers, bool)"))));
    let need = header
        .shape
        .iter()
        .try_fold(size, |n, &d| n.checked_mul(d as u64))
        .filter(|&n| n <= limit)
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "shape {:?} of {descr} takes more than {limit} bytes",
                    header.shape
                ),
            )
        })?;
    Ok((descr, need))
}

fn encode(t: &Tensor, name: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let descr = match t.datum_type() {
        DatumType::F32 => "<f4",
        DatumType::F64 => "<f8",
        DatumType::I8 => "|i1",
        DatumType::U8 => "|u1",
        DatumType::I16 => "<i2",
        DatumType::U16 => "<u2",
        DatumType::I32 => "<i4",
        DatumType::U32 => "<u4",
        DatumType::I64 => "<i8",
        DatumType::U64 => "<u8",
        DatumType::Bool => "|b1",
        DatumType::F16 => {
            let t = t.cast_to::<f32>().map_err(Error::from)?;
            return encode(&t, name);
        }
        other => {
            return Err(Error::Inference(format!(
                "output '{name}' is {other:?}, which NumPy files do not hold here"
            )))
        }
    };
    by_descriptor!(descr, T => {
        let view = t.to_plain_array_view::<T>().map_err(Error::from)?;
        view.to_owned().write_npy(&mut buf).map_err(|e| Error::Inference(format!("output '{name}': {e}")))?;
    }, unreachable!("every descriptor above is known"));
    Ok(buf)
}

/// Writes the outputs atomically: `.npy` when `path` ends so (exactly one output), else an
/// `.npz` archive keyed by output name.
pub fn write(path: &Path, outputs: &[(String, Tensor)]) -> Result<()> {
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let bytes = if is_npy {
        let [(name, t)] = outputs else {
            return Err(bad(
                path,
                format!(
                    "the model has {} outputs; write them to an .npz file",
                    outputs.len()
                ),
            ));
        };
        encode(t, name)?
    } else {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, t) in outputs {
            zip.start_file(format!("{name}.npy"), options)
                .map_err(|e| bad(path, e))?;
            std::io::Write::write_all(&mut zip, &encode(t, name)?).map_err(|e| bad(path, e))?;
        }
        zip.finish().map_err(|e| bad(path, e))?.into_inner()
    };
    msn_onnx::io::write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_through_npy_and_npz() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::from(ndarray::arr2(&[[1.5f32, -2.0], [3.0, 4.0]]).into_dyn());
        let b = Tensor::from(ndarray::arr1(&[7i64, -1, 0]).into_dyn());
        let one = dir.path().join("a.npy");
        write(&one, &[("y".into(), a.clone())]).unwrap();
        assert_eq!(read(&one).unwrap(), vec![(None, a.clone())]);
        let many = dir.path().join("out.npz");
        write(&many, &[("y".into(), a.clone()), ("z".into(), b.clone())]).unwrap();
        let back = read(&many).unwrap();
        assert_eq!(back, vec![(Some("y".into()), a), (Some("z".into()), b)]);
    }

    #[test]
    fn a_header_asking_for_more_than_the_file_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.npy");
        let mut bytes = Vec::new();
        ndarray::arr1(&[1.0f32]).write_npy(&mut bytes).unwrap();
        // The same header length: ten more digits, ten fewer padding spaces.
        let (magic, rest) = bytes.split_at(10);
        let (header, data) = rest.split_at(rest.len() - 4);
        let text = String::from_utf8(header.to_vec())
            .unwrap()
            .replace("(1,)", "(99999999999,)")
            .replacen("          \n", "\n", 1);
        std::fs::write(&p, [magic, text.as_bytes(), data].concat()).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("big.npy") && err.contains("bytes"), "{err}");
    }

    /// An `.npz` archive of `entries` (name, bytes), deflate-compressed as
    /// `np.savez_compressed` writes them.
    fn deflated(path: &Path, entries: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        for (name, bytes) in entries {
            zip.start_file(format!("{name}.npy"), options).unwrap();
            std::io::Write::write_all(&mut zip, bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    fn npy_bytes(a: &ndarray::ArrayD<f32>) -> Vec<u8> {
        let mut b = Vec::new();
        a.write_npy(&mut b).unwrap();
        b
    }

    #[test]
    fn compressed_archives_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.npz");
        let a = ndarray::Array::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32).into_dyn();
        deflated(&p, &[("x", &npy_bytes(&a))]);
        let back = read(&p).unwrap();
        assert_eq!(back, vec![(Some("x".into()), Tensor::from(a))]);
    }

    #[test]
    fn an_entry_larger_than_its_input_is_refused_before_it_is_inflated() {
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of zeros: a few tens of kilobytes compressed.
        let big = ndarray::ArrayD::<f32>::zeros(vec![16 << 20]);
        let p = dir.path().join("bomb.npz");
        deflated(&p, &[("x", &npy_bytes(&big))]);
        assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
        let err = read_limited(&p, &|_| 1 << 20).unwrap_err().to_string();
        assert!(
            err.contains("bomb.npz") && err.contains("unpacks to"),
            "{err}"
        );

        // A header that claims more than the input takes, whatever the archive says: the
        // header of a 2 GiB array followed by a few bytes.
        let mut lying = npy_bytes(&ndarray::ArrayD::<f32>::zeros(vec![1]));
        let text = String::from_utf8(lying[10..lying.len() - 4].to_vec())
            .unwrap()
            .replace("(1,)", "(536870912,)")
            .replacen("        \n", "\n", 1);
        lying = [&lying[..10], text.as_bytes(), &[0u8; 64]].concat();
        let p = dir.path().join("lying.npz");
        deflated(&p, &[("x", &lying)]);
        let err = read_limited(&p, &|key| {
            assert_eq!(key, Some("x"));
            1 << 20
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("536870912") && err.contains("more than 1048576"),
            "{err}"
        );
        // Within the size limit, the ratio to the compressed size gives it away.
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("deflate bomb"), "{err}");
    }
}
