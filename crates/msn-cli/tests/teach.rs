//! `msn teach` end to end on the shipped Fashion-MNIST model as the backbone and the shipped
//! images sorted into three classes: the written model classifies with msn-classify and no
//! flags; bad folders and backbones fail cleanly; unreadable images are skipped and counted.

mod common;
use common::{assert_fails_with, msn, ok, s, teach_args};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn backbone() -> PathBuf {
    root().join("models/fashion-cnn3-msn.folded.onnx")
}

/// The shipped images by class: tops, shoes, other.
const CLASSES: [(&str, &[&str]); 3] = [
    (
        "tops",
        &[
            "0001-pullover",
            "0004-shirt",
            "0006-coat",
            "0013-dress",
            "0019-t-shirt",
        ],
    ),
    ("shoes", &["0000-ankle-boot", "0008-sandal", "0009-sneaker"]),
    ("other", &["0002-trouser", "0018-bag"]),
];

/// `dir/train/<class>/<image>.png` from the shipped images.
fn photo_folder(dir: &Path) {
    for (class, files) in CLASSES {
        let d = dir.join("train").join(class);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::copy(
                root().join(format!("models/images/{f}.png")),
                d.join(format!("{f}.png")),
            )
            .unwrap();
        }
    }
}

fn teach(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = teach_args(&backbone(), data, out, 25);
    args.extend(extra.iter().map(|a| a.to_string()));
    msn(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_taught_model_classifies_its_classes_with_no_flags() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("photos");
    photo_folder(&data);
    for (name, extra) in [
        ("linear", &[][..]),
        ("msn", &["--hidden", "16"][..]),
        (
            "bn",
            &[
                "--hidden",
                "16",
                "--norm",
                "bn",
                "--augment",
                "--views",
                "3",
            ][..],
        ),
    ] {
        let out = t.path().join(format!("{name}.onnx"));
        let summary: Value = serde_json::from_str(&ok(&teach(&data, &out, extra))).unwrap();
        assert_eq!(
            summary["classes"],
            serde_json::json!(["other", "shoes", "tops"])
        );
        assert_eq!(summary["train_images"], 10, "{summary}");
        assert_eq!(summary["feature"], "9.output", "the last Gemm's input");
        assert_eq!(summary["feature_size"], 32 * 16 * 16);
        assert!(
            summary["verify_max_abs_diff"].as_f64().unwrap() < 1e-4,
            "{summary}"
        );
        let rows = summary["epochs"].as_array().unwrap();
        assert_eq!(rows.len(), 25);
        let last = &rows[24];
        assert!(
            last["train_loss"].as_f64() < rows[0]["train_loss"].as_f64(),
            "{name}: the loss did not fall: {summary}"
        );

        // Folded: plain Gemms, no SN, MSN or BN ops left in the head.
        let info: Value = serde_json::from_str(&ok(&msn(&["info", s(&out), "--json"]))).unwrap();
        let ops = info["ops"].as_object().unwrap();
        for op in ["Div", "Sub", "BatchNormalization", "MatMul"] {
            assert!(!ops.contains_key(op), "{name}: {op} left: {ops:?}");
        }
        assert_eq!(info["metadata"]["msn.labels"], "other\nshoes\ntops");

        // msn-classify with the model alone: labels and preprocessing from its metadata.
        let classify = Command::new(env!("CARGO_BIN_EXE_msn-classify"))
            .args(["--model", s(&out), "--json", "--top-k", "1"])
            .args(CLASSES.map(|(c, _)| data.join("train").join(c)))
            .output()
            .unwrap();
        let lines = ok(&classify);
        let mut right = 0;
        for line in lines.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let file = v["file"].as_str().unwrap();
            let class = Path::new(file).parent().unwrap().file_name().unwrap();
            right += (v["top"][0]["label"] == class.to_str().unwrap()) as usize;
        }
        assert_eq!(lines.lines().count(), 10);
        assert!(
            right >= 9,
            "{name}: {right}/10 training images right:\n{lines}"
        );
    }
}

#[test]
fn unreadable_images_are_skipped_and_counted() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("photos");
    photo_folder(&data);
    std::fs::write(data.join("train/shoes/broken.png"), b"not a png").unwrap();
    let out = t.path().join("m.onnx");
    let o = teach(&data, &out, &[]);
    let summary: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(summary["train_images"], 10);
    assert_eq!(summary["skipped"].as_array().unwrap().len(), 1, "{summary}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("warning: skipped") && stderr.contains("broken.png"),
        "{stderr}"
    );
    assert!(out.exists());
}

#[test]
fn bad_folders_and_backbones_fail_cleanly_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("photos");
    let out = t.path().join("m.onnx");

    assert_fails_with(&teach(&data, &out, &[]), "not a folder");
    std::fs::create_dir_all(data.join("train/only")).unwrap();
    std::fs::copy(
        root().join("models/images/0002-trouser.png"),
        data.join("train/only/a.png"),
    )
    .unwrap();
    assert_fails_with(&teach(&data, &out, &[]), "only one class ('only')");
    std::fs::create_dir_all(data.join("train/empty")).unwrap();
    assert_fails_with(&teach(&data, &out, &[]), "has no images");
    // A class whose every image is unreadable.
    std::fs::write(data.join("train/empty/x.png"), b"garbage").unwrap();
    assert_fails_with(
        &teach(&data, &out, &[]),
        "no readable image in this class folder",
    );
    std::fs::remove_dir_all(data.join("train/empty")).unwrap();
    photo_folder(&data);
    std::fs::create_dir_all(data.join("test/unknown")).unwrap();
    std::fs::copy(
        root().join("models/images/0002-trouser.png"),
        data.join("test/unknown/a.png"),
    )
    .unwrap();
    assert_fails_with(
        &teach(&data, &out, &[]),
        "'unknown' is not a class of train/",
    );
    std::fs::remove_dir_all(data.join("test")).unwrap();

    assert_fails_with(
        &teach(&data, &out, &["--feature", "no-such-value"]),
        "no node computes a value of that name",
    );
    // A backbone with no Gemm or MatMul: its features must be named.
    let pool_only = t.path().join("pool.onnx");
    let mut b = msn_onnx::builder::GraphBuilder::new("pool");
    b.input("x", &[1, 1, 28, 28]);
    b.node("GlobalAveragePool", &["x"], "pooled", &[]);
    b.output("pooled", &[1, 1, 1, 1]);
    msn_onnx::io::save(&b.into_model(13), &pool_only).unwrap();
    let o = msn(&[
        "teach",
        "--backbone",
        s(&pool_only),
        "--data",
        s(&data),
        "-o",
        s(&out),
        "--crop",
        "28",
        "--gray",
    ]);
    assert_fails_with(
        &o,
        "comes from a GlobalAveragePool node, not a Gemm or MatMul",
    );
    assert_fails_with(&o, "--feature");
    assert!(!out.exists(), "nothing is written on failure");
}
