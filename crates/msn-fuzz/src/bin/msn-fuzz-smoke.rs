//! The stable-Rust fuzz smoke: `msn-fuzz-smoke SECONDS [SEED] [TARGET]` mutates each target's
//! seed corpus (or TARGET's alone) for SECONDS in total, split evenly, and prints the
//! executions per target.

use std::path::Path;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let only = args.next();
    let targets: Vec<_> = msn_fuzz::TARGETS
        .into_iter()
        .filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name))
        .collect();
    if targets.is_empty() {
        eprintln!("no target named {only:?}");
        std::process::exit(2);
    }
    let each = seconds / targets.len() as f64;
    let mut total = 0;
    for (name, target) in targets {
        let seeds = msn_fuzz::corpus(&root.join(name));
        let runs = msn_fuzz::smoke(name, target, &seeds, each, seed);
        println!("{name}: {runs} executions from {} seeds", seeds.len());
        total += runs;
    }
    println!("total: {total} executions, 0 crashes");
}
