//! `msn experiment`: the paper's comparison: one model and data set trained with each
//! normalization, then a Markdown table and figures. `msn plot`: figures of any runs.

use crate::train::{stop_on_ctrl_c, TrainOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use msn_nn::NormKind;
use msn_train::checkpoint::CONFIG_FILE;
use msn_train::report::{markdown_table, plot, seed_table, Run};
use msn_train::trainer::{self, Outcome};
use std::path::{Path, PathBuf};

/// Train one model on one data set with several normalizations (OUT/<norm>), then write
/// OUT/RESULTS.md (table of best and final test accuracy, epoch time, trainable parameters)
/// and the figures. Runs already in OUT are resumed, or reused when finished.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// Normalizations to compare, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "none,bn,sn,msn")]
    pub norms: Vec<NormKind>,
    /// Train each norm once per seed (OUT/<norm>/seed<S>) and add a table of the mean and
    /// spread of the test accuracy over the seeds; overrides --seed
    #[arg(long, value_delimiter = ',', value_name = "S,S,...")]
    pub seeds: Option<Vec<u64>>,
    #[command(flatten)]
    pub options: TrainOptions,
    /// Experiment directory: one run per norm (and seed), RESULTS.md and the figures
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Draw figures of finished (or running) runs: test accuracy per epoch overlaid, per-layer
/// pre-activation mean ± std (the mean drift) and gradient sparsity.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directories (each with config.json and metrics.jsonl)
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Folder for accuracy.png, drift.png and sparsity.png
    #[arg(short, long, value_name = "DIR", default_value = "plots")]
    pub out: PathBuf,
    /// Also print the Markdown table of the runs
    #[arg(long)]
    pub table: bool,
}

fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Run>> {
    dirs.iter()
        .map(|d| Run::load(d).with_context(|| format!("reading run {}", d.display())))
        .collect()
}

pub fn run_plot(args: PlotArgs) -> Result<()> {
    let runs = load_runs(&args.runs)?;
    for path in plot(&runs, &args.out)? {
        println!("{}", path.display());
    }
    if args.table {
        print!("{}", markdown_table(&runs)?);
    }
    Ok(())
}

fn train_one(options: &TrainOptions, norm: NormKind, dir: &Path) -> Result<()> {
    let stop = stop_on_ctrl_c();
    let outcome = if dir.join(CONFIG_FILE).exists() {
        eprintln!("{norm}: continuing {}", dir.display());
        trainer::resume(dir, &stop, true)?
    } else {
        eprintln!("{norm}: training into {}", dir.display());
        trainer::start(&options.request(norm)?, dir, &stop, true)?
    };
    match outcome {
        Outcome::Finished(_) => Ok(()),
        Outcome::Interrupted { epoch, step } => bail!(
            "interrupted in {} at epoch {epoch} step {step}; run the same command again to continue",
            dir.display()
        ),
    }
}

pub fn run_experiment(args: ExperimentArgs) -> Result<()> {
    msn_autograd::kernels::set_threads(args.options.threads);
    msn_autograd::kernels::join_global_pool();
    if args.norms.is_empty() {
        bail!("--norms lists no normalization");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let seeds = args.seeds.clone().unwrap_or_default();
    if args.seeds.is_some() && seeds.is_empty() {
        bail!("--seeds lists no seed");
    }
    // (norm, seed, run directory); without --seeds, one run per norm in OUT/<norm>.
    let mut plan: Vec<(NormKind, u64, PathBuf)> = Vec::new();
    for norm in &args.norms {
        let dir = args.out.join(norm.to_string());
        match &args.seeds {
            None => plan.push((*norm, args.options.seed, dir)),
            Some(seeds) => {
                for &seed in seeds {
                    plan.push((*norm, seed, dir.join(format!("seed{seed}"))));
                }
            }
        }
    }
    for (norm, seed, dir) in &plan {
        let options = TrainOptions {
            seed: *seed,
            ..args.options.clone()
        };
        train_one(&options, *norm, dir)?;
    }
    let dirs: Vec<PathBuf> = plan.iter().map(|p| p.2.clone()).collect();
    let runs = load_runs(&dirs)?;
    // The figures show the first seed's runs; every run is in the table.
    let first: Vec<Run> = runs
        .iter()
        .zip(&plan)
        .filter(|(_, p)| seeds.first().is_none_or(|&s| p.1 == s))
        .map(|(r, _)| r.clone())
        .collect();
    let figures = plot(&first, &args.out)?;
    let mut table = markdown_table(&runs)?;
    if args.seeds.is_some() {
        table = format!("{}\n{table}", seed_table(&runs));
    }
    let command: Vec<String> = std::env::args().collect();
    let mut md = format!(
        "# {} on {}: {}\n\nMade by `{}`.\n\n{table}\n",
        args.options.model,
        args.options.dataset,
        args.norms
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        command.join(" ")
    );
    for f in &figures {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        md += &format!("![{name}]({name})\n\n");
    }
    let path = args.out.join("RESULTS.md");
    msn_train::write_atomic(&path, md.as_bytes())?;
    print!("{table}");
    eprintln!("wrote {}", path.display());
    Ok(())
}
