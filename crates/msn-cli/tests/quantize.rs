//! `msn quantize` / `msn-quantize` end to end on the shipped Fashion-MNIST model, calibrated on
//! the shipped images: what it writes, that msn-classify runs it with the float model's
//! answers, and clean failures on bad input. (The op-by-op check against onnxruntime is
//! `tests/python/check_quantize_ops.py`; the accuracy one `tests/python/check_quantize.py`.)

mod common;
use common::{assert_fails_with, msn, ok, s};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> PathBuf {
    root().join("models/fashion-cnn3-msn.onnx")
}

fn images() -> PathBuf {
    root().join("models/images")
}

fn top1(model: &Path) -> Vec<u64> {
    let out = ok(&msn(&[
        "classify",
        "--json",
        "--model",
        s(model),
        s(&images()),
    ]));
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["top"][0]["index"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn quantizes_the_shipped_model_into_a_drop_in_int8_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, report) = (tmp.path().join("int8.onnx"), tmp.path().join("r.json"));
    let stdout = ok(&Command::new(env!("CARGO_BIN_EXE_msn-quantize"))
        .args([s(&model()), "-o", s(&out), "--calibration", s(&images())])
        .args(["--verify", "10", "--report", s(&report)])
        .output()
        .unwrap());
    assert!(stdout.contains("top-1 agreement"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let q = &r["quantization"];
    assert_eq!(q["quantized_ops"]["Conv"], 3, "{q}");
    assert_eq!(q["quantized_ops"]["Gemm"], 1, "{q}");
    assert_eq!(q["format"], "qoperator");
    assert_eq!(q["per_channel"], true);
    assert!(r["size_ratio"].as_f64().unwrap() <= 0.35, "{r}");
    assert!(
        r["verify"]["top1_agreement"].as_f64().unwrap() >= 0.9,
        "{r}"
    );
    // Every observed activation has a positive scale and an in-range zero point.
    for t in q["tensors"].as_array().unwrap() {
        assert!(t["scale"].as_f64().unwrap() > 0.0, "{t}");
        assert!(
            (0..=255).contains(&t["zero_point"].as_i64().unwrap()),
            "{t}"
        );
    }
    // The written model: integer ops, float input and output, metadata kept and extended.
    let m = msn_onnx::io::load(&out).unwrap();
    let g = m.graph.as_ref().unwrap();
    let ops = msn_onnx::graph::op_histogram(g);
    assert_eq!(ops.get("QLinearConv"), Some(&3), "{ops:?}");
    assert_eq!(ops.get("MatMulInteger"), Some(&1), "{ops:?}");
    assert!(
        !ops.contains_key("Conv") && !ops.contains_key("Gemm"),
        "{ops:?}"
    );
    let meta = |k: &str| msn_onnx::graph::metadata(&m, k).map(str::to_string);
    assert!(meta("msn.quantized").unwrap().contains("per channel"));
    let float = msn_onnx::io::load(model()).unwrap();
    assert_eq!(
        meta("msn.labels"),
        msn_onnx::graph::metadata(&float, "msn.labels").map(str::to_string)
    );
    // msn-classify runs it with no flags and mostly the float model's answers.
    let (f, q8) = (top1(&model()), top1(&out));
    let same = f.iter().zip(&q8).filter(|(a, b)| a == b).count();
    assert!(same + 1 >= f.len(), "top-1 float {f:?} int8 {q8:?}");
}

#[test]
fn qdq_per_tensor_and_calibration_methods_write_models_that_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, dir) = (model(), images());
    for (i, flags) in [
        &["--format", "qdq"][..],
        &["--per-tensor", "--method", "percentile"],
        &["--method", "entropy", "--activations", "s8"],
    ]
    .iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("{i}.onnx"));
        let mut args = vec!["quantize", s(&m), "-o", s(&out)];
        args.extend(["--calibration", s(&dir), "--force"]);
        args.extend(flags.iter());
        ok(&msn(&args));
        assert_eq!(top1(&out).len(), 10, "{flags:?}");
    }
}

#[test]
fn bad_input_fails_cleanly_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let (m, dir) = (model(), images());
    let run = |extra: &[&str]| {
        let mut args = vec!["quantize", s(&m), "-o", s(&out)];
        args.extend(extra);
        msn(&args)
    };
    assert_fails_with(&run(&["--calibration", "/no/such/dir"]), "/no/such/dir");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_fails_with(&run(&["--calibration", s(&empty)]), "no images");
    let junk = tmp.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("a.png"), b"not a png").unwrap();
    assert_fails_with(
        &run(&["--calibration", s(&junk)]),
        "none of the images could be read",
    );
    assert_fails_with(
        &run(&["--calibration", s(&dir), "--images", "0"]),
        "--images",
    );
    assert_fails_with(
        &run(&["--calibration", s(&dir), "--test", "5"]),
        "--test needs --dataset",
    );
    let bad = tmp.path().join("bad.onnx");
    std::fs::write(&bad, b"\x08\x07garbage").unwrap();
    let out2 = msn(&["quantize", s(&bad), "-o", s(&out), "--calibration", s(&dir)]);
    assert_fails_with(&out2, "bad.onnx");
    assert!(!out.exists(), "nothing written on failure");
}
