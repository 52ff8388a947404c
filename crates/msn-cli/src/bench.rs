//! `msn bench`: latency percentiles and throughput of a model, optionally against another.

use crate::classify::load_classifier;
use crate::PreprocessArgs;
use anyhow::{bail, Result};
use clap::Args;
use msn_runtime::bench::{Profile, Stats};
use msn_runtime::LoadOptions;
use serde_json::json;
use std::path::PathBuf;

/// Measure a model's inference latency and throughput with tract.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The ONNX model to measure
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Images per run
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch: usize,
    /// Timed runs (after the warm-up)
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub iters: usize,
    /// Untimed warm-up runs
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub warmup: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// A second model, run interleaved with the first in the same process
    #[arg(long, value_name = "OTHER.onnx")]
    pub compare: Option<PathBuf>,
    /// Run the model twice, interleaved: every op on msn's kernels (first), then its
    /// depthwise convolutions and first layers on tract's own kernel, the rest still ours
    /// (second)
    #[arg(long, conflicts_with_all = ["compare", "compare_kernels", "compare_dense"])]
    pub compare_depthwise: bool,
    /// Run the model twice, interleaved: every op on msn's kernels (first), then its float
    /// convolutions other than depthwise ones and first layers on tract's own kernels, the
    /// rest still ours (second)
    #[arg(long, conflicts_with_all = ["compare", "compare_kernels"])]
    pub compare_dense: bool,
    /// Run the model twice, interleaved: on msn's kernels (first), then on tract's own
    /// alone (second; none of msn's kernels)
    #[arg(long, conflicts_with = "compare")]
    pub compare_kernels: bool,
    /// Threads for tract's matrix products (0: every core, 1: single-threaded)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Compute in half precision (tract's f16 plan) on CPUs with f16 arithmetic: ARMv8.2-A
    /// boards (Raspberry Pi 5, Jetson Orin) or x86-64 with AVX512-FP16; refused elsewhere
    #[arg(long)]
    pub f16: bool,
    /// Also time every node of tract's plan (median over --iters runs): time per op type and
    /// the slowest nodes, with their share of the total
    #[arg(long)]
    pub profile: bool,
    /// With --profile: how many of the slowest nodes to list
    #[arg(long, default_value_t = 15, value_name = "N")]
    pub top: usize,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

fn stats_json(model: &std::path::Path, s: &Stats) -> serde_json::Value {
    json!({
        "model": model.display().to_string(),
        "batch": s.batch,
        "load_ms": s.load_ms,
        "p50_ms": s.p50_ms,
        "p90_ms": s.p90_ms,
        "p99_ms": s.p99_ms,
        "mean_ms": s.mean_ms,
        "throughput_per_s": s.throughput_per_s,
    })
}

fn profile_json(p: &Profile, top: usize) -> serde_json::Value {
    let share = |s: f64| s / p.total.max(1e-12);
    json!({
        "total_ms": p.total * 1e3,
        "ops": p.ops.iter().map(|(op, n, s)| json!({"op": op, "nodes": n, "ms": s * 1e3, "share": share(*s)})).collect::<Vec<_>>(),
        "slowest": p.nodes.iter().take(top).map(|n| json!({"node": n.name, "op": n.op, "ms": n.seconds * 1e3, "share": share(n.seconds), "info": n.info})).collect::<Vec<_>>(),
    })
}

fn print_profile(model: &std::path::Path, p: &Profile, top: usize) {
    let share = |s: f64| 100.0 * s / p.total.max(1e-12);
    println!(
        "\nprofile of {} (median per node; nodes sum to {:.3} ms)",
        model.display(),
        p.total * 1e3
    );
    println!(
        "{:<28} {:>6} {:>10} {:>7}",
        "tract op", "nodes", "ms", "share"
    );
    for (op, n, s) in &p.ops {
        println!("{op:<28} {n:>6} {:>10.3} {:>6.1}%", s * 1e3, share(*s));
    }
    println!(
        "\n{:<48} {:<20} {:>10} {:>7}",
        "slowest nodes", "tract op", "ms", "share"
    );
    for n in p.nodes.iter().take(top) {
        println!(
            "{:<48} {:<20} {:>10.3} {:>6.1}%",
            n.name,
            n.op,
            n.seconds * 1e3,
            share(n.seconds)
        );
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let threads = msn_runtime::set_threads(args.threads);
    let options = LoadOptions {
        batch: Some(args.batch),
        preprocess: args.preprocess.overrides(),
        labels: None,
        plan: crate::plan_for(args.f16)?,
    };
    let mut paths = vec![args.model.clone()];
    paths.extend(args.compare.clone());
    let mut models = paths
        .iter()
        .map(|p| load_classifier(Some(p), &options))
        .collect::<Result<Vec<_>>>()?;
    let second = if args.compare_depthwise {
        // Our depthwise kernels off, every other kernel kept: what they alone are worth.
        Some((
            msn_kernels::Options {
                depthwise: false,
                channel_lanes: false,
                ..msn_kernels::Options::default()
            },
            "tract's depthwise",
        ))
    } else if args.compare_dense {
        // Our float convolution kernel off, every other kernel kept.
        Some((
            msn_kernels::Options {
                dense: false,
                ..msn_kernels::Options::default()
            },
            "tract's convolutions",
        ))
    } else if args.compare_kernels {
        Some((msn_kernels::Options::none(), "tract's kernels"))
    } else {
        None
    };
    if let Some((kernels, what)) = second {
        let tract = LoadOptions {
            plan: msn_runtime::Plan::With(kernels),
            ..options.clone()
        };
        models.push(load_classifier(Some(&args.model), &tract)?);
        paths.push(PathBuf::from(format!("{} ({what})", args.model.display())));
    }
    let refs: Vec<_> = models.iter().collect();
    let stats = msn_runtime::bench::run(&refs, args.warmup, args.iters)?;
    let ratio = (stats.len() == 2).then(|| stats[1].p50_ms / stats[0].p50_ms);
    let profiles = match args.profile {
        true => models
            .iter()
            .map(|m| msn_runtime::bench::profile(m, args.warmup, args.iters))
            .collect::<Result<Vec<_>, _>>()?,
        false => vec![],
    };

    if args.json {
        let value = match ratio {
            None => {
                let mut v = stats_json(&paths[0], &stats[0]);
                v["threads"] = json!(threads);
                v["f16"] = json!(args.f16);
                v["cpu"] = crate::cpu_json();
                v
            }
            Some(r) => json!({
                "models": paths.iter().zip(&stats).map(|(p, s)| stats_json(p, s)).collect::<Vec<_>>(),
                "ratio_p50": r,
                "threads": threads,
                "f16": args.f16,
                "cpu": crate::cpu_json(),
            }),
        };
        let mut value = value;
        if !profiles.is_empty() {
            value["profiles"] = profiles.iter().map(|p| profile_json(p, args.top)).collect();
        }
        println!("{value}");
        return Ok(());
    }
    println!("kernels: {}, {threads} thread(s)", crate::cpu_description());
    println!(
        "{:<40} {:>5} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "model", "batch", "load ms", "p50 ms", "p90 ms", "p99 ms", "images/s"
    );
    for (p, s) in paths.iter().zip(&stats) {
        println!(
            "{:<40} {:>5} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>10.1}",
            p.display().to_string(),
            s.batch,
            s.load_ms,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.throughput_per_s
        );
    }
    if let Some(r) = ratio {
        println!("p50 ratio (second / first): {r:.3}");
    }
    for (p, prof) in paths.iter().zip(&profiles) {
        print_profile(p, prof, args.top);
    }
    Ok(())
}
