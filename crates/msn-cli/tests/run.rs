//! `msn run` as a user runs it: NumPy files in and out, and one clear error for every wrong
//! input.

use msn_runtime::Tensor;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn msn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msn"))
        .args(args)
        .output()
        .expect("msn runs")
}

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/corpus/{name}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(needle),
        "expected '{needle}' in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn f32_file(dir: &Path, name: &str, shape: &[usize], values: Vec<f32>) -> PathBuf {
    let path = dir.join(name);
    let t = Tensor::from(ndarray::ArrayD::from_shape_vec(shape.to_vec(), values).unwrap());
    msn_runtime::npy::write(&path, &[("x".into(), t)]).unwrap();
    path
}

#[test]
fn efficientnet_lite0_on_the_reference_inputs_gives_the_reference_logits() {
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/efficientnet-lite0");
    if !data.exists() {
        // Straight to stderr, which the test harness does not capture: a skip shows in
        // every run's output, not only under --nocapture.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: ../shared/data/efficientnet-lite0 is absent"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = |p: PathBuf| -> Vec<f32> {
        std::fs::read(p)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for name in ["chelsea", "coffee"] {
        let input = raw(data.join(format!("reference/{name}.input.f32")));
        let x = f32_file(dir.path(), &format!("{name}.npy"), &[1, 3, 224, 224], input);
        let out = dir.path().join(format!("{name}.out.npy"));
        let model = data.join("efficientnet-lite0.onnx");
        let o = msn(&["run", s(&model), "--input", s(&x), "-o", s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = msn_runtime::npy::read(&out).unwrap().remove(0).1;
        let got = got.to_plain_array_view::<f32>().unwrap();
        let want = raw(data.join(format!("reference/{name}.logits.f32")));
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{name}: msn run vs reference logits {max:e}");
        assert_eq!(got.len(), want.len());
        assert!(max < 1e-4, "{name}: {max}");
    }
}

#[test]
fn several_outputs_go_to_an_npz_keyed_by_name_and_json_describes_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = corpus("gen_conv_sub_cx_two_uses.onnx");
    let inputs = corpus("gen_conv_sub_cx_two_uses.inputs.npz");
    let out = dir.path().join("out.npz");
    let o = msn(&[
        "run",
        s(&model),
        "--input",
        s(&inputs),
        "-o",
        s(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(json["outputs"][0]["shape"], serde_json::json!([1, 4, 6, 6]));
    assert_eq!(msn_runtime::npy::read(&out).unwrap().len(), 2);
    // Two outputs do not fit one .npy: refused, nothing written.
    let npy = dir.path().join("out.npy");
    assert_fails_with(
        &msn(&["run", s(&model), "--input", s(&inputs), "-o", s(&npy)]),
        "write them to an .npz",
    );
    assert!(!npy.exists());
}

#[test]
fn wrong_shapes_types_names_and_files_are_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = corpus("arch_resnet.onnx");
    let wrong_shape = f32_file(dir.path(), "s.npy", &[1, 3, 8], vec![0.0; 24]);
    assert_fails_with(
        &msn(&["run", s(&model), "-i", s(&wrong_shape), "-o", "/tmp/x.npy"]),
        "input 'input'",
    );
    let ints = dir.path().join("i.npy");
    let t = Tensor::from(ndarray::ArrayD::<i64>::zeros(vec![1, 3, 64, 64]));
    msn_runtime::npy::write(&ints, &[("x".into(), t)]).unwrap();
    assert_fails_with(
        &msn(&["run", s(&model), "-i", s(&ints), "-o", "/tmp/x.npy"]),
        "FLOAT",
    );
    let ok = f32_file(
        dir.path(),
        "ok.npy",
        &[1, 3, 64, 64],
        vec![0.5; 3 * 64 * 64],
    );
    let named = format!("nope={}", s(&ok));
    assert_fails_with(
        &msn(&["run", s(&model), "-i", &named, "-o", "/tmp/x.npy"]),
        "no input 'nope'",
    );
    let garbage = dir.path().join("g.npy");
    std::fs::write(&garbage, b"not numpy").unwrap();
    assert_fails_with(
        &msn(&["run", s(&model), "-i", s(&garbage), "-o", "/tmp/x.npy"]),
        "g.npy",
    );
    let two = s(&ok).to_string();
    assert_fails_with(
        &msn(&["run", s(&model), "-i", &two, "-i", &two, "-o", "/tmp/x.npy"]),
        "more tensors",
    );
}
