//! Every committed corpus file (seeds, and every crash found and fixed) through its target.

use std::path::Path;

#[test]
fn the_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut total = 0;
    for (name, target) in msn_fuzz::TARGETS {
        let seeds = msn_fuzz::corpus(&root.join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
        for s in &seeds {
            target(s);
        }
        total += seeds.len();
    }
    println!("replayed {total} corpus files");
}

#[test]
fn a_short_mutation_smoke_finds_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in msn_fuzz::TARGETS {
        let seeds = msn_fuzz::corpus(&root.join(name));
        let runs = msn_fuzz::smoke(name, target, &seeds, 1.0, 7);
        assert!(runs > 0);
    }
}

/// The `kernels` seeds are not vacuous: tract plans and runs every one, and our kernels take
/// the op in the plans of every seed at some CPU level.
#[test]
fn the_kernel_seeds_reach_our_kernels() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/kernels");
    let seeds = msn_fuzz::corpus(&root);
    let levels = msn_fuzz::kernels::levels();
    let (mut compared, mut ours) = (0, 0);
    for s in &seeds {
        let case = msn_fuzz::kernels::Case::decode(s).expect("every seed's kernel fits");
        let outcome = msn_fuzz::kernels::check(&case);
        compared += outcome.compared as usize;
        ours += (outcome.ours > 0) as usize;
    }
    println!(
        "kernels: {} seeds at {} CPU level(s) ({:?}): {compared} compared, {ours} on our kernels",
        seeds.len(),
        levels.len(),
        levels.iter().map(|c| c.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(compared, seeds.len());
    assert!(
        ours * 2 > seeds.len(),
        "only {ours} of {} seeds reach our kernels",
        seeds.len()
    );
}
