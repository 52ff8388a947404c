//! Folding a 45 MB model: `cargo bench -p msn-fold --bench large`.
//!
//! Builds a VGG-style model with about 46 MB of conv weights, each conv followed by an
//! inference BatchNormalization, writes it to a temporary file, then folds it in a child
//! process (load, fold, save), which reports its wall time per phase and its peak resident
//! memory (VmHWM) against the file's size.

use msn_onnx::builder::{attr, GraphBuilder};
use ndarray::ArrayD;
use std::time::Instant;

fn spread(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    ArrayD::from_shape_simple_fn(shape, || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    })
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn child(input: &str, output: &str) {
    let base = peak_rss_mb();
    let t = Instant::now();
    let mut model = msn_onnx::io::load(std::path::Path::new(input)).unwrap();
    let load = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = msn_fold::fold(&mut model);
    let fold = t.elapsed().as_secs_f64();
    let t = Instant::now();
    msn_onnx::io::save(&model, std::path::Path::new(output)).unwrap();
    let save = t.elapsed().as_secs_f64();
    println!(
        "{load} {fold} {save} {} {base} {} {}",
        peak_rss_mb(),
        report.nodes_before,
        report.nodes_after
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1], &args[i + 2]);
    }
    let mut b = GraphBuilder::new("large");
    let mut x = b.input("x", &[-1, 3, 32, 32]);
    let widths = [3usize, 256, 512, 512, 704, 768];
    for (i, pair) in widths.windows(2).enumerate() {
        let (cin, cout) = (pair[0], pair[1]);
        let w = b.initializer_f32(&format!("c{i}.w"), &spread(&[cout, cin, 3, 3], i as u64));
        let pads = [attr::ints("pads", &[1, 1, 1, 1])];
        let y = b.node("Conv", &[&x, &w], &format!("c{i}"), &pads);
        let p: Vec<String> = ["g", "b", "m", "v"]
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let mut a = spread(&[cout], 100 + 4 * i as u64 + k as u64);
                if *n == "v" || *n == "g" {
                    a.mapv_inplace(|v| v.abs() + 0.5);
                }
                b.initializer_f32(&format!("bn{i}.{n}"), &a)
            })
            .collect();
        let inputs = [y.as_str(), &p[0], &p[1], &p[2], &p[3]];
        let y = b.node("BatchNormalization", &inputs, &format!("bn{i}"), &[]);
        x = b.node("Relu", &[&y], &format!("r{i}"), &[]);
    }
    b.output(&x, &[-1, 768, 32, 32]);
    let model = b.into_model(17);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("large.onnx");
    let output = dir.path().join("large.folded.onnx");
    msn_onnx::io::save(&model, &input).unwrap();
    drop(model);
    let size = std::fs::metadata(&input).unwrap().len() as f64 / 1048576.0;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child", input.to_str().unwrap(), output.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let (load, fold, save, peak, base) = (v[0], v[1], v[2], v[3], v[4]);
    println!("folding a {size:.1} MiB model ({} -> {} nodes)", v[5], v[6]);
    println!(
        "  load {:.0} ms, fold {:.0} ms, save {:.0} ms: total {:.0} ms",
        load * 1e3,
        fold * 1e3,
        save * 1e3,
        (load + fold + save) * 1e3
    );
    println!(
        "  peak resident memory {peak:.1} MiB ({:.1} MiB above the {base:.1} MiB before loading): {:.2}x the model's size",
        peak - base,
        (peak - base) / size
    );
}
