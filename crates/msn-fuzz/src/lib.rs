//! # msn-fuzz: one function per parser of untrusted input
//!
//! Each target takes arbitrary bytes and must return (with an error or not) without a panic,
//! an abort or an allocation out of proportion to the input. [`kernels`] is differential: it
//! also holds msn-kernels' answers to a plain reference and to tract's own plan. The same functions serve
//! cargo-fuzz (`fuzz/`, nightly: `cargo +nightly fuzz run onnx`), the replay of the committed
//! corpus (`fuzz/corpus/<target>/`, in `cargo test`) and a stable-Rust mutation smoke
//! ([`smoke`], `cargo run -p msn-fuzz --release -- SECONDS`, in `.ci/run`).

pub mod kernels;

use std::path::Path;

/// A target: bytes in, nothing out; a panic is a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: [(&str, Target); 9] = [
    ("onnx", onnx),
    ("fold", fold),
    ("image", image),
    ("npy", npy),
    ("idx", idx),
    ("checkpoint", checkpoint),
    ("metadata", metadata),
    ("stream", stream),
    ("kernels", kernels::target),
];

/// Decode and validate an ONNX model; read its image metadata.
pub fn onnx(data: &[u8]) {
    let Ok(model) = msn_onnx::io::from_bytes(data) else {
        return;
    };
    if msn_onnx::validate::model(&model).is_ok() {
        let _ = msn_onnx::meta::ImageMeta::from_model(&model);
        let _ = msn_onnx::graph::GraphView::new(&model).map(|v| v.op_histogram());
    }
}

/// Every fold pass on a valid model; the result must still be a valid graph, and the
/// Lipschitz bound must not fail on it.
pub fn fold(data: &[u8]) {
    let Ok(mut model) = msn_onnx::io::from_bytes(data) else {
        return;
    };
    if msn_onnx::validate::model(&model).is_err() {
        return;
    }
    msn_fold::fold(&mut model);
    msn_onnx::graph::GraphView::new(&model).expect("folding keeps a valid graph valid");
    if let (Ok(shape), Some(g)) = (msn_fold::input_shape(&model), model.graph.as_ref()) {
        let _ = msn_fold::lipschitz::bound(g, &shape);
    }
}

/// Decode an image (any format) and preprocess it both ways.
pub fn image(data: &[u8]) {
    let Ok(img) = msn_runtime::preprocess::decode_bytes(data, Path::new("fuzz")) else {
        return;
    };
    for resize in [
        msn_onnx::meta::Resize::Exact,
        msn_onnx::meta::Resize::ShorterThenCrop(40),
    ] {
        let p = msn_runtime::Preprocess {
            channels: 3,
            height: 32,
            width: 32,
            resize,
            scale: 1.0 / 255.0,
            mean: vec![0.5],
            std: vec![0.25],
        };
        let _ = p.apply(&img);
    }
}

/// Decode a NumPy `.npy` array.
pub fn npy(data: &[u8]) {
    let _ = msn_runtime::npy::decode(data, Path::new("fuzz.npy"));
}

/// Images on standard input: the bytes split into frames (with a small frame limit, so large
/// frames are exercised), every byte accounted for as a frame or as skipped, each frame
/// decoded.
pub fn stream(data: &[u8]) {
    let mut seen = 0u64;
    for item in msn_runtime::stream::Frames::with_limit(data, 4096) {
        match item.expect("reading from memory cannot fail") {
            msn_runtime::stream::Item::Frame(f) => {
                seen += f.len() as u64;
                let _ = msn_runtime::preprocess::decode_bytes(&f, Path::new("fuzz"));
            }
            msn_runtime::stream::Item::Skipped { bytes, .. } => seen += bytes,
        }
    }
    assert_eq!(
        seen,
        data.len() as u64,
        "every byte is a frame's or skipped"
    );
}

/// An IDX image file and label file: the first byte says where the data splits.
pub fn idx(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * rest.len() / 255).min(rest.len());
    let (images, labels) = rest.split_at(cut);
    let classes = (0..10).map(|i| i.to_string()).collect();
    let _ = msn_train::data::parse_idx(images, labels, classes, Path::new("i"), Path::new("l"));
}

/// A training checkpoint (safetensors with our metadata).
pub fn checkpoint(data: &[u8]) {
    let _ = msn_train::checkpoint::from_bytes(data, Path::new("fuzz.safetensors"));
}

/// Model metadata: the bytes as `key=value` lines on an empty model.
pub fn metadata(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut model = msn_onnx::ModelProto::default();
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        msn_onnx::meta::set(&mut model, k, v);
    }
    let _ = msn_onnx::meta::ImageMeta::from_model(&model);
}

/// The seed files of a target's corpus folder.
pub fn corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// A stable-Rust mutation loop: for `seconds`, mutates the seeds (bit flips, byte sets,
/// truncation, duplication of a slice, interesting values) and runs the target on each.
/// Returns the number of executions; a panic propagates with the input that caused it
/// written to `crash-<target>.bin` in the current folder.
pub fn smoke(name: &str, target: Target, seeds: &[Vec<u8>], seconds: f64, seed: u64) -> u64 {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start = std::time::Instant::now();
    let mut runs = 0u64;
    let empty = [Vec::new()];
    let seeds = if seeds.is_empty() { &empty[..] } else { seeds };
    while start.elapsed().as_secs_f64() < seconds {
        let mut input = seeds[next() as usize % seeds.len()].clone();
        for _ in 0..1 + next() % 8 {
            mutate(&mut input, &mut next);
        }
        let result = std::panic::catch_unwind(|| target(&input));
        if let Err(e) = result {
            let file = format!("crash-{name}.bin");
            let _ = std::fs::write(&file, &input);
            std::panic::resume_unwind(e);
        }
        runs += 1;
    }
    runs
}

fn mutate(input: &mut Vec<u8>, next: &mut impl FnMut() -> u64) {
    let len = input.len();
    match next() % 6 {
        0 if len > 0 => {
            let i = next() as usize % len;
            input[i] ^= 1 << (next() % 8);
        }
        1 if len > 0 => {
            let i = next() as usize % len;
            input[i] = [0, 1, 0x7f, 0x80, 0xff][next() as usize % 5];
        }
        2 if len > 0 => input.truncate(next() as usize % len),
        3 if len > 1 => {
            let a = next() as usize % len;
            let b = a + next() as usize % (len - a).min(64);
            let piece = input[a..b].to_vec();
            let at = next() as usize % len;
            input.splice(at..at, piece);
        }
        4 if len >= 8 => {
            // A large little- or big-endian integer over 4 bytes: sizes and counts.
            let i = next() as usize % (len - 4);
            let v = [u32::MAX, 1 << 31, 1 << 24, 0xffff][next() as usize % 4];
            input[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        _ => input.push(next() as u8),
    }
}
