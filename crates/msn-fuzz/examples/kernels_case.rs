//! Replays one `kernels` fuzz input and prints what each plan gives:
//! `cargo run -p msn-fuzz --example kernels_case -- crash-kernels.bin`.

use msn_kernels::testing::{Plan, Source};
use msn_kernels::Options;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: kernels_case FILE");
        std::process::exit(2);
    };
    let data = std::fs::read(&path).expect("readable input");
    let Some(case) = msn_fuzz::kernels::Case::decode(&data) else {
        println!("{path}: the kernel does not fit its input; nothing to run");
        return;
    };
    println!("{case:?}");
    let (x, bytes, want, tolerance) = case.build();
    println!("reference (tolerance {tolerance:e}): {want:?}");
    let source = Source::from_bytes(bytes).expect("a model");
    let shapes = source.shapes();
    let plans = std::iter::once(("tract".to_string(), Options::none())).chain(
        msn_fuzz::kernels::levels()
            .into_iter()
            .map(|cpu| (format!("ours at {cpu}"), Options::all(cpu))),
    );
    for (name, options) in plans {
        match source.plan(&shapes, Plan::With(options)) {
            Ok(p) => println!("{name} {:?}: {:?}", p.ops(), p.run(vec![x.clone()])),
            Err(e) => println!("{name}: no plan: {e:#}"),
        }
    }
}
