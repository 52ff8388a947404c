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
