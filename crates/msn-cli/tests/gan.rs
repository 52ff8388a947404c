//! `msn train-gan`, `msn-export` of its networks, `msn generate` and `msn gan-score`, as a user
//! runs them: a short run (a few hundred steps) on an MNIST subset, or on a small synthetic
//! image folder when ../shared/data is absent.

use msn_runtime::gan::Generator;
use std::io::Write;
mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// 28x28 gray images: a bright vertical bar or a bright square at a random place.
fn synthetic_folder(root: &Path) {
    let mut state = 11u32;
    let mut next = move |n: u32| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 16) % n
    };
    for (split, n) in [("train", 1600), ("test", 50)] {
        for class in ["bar", "square"] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let (x0, y0) = (4 + next(14), 4 + next(14));
                let img = image::GrayImage::from_fn(28, 28, |x, y| {
                    let on = if class == "bar" {
                        x >= x0 && x < x0 + 3
                    } else {
                        x >= x0 && x < x0 + 8 && y >= y0 && y < y0 + 8
                    };
                    image::Luma([if on { 230 } else { 10 }])
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

/// (`--dataset`, `--data-dir`) for the short runs: MNIST when ../shared/data has it (and
/// `MSN_TEST_SYNTHETIC` is not set).
fn data(tmp: &Path) -> (String, PathBuf) {
    let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    let present = mnist.join("train-images-idx3-ubyte.gz").exists()
        || mnist.join("train-images-idx3-ubyte").exists();
    // MSN_TEST_SYNTHETIC=1 takes the path that machines without ../shared take.
    if present && std::env::var_os("MSN_TEST_SYNTHETIC").is_none() {
        ("mnist".into(), mnist)
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "../shared/data/mnist is absent: using a synthetic image folder instead"
        );
        let dir = tmp.join("synthetic");
        synthetic_folder(&dir);
        ("folder".into(), dir)
    }
}

fn gan_args<'a>(
    dataset: &'a str,
    dir: &'a str,
    norm: &'a str,
    epochs: &'a str,
    limit: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    vec![
        "train-gan",
        "--dataset",
        dataset,
        "--data-dir",
        dir,
        "--d-norm",
        norm,
        "--epochs",
        epochs,
        "--batch",
        "32",
        "--train-limit",
        limit,
        "--width",
        "25",
        "--latent",
        "32",
        "--seed",
        "3",
        "--out",
        out,
    ]
}

#[test]
fn a_short_gan_run_keeps_finite_losses_and_its_discriminator_leaves_chance() {
    let tmp = tempfile::tempdir().unwrap();
    let (dataset, dir) = data(tmp.path());
    let run = tmp.path().join("run");
    // 3 epochs of 100 steps.
    ok(&msn(&gan_args(
        &dataset,
        s(&dir),
        "msn",
        "3",
        "3200",
        s(&run),
    )));
    let m = metrics(&run);
    assert_eq!(m.len(), 3);
    for e in &m {
        for key in ["d_loss", "g_loss", "d_real", "d_fake", "d_acc"] {
            assert!(e[key].as_f64().unwrap().is_finite(), "{key} in {e}");
        }
        assert_eq!(e["d_steps"], 100);
        assert_eq!(e["g_steps"], 100);
    }
    let last = &m[2];
    println!("after 300 steps: {last}");
    let acc = last["d_acc"].as_f64().unwrap();
    assert!(
        acc > 0.55,
        "the discriminator stays at chance: accuracy {acc}"
    );
    assert!(last["d_real"].as_f64().unwrap() > last["d_fake"].as_f64().unwrap());
    // One grid per epoch, 8 x 8 images of 28 pixels with 2-pixel gaps.
    for e in 1..=3 {
        let grid = image::open(run.join(format!("samples/epoch-{e:03}.png"))).unwrap();
        assert_eq!((grid.width(), grid.height()), (8 * 30 + 2, 8 * 30 + 2));
    }
    assert!(run.join("samples.png").exists());

    // The generator and discriminator export; the generator in tract matches the trainer in
    // eval mode, before and after folding its BatchNorms into the ConvTransposes.
    let (cfg, g, _) = msn_train::gan::load(&run).unwrap();
    let z = msn_train::gan::grid_latents(&cfg);
    let want = msn_train::gan::generate(&g, &z);
    let exported = msn_export::export_gan_run(
        &run,
        msn_export::GanPart::Generator,
        &msn_export::ExportOptions::default(),
    )
    .unwrap();
    let mut folded = exported.clone();
    let report = msn_fold::fold(&mut folded);
    assert!(
        !msn_onnx::graph::op_histogram(folded.graph.as_ref().unwrap())
            .contains_key("BatchNormalization")
    );
    let z2: ndarray::Array2<f32> = z.into_dimensionality().unwrap();
    for (what, model) in [("exported", &exported), ("folded", &folded)] {
        let bytes = msn_onnx::io::to_bytes(model);
        let got = Generator::from_bytes(bytes.clone(), Path::new(what), 16)
            .unwrap()
            .run(z2.view())
            .unwrap();
        let diff = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        println!(
            "generator {what} ({} -> {} nodes): max |tract - trainer| = {diff:e}",
            report.nodes_before, report.nodes_after
        );
        assert!(diff < 1e-5, "{what}: {diff}");
    }

    let g_onnx = tmp.path().join("G.onnx");
    let d_onnx = tmp.path().join("D.onnx");
    ok(&msn(&["export", s(&run), "-o", s(&g_onnx)]));
    ok(&msn(&[
        "export",
        s(&run),
        "--discriminator",
        "-o",
        s(&d_onnx),
    ]));
    let grid = tmp.path().join("grid.png");
    ok(&msn(&[
        "generate",
        "--model",
        s(&g_onnx),
        "--n",
        "10",
        "--seed",
        "4",
        "-o",
        s(&grid),
    ]));
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (4 * 30 + 2, 3 * 30 + 2));

    if dataset == "mnist" {
        let out = ok(&msn(&["gan-score", s(&run), "--n", "500", "--json"]));
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        println!("{v}");
        let score = v["classifier_score"].as_f64().unwrap();
        let fd = v["frechet_distance"].as_f64().unwrap();
        let real_fd = v["real_test"]["frechet_distance_to_train"]
            .as_f64()
            .unwrap();
        assert!((1.0..=10.0).contains(&score), "{score}");
        assert!(v["real_test"]["classifier_score"].as_f64().unwrap() > 8.0);
        assert!(fd > real_fd, "generated {fd} vs real {real_fd}");
    }
}

#[test]
fn a_gan_run_killed_during_epoch_2_resumes_to_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (dataset, dir) = data(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let args = |out| gan_args(&dataset, s(&dir), "sn", "2", "1600", out);
    ok(&msn(&args(s(&a))));
    let uninterrupted = metrics(&a);
    assert_eq!(uninterrupted.len(), 2);

    kill_9(train_until(&args(s(&b)), &b, 1));
    assert_eq!(metrics(&b).len(), 1, "the kill must land during epoch 2");
    ok(&msn(&["train-gan", "--resume", s(&b)]));
    assert_eq!(comparable(metrics(&b)), comparable(uninterrupted.clone()));
    assert_eq!(
        std::fs::read(a.join("samples.png")).unwrap(),
        std::fs::read(b.join("samples.png")).unwrap()
    );

    // Ctrl-C in the middle of epoch 2: the same metrics and samples after resuming.
    let c = tmp.path().join("c");
    let child = train_until(&args(s(&c)), &c, 1);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let (epoch, step) = interrupt(child);
    assert!(epoch == 2 && step > 0, "Ctrl-C must land mid-epoch 2");
    ok(&msn(&["train-gan", "--resume", s(&c)]));
    assert_eq!(comparable(metrics(&c)), comparable(uninterrupted));
    assert_eq!(
        std::fs::read(a.join("samples.png")).unwrap(),
        std::fs::read(c.join("samples.png")).unwrap()
    );
}

#[test]
fn gan_commands_reject_bad_input_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    // A classifier is not a generator.
    let clf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fashion-cnn3-msn.onnx");
    let out = msn(&[
        "generate",
        "--model",
        s(&clf),
        "-o",
        s(&tmp.path().join("x.png")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fashion-cnn3-msn.onnx") && err.contains("not a generator"),
        "{err}"
    );
    assert!(!tmp.path().join("x.png").exists());
    // A missing data set names the files it needs.
    let out = msn(&[
        "train-gan",
        "--dataset",
        "mnist",
        "--data-dir",
        s(tmp.path()),
        "--out",
        s(&tmp.path().join("run")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    // --discriminator on a classifier run.
    let out = msn(&[
        "export",
        s(tmp.path()),
        "--discriminator",
        "-o",
        s(&tmp.path().join("d.onnx")),
    ]);
    assert_eq!(out.status.code(), Some(2));
}
