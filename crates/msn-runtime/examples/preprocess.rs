//! Decodes and preprocesses one image `N` times, as `msn-classify` does for a 224x224 model
//! with `--resize 256 --crop 224`: for instruction counts of the preprocessing alone (callgrind
//! on x86-64, `../shared/tools/insn-count` under qemu for the boards; (N=3 - N=1) / 2 is one
//! image).
//!
//!     cargo run --release -p msn-runtime --example preprocess -- IMAGE [N]

use msn_onnx::meta::Resize;
use msn_runtime::Preprocess;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: preprocess IMAGE [N]");
    let n: usize = args.next().map_or(1, |s| s.parse().expect("N is a count"));
    let p = Preprocess {
        channels: 3,
        height: 224,
        width: 224,
        resize: Resize::ShorterThenCrop(256),
        scale: 1.0,
        mean: vec![127.0],
        std: vec![128.0],
    };
    let mut sum = 0.0f64;
    for _ in 0..n {
        let t = p.load(&path).unwrap_or_else(|e| panic!("{e}"));
        sum += t.iter().map(|&v| v as f64).sum::<f64>();
    }
    println!("{n} x {path}: checksum {sum:.3}");
}
