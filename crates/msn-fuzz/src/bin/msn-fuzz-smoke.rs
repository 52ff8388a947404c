//! The stable-Rust fuzz smoke: `msn-fuzz-smoke SECONDS [SEED]` mutates each target's seed
//! corpus for SECONDS in total, split evenly, and prints the executions per target.

use std::path::Path;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let each = seconds / msn_fuzz::TARGETS.len() as f64;
    let mut total = 0;
    for (name, target) in msn_fuzz::TARGETS {
        let seeds = msn_fuzz::corpus(&root.join(name));
        let runs = msn_fuzz::smoke(name, target, &seeds, each, seed);
        println!("{name}: {runs} executions from {} seeds", seeds.len());
        total += runs;
    }
    println!("total: {total} executions, 0 crashes");
}
