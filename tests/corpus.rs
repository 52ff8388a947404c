//! The differential corpus (`tests/fixtures/corpus`, made by `tests/python/make_corpus.py`):
//! every model through the runtime's loader, as written and after msn-fold, and the image
//! classifiers through `Classifier` too, against onnxruntime's outputs on the same inputs.
//! Bound: the largest difference at most 1e-4 of the output's largest magnitude.

use msn_e2e::fixture;
use msn_runtime::{verify::relative_error, Classifier, LoadOptions, Plan, Source};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-4;

fn models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture("corpus"))
        .expect("tests/fixtures/corpus exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    v
}

fn sibling(model: &Path, suffix: &str) -> PathBuf {
    let stem = model.file_stem().unwrap().to_str().unwrap();
    model.with_file_name(format!("{stem}.{suffix}.npz"))
}

/// The worst relative error of the model's outputs against the expected ones, in tract's
/// optimised plan (what every command runs) and in its reference plan (what fold
/// verification compares against).
fn worst(source: &Source, expected: &[(Option<String>, msn_runtime::Tensor)]) -> f64 {
    worst_in(source, expected, Plan::Optimized).max(worst_in(source, expected, Plan::Reference))
}

fn worst_in(
    source: &Source,
    expected: &[(Option<String>, msn_runtime::Tensor)],
    plan: Plan,
) -> f64 {
    let inputs = source.bind(msn_runtime::npy::read(&sibling(source.origin(), "inputs")).unwrap());
    let inputs = inputs.unwrap_or_else(|e| panic!("{e}"));
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    let model = source
        .plan(&shapes, plan)
        .unwrap_or_else(|e| panic!("{plan:?}: {e}"));
    let got = model.run(inputs).unwrap_or_else(|e| panic!("{e}"));
    let mut worst = 0.0f64;
    for (spec, out) in model.outputs().iter().zip(&got) {
        let (_, want) = expected
            .iter()
            .find(|(n, _)| n.as_deref() == Some(spec.name.as_str()))
            .unwrap_or_else(|| panic!("no expected output '{}'", spec.name));
        worst = worst.max(relative_error(want, out));
    }
    worst
}

#[test]
fn every_corpus_model_agrees_with_onnxruntime_unfolded_and_folded() {
    let models = models();
    assert!(
        models.len() >= 100,
        "the corpus has {} models",
        models.len()
    );
    let mut by_family: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &models {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let expected = msn_runtime::npy::read(&sibling(path, "expected")).unwrap();
        let source = Source::read(path).unwrap();
        let unfolded = worst(&source, &expected);

        let mut folded_model = source.model().clone();
        msn_fold::fold(&mut folded_model);
        let folded_source =
            Source::from_bytes(msn_onnx::io::to_bytes(&folded_model), path).unwrap();
        let folded = worst(&folded_source, &expected);

        let family = if name.starts_with("arch_") {
            name.clone()
        } else {
            name.split('_').take(2).collect::<Vec<_>>().join("_")
        };
        let entry = by_family.entry(family).or_insert((0, 0.0, 0.0));
        entry.0 += 1;
        entry.1 = entry.1.max(unfolded);
        entry.2 = entry.2.max(folded);
        if unfolded.max(folded) > TOLERANCE {
            failures.push(format!(
                "{name}: unfolded {unfolded:.2e}, folded {folded:.2e}"
            ));
        }
    }
    println!(
        "kernels at {} (MSN_CPU caps it); family: models, worst relative error unfolded / folded",
        msn_runtime::msn_kernels::cpu::get()
    );
    for (family, (n, u, f)) in &by_family {
        println!("  {family}: {n}, {u:.2e} / {f:.2e}");
    }
    assert!(
        failures.is_empty(),
        "over {TOLERANCE}:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_corpus_classifiers_agree_with_onnxruntime_through_classifier() {
    for path in models().iter().filter(|p| {
        p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("arch_")
    }) {
        let inputs = msn_runtime::npy::read(&sibling(path, "inputs")).unwrap();
        let expected = msn_runtime::npy::read(&sibling(path, "expected")).unwrap();
        let x = inputs[0]
            .1
            .to_plain_array_view::<f32>()
            .unwrap()
            .to_owned()
            .into_dimensionality::<ndarray::Ix4>()
            .unwrap();
        let want = expected[0]
            .1
            .to_plain_array_view::<f32>()
            .unwrap()
            .to_owned();
        let clf = Classifier::load(path, &LoadOptions::default()).unwrap();
        let got = clf.run(x).unwrap();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
            / scale;
        println!("{}: Classifier vs onnxruntime {err:.2e}", path.display());
        assert!(f64::from(err) <= TOLERANCE, "{}: {err}", path.display());
    }
}
