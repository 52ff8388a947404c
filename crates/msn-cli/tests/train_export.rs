//! Training, resuming and exporting as a user does it, on a small image-folder data set made
//! here, plus the built-in default model on the shipped test images.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Two classes of 16x16 gray images: bright on the left or on the right, with noise.
fn make_folder_dataset(root: &Path, train_per_class: usize) {
    let mut state = 7u32;
    let mut noise = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 26) as u8
    };
    for (split, n) in [("train", train_per_class), ("test", 16)] {
        for (class, left) in [("left", true), ("right", false)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::GrayImage::from_fn(16, 16, |x, _| {
                    let bright = (x < 8) == left;
                    image::Luma([if bright { 180 } else { 40 } + noise()])
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        "cnn3",
        "--norm",
        "msn",
        "--dataset",
        "folder",
        "--data-dir",
        data,
        "--epochs",
        "3",
        "--batch",
        "16",
        "--seed",
        "5",
        "--out",
        out,
    ]
}

#[test]
fn a_run_killed_during_epoch_3_resumes_to_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_folder_dataset(&data, 256);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

    ok(&msn(&train_args(s(&data), s(&a))));
    let uninterrupted = metrics(&a);
    assert_eq!(uninterrupted.len(), 3);
    assert!(
        uninterrupted[2]["test_acc"].as_f64().unwrap() > 0.9,
        "{:?}",
        uninterrupted[2]
    );

    kill_9(train_until(&train_args(s(&data), s(&b)), &b, 2));
    assert_eq!(metrics(&b).len(), 2, "the kill must land during epoch 3");
    ok(&msn(&["train", "--resume", s(&b)]));
    assert_eq!(comparable(metrics(&b)), comparable(uninterrupted.clone()));

    // Ctrl-C in the middle of epoch 2: a checkpoint with the partial sums, then the same
    // metrics after resuming.
    let c = tmp.path().join("c");
    let child = train_until(&train_args(s(&data), s(&c)), &c, 1);
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert!(interrupt(child).1 > 0, "Ctrl-C must land mid-epoch");
    ok(&msn(&["train", "--resume", s(&c)]));
    assert_eq!(comparable(metrics(&c)), comparable(uninterrupted));
}

fn trained_run(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    make_folder_dataset(&data, 32);
    let run = tmp.join("run");
    let mut args = train_args(s(&data), s(&run));
    args[10] = "1"; // one epoch
    let out = msn(&args);
    ok(&out);
    run
}

fn edit_config(run: &Path, f: impl FnOnce(&mut Value)) {
    let path = run.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn export_writes_a_classifier_and_rejects_broken_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let model = tmp.path().join("m.onnx");
    let out = msn(&["export", s(&run), "-o", s(&model), "--folded"]);
    ok(&out);
    let img = tmp.path().join("data/test/left/000.png");
    let out = Command::new(env!("CARGO_BIN_EXE_msn-classify"))
        .args(["--model", s(&model), "--json", s(&img)])
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(["left", "right"].contains(&line["top"][0]["label"].as_str().unwrap()));

    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 3] = [
        ("checkpoint version 99 is not supported", |v| {
            v["version"] = 99.into()
        }),
        ("is missing", |v| v["model"]["norm"] = "bn".into()),
        ("but the config implies", |v| {
            v["model"]["num_classes"] = 3.into()
        }),
    ];
    for (expected, edit) in cases {
        let broken = tmp.path().join("broken");
        let _ = std::fs::remove_dir_all(&broken);
        std::fs::create_dir_all(&broken).unwrap();
        for f in ["config.json", "checkpoint.safetensors", "metrics.jsonl"] {
            std::fs::copy(run.join(f), broken.join(f)).unwrap();
        }
        edit_config(&broken, edit);
        let target = tmp.path().join("never.onnx");
        let out = msn(&["export", s(&broken), "-o", s(&target)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected '{expected}' in {stderr}"
        );
        assert!(!target.exists(), "no output file after a failed export");
    }
}

#[test]
fn the_built_in_model_classifies_the_shipped_images() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/images");
    let out = Command::new(env!("CARGO_BIN_EXE_msn-classify"))
        .args(["--json", "--top-k", "1", s(&dir)])
        .output()
        .unwrap();
    ok(&out);
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    // File names are <index>-<class>.png; labels are Fashion-MNIST's class names.
    let short = |label: &str| {
        label
            .to_lowercase()
            .replace("t-shirt/top", "t-shirt")
            .replace(' ', "-")
    };
    let correct = lines
        .iter()
        .filter(|l| {
            l["file"].as_str().unwrap().ends_with(&format!(
                "-{}.png",
                short(l["top"][0]["label"].as_str().unwrap())
            ))
        })
        .count();
    assert!(correct >= 8, "{correct} of 10 correct: {lines:?}");
}

#[test]
fn experiment_trains_each_norm_then_writes_the_table_and_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_folder_dataset(&data, 16);
    let exp = tmp.path().join("exp");
    let args = [
        "experiment",
        "--norms",
        "bn,msn",
        "--model",
        "cnn3",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--epochs",
        "2",
        "--batch",
        "16",
        "--out",
        s(&exp),
    ];
    let out = msn(&args);
    ok(&out);
    let results = std::fs::read_to_string(exp.join("RESULTS.md")).unwrap();
    // One table row per norm, with the parameter counts of the two models.
    let row = |norm: &str| {
        results
            .lines()
            .find(|l| l.starts_with(&format!("| cnn3 | {norm} | folder | 2 |")))
            .unwrap_or_else(|| panic!("no {norm} row in\n{results}"))
            .to_string()
    };
    for norm in ["bn", "msn"] {
        assert_eq!(metrics(&exp.join(norm)).len(), 2);
        let line = row(norm);
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let best: f64 = cells[5].trim_end_matches('%').parse().unwrap();
        let last: f64 = cells[6].trim_end_matches('%').parse().unwrap();
        assert!(best >= last && (0.0..=100.0).contains(&best), "{cells:?}");
    }
    assert!(results.contains("![accuracy.png](accuracy.png)"));
    for f in ["accuracy.png", "drift.png", "sparsity.png"] {
        let img = image::open(exp.join(f)).unwrap();
        assert!(img.width() > 400 && img.height() > 300, "{f}");
        // Something was drawn: not a blank page.
        let gray = img.to_luma8();
        let dark = gray.pixels().filter(|p| p.0[0] < 128).count();
        assert!(dark > 1000, "{f}: {dark} dark pixels");
    }
    // A second call reuses the finished runs: same metrics, no retraining.
    let before = metrics(&exp.join("msn"));
    let out = msn(&args);
    assert!(out.status.success());
    assert_eq!(metrics(&exp.join("msn")), before);

    // `msn plot` on the runs, and its error on a folder that is not a run.
    let plots = tmp.path().join("plots");
    let (bn, msn_run) = (exp.join("bn"), exp.join("msn"));
    let out = msn(&["plot", s(&bn), s(&msn_run), "-o", s(&plots), "--table"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("| cnn3 | msn | folder | 2 |"));
    assert!(plots.join("sparsity.png").exists());
    let out = msn(&["plot", s(&data), "-o", s(&plots)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

#[test]
fn zero_counts_are_refused_by_the_argument_parser() {
    for flag in ["--batch", "--epochs", "--train-limit"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_msn"))
            .args(["train", flag, "0", "--out", "/nonexistent/run"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains("must be at least 1"), "{flag}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn experiment_with_seeds_reports_the_mean_and_spread_per_norm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_folder_dataset(&data, 16);
    let exp = tmp.path().join("exp");
    let out = msn(&[
        "experiment",
        "--norms",
        "none,msn",
        "--seeds",
        "1,2",
        "--model",
        "cnn3",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--epochs",
        "1",
        "--batch",
        "16",
        "--out",
        s(&exp),
    ]);
    ok(&out);
    let results = std::fs::read_to_string(exp.join("RESULTS.md")).unwrap();
    for norm in ["none", "msn"] {
        let accs: Vec<f64> = ["seed1", "seed2"]
            .iter()
            .map(|seed| {
                let m = metrics(&exp.join(norm).join(seed));
                assert_eq!(m.len(), 1, "{norm} {seed}");
                100.0 * m[0]["test_acc"].as_f64().unwrap()
            })
            .collect();
        let row = results
            .lines()
            .find(|l| l.starts_with(&format!("| cnn3 | {norm} | folder | 1 | 2 |")))
            .unwrap_or_else(|| panic!("no {norm} seeds row in\n{results}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (mean, std) = cells[6].split_once(" ± ").unwrap();
        let mean: f64 = mean.trim_end_matches('%').parse().unwrap();
        let std: f64 = std.parse().unwrap();
        let want_mean = (accs[0] + accs[1]) / 2.0;
        let want_std = (accs[0] - accs[1]).abs() / 2f64.sqrt();
        assert!((mean - want_mean).abs() < 0.006, "{row} vs {accs:?}");
        assert!((std - want_std).abs() < 0.006, "{row} vs {accs:?}");
    }
    // The seeds differ: the two runs of a norm are not copies.
    let first = metrics(&exp.join("msn/seed1"));
    let second = metrics(&exp.join("msn/seed2"));
    assert_ne!(first[0]["train_loss"], second[0]["train_loss"]);
}

#[test]
fn ablation_flags_are_saved_and_a_fixed_data_initialised_scale_stays_put() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_folder_dataset(&data, 32);
    let run = tmp.path().join("run");
    let mut args = train_args(s(&data), s(&run));
    args[10] = "2";
    // No --msn-init: the data init is the default.
    args.extend([
        "--msn-scale",
        "fixed",
        "--sn-iterations",
        "2",
        "--norm-momentum",
        "0.05",
        "--warmup-steps",
        "3",
    ]);
    ok(&msn(&args));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let t = &config["train"];
    assert_eq!(t["msn_init"], "data");
    assert_eq!(t["msn_scale"], "fixed");
    assert_eq!(t["sn_iterations"], 2);
    assert_eq!(t["warmup_steps"], 3);
    assert!((t["norm_momentum"].as_f64().unwrap() - 0.05).abs() < 1e-6);
    let m = metrics(&run);
    let g = |i: usize| m[i]["msn_scale_mean"].as_f64().unwrap();
    // Initialised from the data (not 1) and never trained.
    assert!((g(0) - 1.0).abs() > 0.05, "{}", g(0));
    assert_eq!(g(0), g(1));
    assert!(m[0]["grad_norm"].as_f64().unwrap() > 0.0);

    // A learned scale from 1 (the paper's init, asked for) moves.
    let learned = tmp.path().join("learned");
    let mut args = train_args(s(&data), s(&learned));
    args[10] = "2";
    args.extend(["--msn-init", "ones"]);
    ok(&msn(&args));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(learned.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["train"]["msn_init"], "ones");
    let m = metrics(&learned);
    assert_ne!(m[0]["msn_scale_mean"], m[1]["msn_scale_mean"]);

    // A hand-edited config is checked on resume.
    std::fs::remove_file(learned.join("metrics.jsonl")).ok();
    edit_config(&learned, |v| v["train"]["msn_init"] = "random".into());
    assert_fails_with(
        &msn(&["train", "--resume", s(&learned)]),
        "msn_init 'random'",
    );
    for (flag, bad) in [
        ("--norm-momentum", "0"),
        ("--sn-iterations", "0"),
        ("--msn-scale", "x"),
    ] {
        let mut args = train_args(s(&data), "unused");
        args.extend([flag, bad]);
        assert_fails_with(&msn(&args), flag);
    }
}
