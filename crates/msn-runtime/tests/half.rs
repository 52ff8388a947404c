//! Half precision (`--f16`): the shipped Fashion-MNIST model's answers on the shipped images in
//! tract's f16 plan against f32. On this CPU tract may emulate f16 (slowly): the answers are
//! the same arithmetic a Raspberry Pi 5 computes natively.

use msn_runtime::{softmax, Classifier, LoadOptions, Plan};
use std::path::Path;

#[test]
fn half_precision_keeps_the_shipped_models_answers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/fashion-cnn3-msn.folded.onnx");
    let mut images: Vec<_> = std::fs::read_dir(root.join("models/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let run = |half: bool| {
        let options = LoadOptions {
            plan: if half { Plan::Half } else { Plan::Optimized },
            ..LoadOptions::default()
        };
        let clf = Classifier::load(&model, &options).unwrap();
        assert_eq!(clf.model().is_half(), half);
        images
            .iter()
            .map(|p| {
                let x = clf.preprocess().load(p).unwrap();
                softmax(&clf.run_one(&x).unwrap())
            })
            .collect::<Vec<_>>()
    };
    let (f32s, f16s) = (run(false), run(true));
    let mut worst = 0f32;
    for ((a, b), path) in f32s.iter().zip(&f16s).zip(&images) {
        let top = |v: &[f32]| msn_runtime::topk(v, 1)[0].0;
        assert_eq!(top(a), top(b), "{}", path.display());
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst < 5e-3, "f16 probabilities differ by {worst}");
    eprintln!(
        "f16 vs f32 on {} images: same top-1, max |dp| {worst:.1e}",
        images.len()
    );
    // The CLI refuses --f16 where tract has no native f16 (every CPU but aarch64 with FP16).
    if let Err(why) = msn_runtime::half_supported() {
        assert!(why.contains("--f16"), "{why}");
        assert!(!msn_runtime::msn_kernels::cpu::get().fp16());
    }
}
