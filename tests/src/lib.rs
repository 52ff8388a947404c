//! Helpers shared by the end-to-end tests: where fixtures and shared data live, raw f32 files.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// `../shared/data` beside the repository, or `None` (with a message saying the test skips)
/// when it is absent.
pub fn shared_data(what: &str) -> Option<PathBuf> {
    let dir = repo_root().join("../shared/data");
    if dir.join(what).exists() {
        Some(dir)
    } else {
        // Straight to stderr, which the test harness does not capture: a skip shows in
        // every run's output, not only under --nocapture.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: ../shared/data/{what} is absent"
        );
        None
    }
}

/// Reads a raw little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs an ONNX model (as bytes) through the runtime's loader (folded, guarded, optimised by
/// tract) on one input of the given shape.
pub fn run_tract(model: &[u8], shape: &[usize], input: Vec<f32>) -> Vec<f32> {
    let source = msn_runtime::Source::from_bytes(model.to_vec(), Path::new("test model")).unwrap();
    let plan = source
        .plan(&[shape.to_vec()], msn_runtime::Plan::Optimized)
        .unwrap();
    let x = ndarray::ArrayD::from_shape_vec(shape.to_vec(), input).unwrap();
    plan.run_f32(x).unwrap().remove(0).iter().copied().collect()
}
