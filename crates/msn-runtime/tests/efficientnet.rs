//! EfficientNet-Lite0 from `../shared/data`: a real ImageNet model exported by PyTorch.
//! Skips with a message when the shared data is absent.

use msn_onnx::meta::Resize;
use msn_runtime::{softmax, topk, Classifier, LoadOptions, PreprocessOverrides};
use std::io::Write;
use std::path::{Path, PathBuf};

fn shared() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir
        .join("efficientnet-lite0/efficientnet-lite0.onnx")
        .exists()
    {
        Some(dir)
    } else {
        // Straight to stderr, which the test harness does not capture: a skip shows in
        // every run's output, not only under --nocapture.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: ../shared/data/efficientnet-lite0 is absent"
        );
        None
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The preprocessing that `../shared/data/README.md` gives for this model.
fn options(data: &Path) -> LoadOptions {
    LoadOptions {
        batch: None,
        preprocess: PreprocessOverrides {
            resize: Some(256),
            crop: Some(224),
            scale: Some(1.0),
            mean: Some(vec![127.0]),
            std: Some(vec![128.0]),
            gray: false,
        },
        labels: Some(data.join("efficientnet-lite0/labels.txt")),
        ..LoadOptions::default()
    }
}

/// EfficientNet-Lite0 with its preprocessing and labels.
fn efficientnet(data: &Path) -> Classifier {
    let model = data.join("efficientnet-lite0/efficientnet-lite0.onnx");
    Classifier::load(model, &options(data)).unwrap()
}

#[test]
fn photos_are_classified_as_cat_and_espresso() {
    let Some(data) = shared() else { return };
    let clf = efficientnet(&data);
    assert_eq!(clf.preprocess().resize, Resize::ShorterThenCrop(256));

    let cat = clf
        .preprocess()
        .load(data.join("photos/chelsea.png"))
        .unwrap();
    let top3 = topk(&softmax(&clf.run_one(&cat).unwrap()), 3);
    let labels: Vec<String> = top3.iter().map(|&(i, _)| clf.label(i)).collect();
    println!("chelsea: {top3:?} {labels:?}");
    assert!(
        labels
            .iter()
            .any(|l| ["tiger cat", "Egyptian cat", "tabby"].contains(&l.as_str())),
        "{labels:?}"
    );

    let coffee = clf
        .preprocess()
        .load(data.join("photos/coffee.png"))
        .unwrap();
    let top1 = topk(&softmax(&clf.run_one(&coffee).unwrap()), 1);
    println!("coffee: {top1:?} {}", clf.label(top1[0].0));
    assert_eq!(clf.label(top1[0].0), "espresso");
}

#[test]
fn preprocessed_inputs_match_the_reference_tensors() {
    let Some(data) = shared() else { return };
    let clf = efficientnet(&data);
    for name in ["chelsea", "coffee"] {
        let ours = clf
            .preprocess()
            .load(data.join(format!("photos/{name}.png")))
            .unwrap();
        let reference =
            read_f32(&data.join(format!("efficientnet-lite0/reference/{name}.input.f32")));
        assert_eq!(ours.len(), reference.len());
        // In grey levels: the reference is (pixel - 127) / 128.
        let diffs: Vec<f32> = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs() * 128.0)
            .collect();
        let max = diffs.iter().copied().fold(0.0, f32::max);
        let off = diffs.iter().filter(|&&d| d > 0.5).count();
        println!(
            "{name}: max difference {max} grey levels; {off} of {} values differ",
            diffs.len()
        );
        assert!(
            max <= 1.0 + 1e-3,
            "{name}: max difference {max} grey levels"
        );
    }
}

#[test]
fn logits_on_reference_inputs_match_onnxruntime() {
    let Some(data) = shared() else { return };
    let clf = efficientnet(&data);
    for name in ["chelsea", "coffee"] {
        let input = read_f32(&data.join(format!("efficientnet-lite0/reference/{name}.input.f32")));
        let input = ndarray::Array3::from_shape_vec((3, 224, 224), input).unwrap();
        let logits = clf.run_one(&input).unwrap();
        let reference =
            read_f32(&data.join(format!("efficientnet-lite0/reference/{name}.logits.f32")));
        let max = logits
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        println!("{name}: max |logit - onnxruntime| = {max:e}");
        assert!(max < 1e-4, "{name}: {max}");
    }
}

#[test]
fn two_threads_give_the_logits_of_one() {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let Some(data) = shared() else { return };
    let clf = efficientnet(&data);
    let input = read_f32(&data.join("efficientnet-lite0/reference/chelsea.input.f32"));
    let input = ndarray::Array3::from_shape_vec((3, 224, 224), input).unwrap();
    // The whole plan on the pool's thread (`on_executor`), every op split between two.
    let one = multithread_tract_scope(Executor::SingleThread, || clf.run_one(&input)).unwrap();
    let two = multithread_tract_scope(Executor::multithread(2), || clf.run_one(&input)).unwrap();
    let reference = read_f32(&data.join("efficientnet-lite0/reference/chelsea.logits.f32"));
    let max = two
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max < 1e-4, "two threads: {max} from onnxruntime");
    // Every value is summed in the same order however the work is split.
    assert_eq!(one, two);
}
