//! The binaries as a user runs them: real processes, real files, exit codes and messages.

mod common;

use common::{assert_fails_with, ok, s};
use msn_onnx::builder::GraphBuilder;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn foreign_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/foreign/torch_cnn.onnx")
}

fn classify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msn-classify"))
        .args(args)
        .output()
        .expect("msn-classify runs")
}

fn write_png(path: &Path, w: u32, h: u32) {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]));
    img.save(path).unwrap();
}

#[test]
fn classifies_an_image_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    write_png(&a, 40, 36);
    write_png(&b, 32, 32);
    let out = classify(&[
        "--model",
        s(&foreign_model()),
        "--json",
        "--top-k",
        "3",
        "--batch",
        "2",
        s(dir.path()),
    ]);
    ok(&out);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["file"].as_str().unwrap().ends_with("a.png"));
    let top = lines[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-6);
    assert_eq!(
        top[0]["label"].as_str().unwrap(),
        format!("class {}", top[0]["index"])
    );
}

#[test]
fn a_missing_model_path_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    write_png(&img, 32, 32);
    assert_fails_with(
        &classify(&["--model", "/no/such/model.onnx", s(&img)]),
        "/no/such/model.onnx",
    );
}

#[test]
fn corrupt_models_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    write_png(&img, 32, 32);

    let bytes = std::fs::read(foreign_model()).unwrap();
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2 + 1]).unwrap();
    assert_fails_with(
        &classify(&["--model", s(&truncated), s(&img)]),
        "truncated.onnx: not a valid ONNX model",
    );

    let mut state = 12345u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        })
        .collect();
    let random = dir.path().join("random.onnx");
    std::fs::write(&random, noise).unwrap();
    assert_fails_with(&classify(&["--model", s(&random), s(&img)]), "random.onnx");

    let mut b = GraphBuilder::new("cycle");
    b.input("x", &[1, 3, 32, 32]);
    b.node("Relu", &["x", "z"], "y", &[]);
    b.node("Relu", &["y"], "z", &[]);
    b.output("z", &[1, 3, 32, 32]);
    let cyclic = dir.path().join("cycle.onnx");
    msn_onnx::io::save(&b.into_model(17), &cyclic).unwrap();
    assert_fails_with(&classify(&["--model", s(&cyclic), s(&img)]), "cycle");
}

#[test]
fn a_model_whose_input_is_not_an_image_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    write_png(&img, 32, 32);
    let mut b = GraphBuilder::new("vector");
    b.input("x", &[1, 8]);
    b.node("Relu", &["x"], "y", &[]);
    b.output("y", &[1, 8]);
    let model = dir.path().join("vector.onnx");
    msn_onnx::io::save(&b.into_model(17), &model).unwrap();
    assert_fails_with(
        &classify(&["--model", s(&model), s(&img)]),
        "model input is not an image",
    );
}

#[test]
fn bad_images_are_named_and_the_rest_still_classified() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    write_png(&good, 64, 64);
    let png = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "these are not pixels\n").unwrap();

    let out = classify(&[
        "--model",
        s(&foreign_model()),
        "--json",
        s(&truncated),
        s(&text),
        s(&good),
    ]);
    assert_fails_with(&out, "truncated.png: not a readable image");
    assert_fails_with(&out, "notes.jpg: not a readable image");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "the good image is still classified: {stdout}"
    );
    assert!(stdout.contains("good.png"));
}

#[test]
fn a_labels_file_of_the_wrong_length_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    write_png(&img, 32, 32);
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "cat\ndog\n").unwrap();
    let out = classify(&[
        "--model",
        s(&foreign_model()),
        "--labels",
        s(&labels),
        s(&img),
    ]);
    assert_fails_with(&out, "labels.txt: 2 labels, but the model has 10 outputs");
}

#[test]
fn bench_reports_json_with_a_ratio_when_comparing() {
    let m = foreign_model();
    let out = Command::new(env!("CARGO_BIN_EXE_msn"))
        .args([
            "bench",
            s(&m),
            "--compare",
            s(&m),
            "--iters",
            "3",
            "--warmup",
            "1",
            "--batch",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert!(v["threads"].as_u64().unwrap() >= 1);
    for key in [
        "model",
        "batch",
        "load_ms",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "throughput_per_s",
    ] {
        assert!(!models[0][key].is_null(), "{key} missing");
    }
    assert_eq!(models[0]["batch"], 2);
    assert!(v["ratio_p50"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_profile_splits_the_time_by_op_and_node() {
    let m = foreign_model();
    let args = [
        "bench",
        s(&m),
        "--iters",
        "3",
        "--warmup",
        "1",
        "--profile",
        "--json",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_msn"))
        .args(args)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let p = &v["profiles"][0];
    let total = p["total_ms"].as_f64().unwrap();
    let ops = p["ops"].as_array().unwrap();
    // The ops' times add up to the total, their shares to 1, slowest first.
    let sum: f64 = ops.iter().map(|o| o["ms"].as_f64().unwrap()).sum();
    assert!(
        (sum - total).abs() <= 1e-6 * total.max(1.0),
        "{sum} vs {total}"
    );
    let shares: f64 = ops.iter().map(|o| o["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-6, "{shares}");
    let ms: Vec<f64> = ops.iter().map(|o| o["ms"].as_f64().unwrap()).collect();
    assert!(ms.windows(2).all(|w| w[0] >= w[1]), "{ms:?}");
    // The torch CNN's convolutions are in the plan and named after the ONNX nodes.
    let slowest = p["slowest"].as_array().unwrap();
    assert!(!slowest.is_empty());
    assert!(slowest
        .iter()
        .all(|n| !n["node"].as_str().unwrap().is_empty()));
    let text = ok(&Command::new(env!("CARGO_BIN_EXE_msn"))
        .args(&args[..args.len() - 1])
        .output()
        .unwrap());
    assert!(
        text.contains("tract op") && text.contains("slowest nodes"),
        "{text}"
    );
}

/// The cases issue 15 found, as a user meets them: each exits 0 or 2, never panics, and a
/// refused command writes nothing.
#[test]
fn hostile_files_and_flags_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // A 16384x1 strip with a shorter-side resize: classified, the resize bounded by the crop.
    let strip = dir.path().join("strip.png");
    image::GrayImage::from_fn(16_384, 1, |x, _| image::Luma([(x % 251) as u8]))
        .save(&strip)
        .unwrap();
    let out = classify(&["--resize", "32", "--top-k", "1", s(&strip)]);
    ok(&out);

    // A model whose metadata asks for an absurd input: refused before any allocation.
    let mut b = GraphBuilder::new("huge");
    let x = b.input("x", &[-1, 1, -1, -1]);
    let y = b.node("Relu", &[&x], "y", &[]);
    b.output(&y, &[-1, 1, -1, -1]);
    b.metadata("msn.input_shape", "1,1000000000,1000000000");
    let model = dir.path().join("huge.onnx");
    msn_onnx::io::save(&b.into_model(17), &model).unwrap();
    assert_fails_with(
        &classify(&["--model", s(&model), s(&strip)]),
        "msn.input_shape",
    );

    // A Conv with group = 0: msn-fold refuses it and writes nothing.
    let mut b = GraphBuilder::new("group0");
    let x = b.input("x", &[1, 2, 4, 4]);
    let w = b.initializer_f32("w", &ndarray::ArrayD::from_elem(vec![2, 2, 3, 3], 0.1));
    let y = b.node(
        "Conv",
        &[&x, &w],
        "y",
        &[msn_onnx::builder::attr::int("group", 0)],
    );
    b.output(&y, &[1, 2, 2, 2]);
    let model = dir.path().join("group0.onnx");
    msn_onnx::io::save(&b.into_model(17), &model).unwrap();
    let folded = dir.path().join("folded.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_msn-fold"))
        .args([s(&model), "-o", s(&folded)])
        .output()
        .unwrap();
    assert_fails_with(&out, "group 0");
    assert!(!folded.exists());

    // Counts of zero are refused by the argument parser (clap's usage error, exit 2).
    let out = Command::new(env!("CARGO_BIN_EXE_msn"))
        .args(["bench", s(&model), "--iters", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Conv (groups 2, stride 2), ConvTranspose, Flatten, Gemm and MatMul, with counts by hand.
fn info_model() -> msn_onnx::ModelProto {
    use msn_onnx::builder::attr;
    let w = |shape: &[usize]| ndarray::ArrayD::from_elem(shape.to_vec(), 0.01f32);
    let mut b = GraphBuilder::new("g");
    let x = b.input("x", &[1, 4, 10, 10]);
    let (cw, tw) = (
        b.initializer_f32("cw", &w(&[6, 2, 3, 3])),
        b.initializer_f32("tw", &w(&[6, 2, 2, 2])),
    );
    let conv_attrs = [
        attr::int("group", 2),
        attr::ints("strides", &[2, 2]),
        attr::ints("pads", &[1, 1, 1, 1]),
    ];
    let c = b.node("Conv", &[&x, &cw], "c", &conv_attrs);
    let t = b.node(
        "ConvTranspose",
        &[&c, &tw],
        "t",
        &[attr::ints("strides", &[2, 2])],
    );
    let f = b.node("Flatten", &[&t], "f", &[]);
    let gw = b.initializer_f32("gw", &w(&[200, 7]));
    let g = b.node("Gemm", &[&f, &gw], "g", &[]);
    let mw = b.initializer_f32("mw", &w(&[7, 3]));
    let y = b.node("MatMul", &[&g, &mw], "y", &[]);
    b.output(&y, &[1, 3]);
    b.metadata("msn.labels", "a\nb\nc");
    b.into_model(17)
}

#[test]
fn info_counts_parameters_and_multiply_accumulates_per_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.onnx");
    msn_onnx::io::save(&info_model(), &path).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["info", s(&path)];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_msn"))
            .args(&args)
            .output()
            .unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&ok(&run(&["--json"]))).unwrap();
    // Conv: 6x5x5 outputs x (4/2 x 3 x 3) taps; ConvTranspose: 6x5x5 inputs x (2 x 2 x 2);
    // Gemm: 7 outputs x 200; MatMul: 3 outputs x 7.
    let layers: Vec<(String, u64)> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["op"].as_str().unwrap().to_string(),
                l["macs"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("Conv", 2700),
        ("ConvTranspose", 1200),
        ("Gemm", 1400),
        ("MatMul", 21),
    ];
    assert_eq!(layers, want.map(|(o, n)| (o.to_string(), n)).to_vec());
    assert_eq!(v["macs"], 5321);
    assert_eq!(v["parameters"], 108 + 48 + 1400 + 21);
    assert_eq!(v["parameter_bytes"], 4 * (108 + 48 + 1400 + 21));
    assert_eq!(v["ops"]["ConvTranspose"], 1);
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 4, 10, 10]));
    assert_eq!(v["outputs"][0]["name"], "y");
    assert_eq!(v["metadata"]["msn.labels"], "a\nb\nc");
    // The table, and clean refusals.
    assert!(ok(&run(&[])).contains("multiply-accumulates: 5.3 k in 4 layers"));
    assert_fails_with(&run(&["--input-shape", "1,0,10,10"]), "not a dimension");
    assert_fails_with(
        &run(&["--input-shape", "nope=1,4,10,10"]),
        "no input named 'nope'",
    );
    assert_fails_with(&run(&["--input-shape", "1,4,10"]), "cannot run it at");
}

#[test]
fn f16_runs_only_where_tract_computes_half_precision() {
    let image =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/images/0000-ankle-boot.png");
    let out = classify(&["--f16", s(&image)]);
    match msn_runtime::half_supported() {
        // An aarch64 board with FP16: it classifies.
        Ok(()) => assert!(ok(&out).contains("Ankle boot")),
        // Everywhere else: one clear line, exit 2, no panic.
        Err(_) => assert_fails_with(&out, "--f16: "),
    }
}

/// `MSN_CPU` caps the kernels' CPU level: `msn info` says which level is in force, and a
/// value that is not a level of this architecture is refused with exit code 2.
#[test]
fn msn_cpu_caps_the_level_and_bad_values_are_refused() {
    let info = |cpu: &str| {
        Command::new(env!("CARGO_BIN_EXE_msn"))
            .args(["info", s(&foreign_model()), "--json"])
            .env("MSN_CPU", cpu)
            .output()
            .expect("msn runs")
    };
    let v: serde_json::Value = serde_json::from_str(&ok(&info("generic"))).unwrap();
    assert_eq!(v["cpu"]["level"], "generic", "{v}");
    assert!(v["cpu"]["detected"].is_string());
    assert_fails_with(&info("sse9"), "MSN_CPU=\"sse9\": not a level");
    let foreign = if cfg!(target_arch = "x86_64") {
        "neon"
    } else {
        "avx2"
    };
    assert_fails_with(&info(foreign), "level of another architecture");
    // Unset or empty: the CPU's own level.
    let v: serde_json::Value = serde_json::from_str(&ok(&info(""))).unwrap();
    assert_eq!(v["cpu"]["level"], v["cpu"]["detected"]);
}
