//! Every architecture and norm kind: the trainer's eval-mode output and tract's output on the
//! exported ONNX file agree within 1e-5. The exported files, inputs and our outputs are also
//! written to `target/export-check/` for `tests/python/check_export.py` (onnxruntime and
//! `onnx.checker`), which `.ci/run` runs after the tests.

use msn_autograd::{no_grad, Var};
use msn_e2e::{max_abs_diff, repo_root, shared_data};
use msn_export::{export, ExportOptions, InputKind, ModelInfo};
use msn_nn::models::{build, ModelConfig};
use msn_nn::optim::{Adam, Optimizer};
use msn_nn::{Ctx, Module, NormKind, Sequential};
use msn_runtime::{Classifier, LoadOptions};
use msn_train::data::{self, BatchSpec, Split};
use ndarray::Array4;
use rand::SeedableRng;

const NORMS: [NormKind; 4] = [NormKind::None, NormKind::Bn, NormKind::Sn, NormKind::Msn];

/// A batch of real test images when `../shared` is there, else a fixed pseudo-random batch.
fn batch(dataset: &str, shape: [usize; 3], n: usize) -> Array4<f32> {
    let dir = if dataset == "cifar10" {
        "cifar10"
    } else {
        "fashion-mnist"
    };
    if let Some(root) = shared_data(dir) {
        let d = data::load(dataset, &root.join(dir), Split::Test).unwrap();
        let spec = BatchSpec {
            batch: n,
            mean: d.mean.clone(),
            std: d.std.clone(),
            augment: None,
        };
        let idx: Vec<usize> = (0..n).collect();
        return data::make_batch(
            &d,
            &idx,
            &spec,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        )
        .0;
    }
    let [c, h, w] = shape;
    msn_autograd::ops::elementwise::spread(&[n, c, h, w], -1.0, 1.0, 7)
        .into_dimensionality()
        .unwrap()
}

/// A few Adam steps so that weights, running statistics and SN vectors are all non-trivial.
fn train_a_little(model: &Sequential, x: &Array4<f32>) {
    let params = model.parameters();
    let mut opt = Adam::new(0.9, 0.999, 0.0);
    let labels: Vec<usize> = (0..x.shape()[0]).map(|i| i % 10).collect();
    for step in 0..3 {
        let logits = model.forward(&Var::constant(x.clone().into_dyn()), &mut Ctx::train(step));
        logits.cross_entropy(&labels).backward();
        opt.step(&params, 1e-3);
        msn_nn::optim::zero_grad(&params);
    }
}

fn check(arch: &str, dataset: &str, shape: [usize; 3]) {
    let out_dir = repo_root().join("target/export-check");
    std::fs::create_dir_all(&out_dir).unwrap();
    let x = batch(dataset, shape, 8);
    for norm in NORMS {
        let cfg = ModelConfig {
            architecture: arch.into(),
            norm,
            input_shape: shape,
            num_classes: 10,
            width: 50,
            depth: 10,
            latent: 128,
        };
        let model = build(&cfg, 3).unwrap();
        train_a_little(&model, &x);
        let ours =
            no_grad(|| model.forward(&Var::constant(x.clone().into_dyn()), &mut Ctx::eval()));
        let info = ModelInfo {
            architecture: arch.into(),
            norm: norm.to_string(),
            dataset: dataset.into(),
            input_shape: shape,
            input: InputKind::Image {
                scale: 1.0 / 255.0,
                mean: vec![0.5; shape[0]],
                std: vec![0.25; shape[0]],
            },
            labels: (0..10).map(|i| format!("class {i}")).collect(),
            test_accuracy: None,
        };
        let onnx = export(&model, &info, &ExportOptions::default());
        let name = format!("{arch}-{norm}");
        let path = out_dir.join(format!("{name}.onnx"));
        msn_onnx::io::save(&onnx, &path).unwrap();
        let clf = Classifier::load(
            &path,
            &LoadOptions {
                batch: Some(8),
                ..Default::default()
            },
        )
        .unwrap();
        let theirs = clf.run(x.clone()).unwrap();
        let diff = max_abs_diff(ours.value().as_slice().unwrap(), theirs.as_slice().unwrap());
        let scale = ours.value().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        println!("{name}: max |trainer - tract| = {diff:e} (logits up to {scale:.2})");
        // The bound, 1e-5 on logits of typical size, taken relative to the logits' size
        // beyond 1, as the onnxruntime check (tests/python/check_export.py) takes it. At f32,
        // tract's own rounding is of that order on logits near 5: on cnn3-sn (logits up to
        // 4.87) tract differs from the trainer by 1.0e-5 while onnxruntime differs from the
        // trainer by 1.4e-6.
        assert!(
            diff < 1e-5 * scale.max(1.0),
            "{name}: {diff} for logits up to {scale}"
        );

        let raw = |a: &[f32]| a.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        for n in [name.clone(), format!("{name}.folded")] {
            std::fs::write(
                out_dir.join(format!("{n}.input.f32")),
                raw(x.as_slice().unwrap()),
            )
            .unwrap();
            std::fs::write(
                out_dir.join(format!("{n}.output.f32")),
                raw(ours.value().as_slice().unwrap()),
            )
            .unwrap();
        }

        // Folding leaves plain Conv/Gemm layers and the same outputs.
        let mut folded = onnx.clone();
        let report = msn_fold::fold(&mut folded);
        let banned = [
            "BatchNormalization",
            "Sub",
            "Div",
            "Mul",
            "Add",
            "MatMul",
            "Reshape",
        ];
        let left: Vec<&String> = report
            .ops_after
            .keys()
            .filter(|op| banned.contains(&op.as_str()))
            .collect();
        assert!(left.is_empty(), "{name}: {left:?} left after folding");
        let err = msn_runtime::verify::models(&onnx, &folded, 3, 1, &[]).unwrap();
        println!(
            "{name}: folded {} -> {} nodes, max relative error {err:e}",
            report.nodes_before, report.nodes_after
        );
        assert!(err < 1e-5, "{name}: folded model differs by {err}");
        msn_onnx::io::save(&folded, out_dir.join(format!("{name}.folded.onnx"))).unwrap();
    }
}

#[test]
fn cnn3_exports_agree_with_the_trainer() {
    check("cnn3", "fashion-mnist", [1, 28, 28]);
}

#[test]
fn vgg7_exports_agree_with_the_trainer() {
    check("vgg7", "cifar10", [3, 32, 32]);
}

#[test]
fn densenet_exports_agree_with_the_trainer() {
    check("densenet-bc", "cifar10", [3, 32, 32]);
}

/// A few Adam steps of the generator towards bright images, so BN statistics are real.
fn train_generator_a_little(g: &Sequential, z: &Var) {
    let params = g.parameters();
    let mut opt = Adam::new(0.5, 0.999, 0.0);
    for step in 0..3 {
        let y = g.forward(z, &mut Ctx::train(step));
        y.add_scalar(-0.5).square().mean().backward();
        opt.step(&params, 2e-4);
        msn_nn::optim::zero_grad(&params);
    }
}

#[test]
fn dcgan_generator_and_discriminator_exports_agree_with_the_trainer() {
    let out_dir = repo_root().join("target/export-check");
    std::fs::create_dir_all(&out_dir).unwrap();
    for (dataset, shape) in [("fashion-mnist", [1, 28, 28]), ("cifar10", [3, 32, 32])] {
        let size = shape[1];
        let cfg = |arch: &str, norm| ModelConfig {
            architecture: arch.into(),
            norm,
            input_shape: shape,
            num_classes: 1,
            width: 100,
            depth: 16,
            latent: 32,
        };
        let g = build(&cfg("dcgan-g", NormKind::Bn), 4).unwrap();
        let z = Var::constant(msn_autograd::ops::elementwise::spread(
            &[8, 32],
            -1.0,
            1.0,
            9,
        ));
        train_generator_a_little(&g, &z);
        let ours = no_grad(|| g.forward(&z, &mut Ctx::eval()));
        let info = ModelInfo {
            architecture: "dcgan-g".into(),
            norm: "bn".into(),
            dataset: dataset.into(),
            input_shape: shape,
            input: InputKind::Latent(32),
            labels: vec![],
            test_accuracy: None,
        };
        let onnx = export(&g, &info, &ExportOptions::default());
        let theirs = msn_e2e::run_tract(
            &msn_onnx::io::to_bytes(&onnx),
            &[8, 32],
            z.value().iter().copied().collect(),
        );
        let diff = max_abs_diff(ours.value().as_slice().unwrap(), &theirs);
        println!("dcgan-g {size}: max |trainer - tract| = {diff:e}");
        assert!(diff < 1e-5, "generator {size}: {diff}");
        let mut folded = onnx.clone();
        let report = msn_fold::fold(&mut folded);
        assert!(
            !report.ops_after.contains_key("BatchNormalization"),
            "{:?}",
            report.ops_after
        );
        let err = msn_runtime::verify::models(&onnx, &folded, 3, 1, &[]).unwrap();
        println!(
            "dcgan-g {size}: folded {} -> {} nodes, max relative error {err:e}",
            report.nodes_before, report.nodes_after
        );
        assert!(err < 1e-5);
        let raw = |a: &[f32]| a.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        for (n, m) in [
            (format!("dcgan-g-{size}"), &onnx),
            (format!("dcgan-g-{size}.folded"), &folded),
        ] {
            msn_onnx::io::save(m, out_dir.join(format!("{n}.onnx"))).unwrap();
            std::fs::write(
                out_dir.join(format!("{n}.input.f32")),
                raw(&z.value().iter().copied().collect::<Vec<_>>()),
            )
            .unwrap();
            std::fs::write(
                out_dir.join(format!("{n}.output.f32")),
                raw(ours.value().as_slice().unwrap()),
            )
            .unwrap();
        }

        // Discriminators with every norm, on the generator's images.
        let images: Array4<f32> = ours.value().clone().into_dimensionality().unwrap();
        for norm in NORMS {
            let d = build(&cfg("dcgan-d", norm), 5).unwrap();
            let params = d.parameters();
            let mut opt = Adam::new(0.5, 0.999, 0.0);
            let targets = ndarray::Array::ones(ndarray::IxDyn(&[8, 1]));
            for step in 0..3 {
                d.forward(
                    &Var::constant(images.clone().into_dyn()),
                    &mut Ctx::train(step),
                )
                .bce_with_logits(&targets)
                .backward();
                opt.step(&params, 2e-4);
                msn_nn::optim::zero_grad(&params);
            }
            let logits =
                no_grad(|| d.forward(&Var::constant(images.clone().into_dyn()), &mut Ctx::eval()));
            let info = ModelInfo {
                architecture: "dcgan-d".into(),
                norm: norm.to_string(),
                dataset: dataset.into(),
                input_shape: shape,
                input: InputKind::Image {
                    scale: 2.0 / 255.0,
                    mean: vec![1.0; shape[0]],
                    std: vec![1.0; shape[0]],
                },
                labels: vec!["real".into()],
                test_accuracy: None,
            };
            let onnx = export(&d, &info, &ExportOptions::default());
            let theirs = msn_e2e::run_tract(
                &msn_onnx::io::to_bytes(&onnx),
                &[8, shape[0], size, size],
                images.iter().copied().collect(),
            );
            let diff = max_abs_diff(logits.value().as_slice().unwrap(), &theirs);
            println!("dcgan-d-{norm} {size}: max |trainer - tract| = {diff:e}");
            assert!(diff < 1e-5, "discriminator {norm} {size}: {diff}");
            let mut folded = onnx.clone();
            msn_fold::fold(&mut folded);
            let err = msn_runtime::verify::models(&onnx, &folded, 3, 1, &[]).unwrap();
            assert!(err < 1e-5, "discriminator {norm} {size} folded: {err}");
            let name = format!("dcgan-d-{norm}-{size}");
            for (n, m) in [(name.clone(), &onnx), (format!("{name}.folded"), &folded)] {
                msn_onnx::io::save(m, out_dir.join(format!("{n}.onnx"))).unwrap();
                std::fs::write(
                    out_dir.join(format!("{n}.input.f32")),
                    raw(&images.iter().copied().collect::<Vec<_>>()),
                )
                .unwrap();
                std::fs::write(
                    out_dir.join(format!("{n}.output.f32")),
                    raw(logits.value().as_slice().unwrap()),
                )
                .unwrap();
            }
        }
    }
}
