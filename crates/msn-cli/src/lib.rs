//! # msn-cli: the command-line tools
//!
//! Each command is a clap `Args` struct and a `run` function here; the binaries in `src/bin`
//! only parse and call them. Every error reaches [`exit`], which prints one line with its cause
//! chain and returns exit code 2.

pub mod bench;
pub mod classify;
#[cfg(feature = "train")]
pub mod experiment;
#[cfg(feature = "train")]
pub mod export;
pub mod fold;
#[cfg(feature = "train")]
pub mod gan;
pub mod info;
mod preprocess_args;
pub mod quantize;
pub mod run;
#[cfg(feature = "train")]
pub mod teach;
#[cfg(feature = "train")]
pub mod train;

pub use preprocess_args::PreprocessArgs;

use std::process::ExitCode;

#[cfg(not(target_env = "musl"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells the allocator to keep the memory it frees for reuse rather than hand it back to the
/// system after 10 ms (mimalloc's default "purge delay"). A model's run frees megabytes of
/// activations that the next run allocates again; handed back, they came back as fresh
/// (transparent huge) pages the kernel zeroes: about 5 page faults a run on MobileNetV2
/// (`perf stat`: 1,782 faults in 200 runs, 652 without purging), each zeroing 2 MB. The
/// process never holds more than its largest run needed.
pub fn keep_freed_memory() {
    #[cfg(not(target_env = "musl"))]
    {
        // `mi_option_purge_delay` in mimalloc 2 and 3's `mi_option_e` (libmimalloc-sys names
        // no constant for it); -1: never purge.
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: setting an option is allowed at any time; -1 is a documented value.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

/// Checks the environment every command reads before it runs: `MSN_CPU` (the kernels' CPU
/// level cap, `msn_kernels::cpu`) must name a level of this architecture.
pub fn check_environment() -> anyhow::Result<()> {
    msn_kernels::cpu::cap_from_env().map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The CPU level our kernels run at, as `msn info` and `msn bench` print it: the level in force,
/// and what the CPU has when `MSN_CPU` caps it.
pub fn cpu_description() -> String {
    let cpu = msn_kernels::cpu::get();
    let detected = msn_kernels::cpu::Cpu::detect();
    if cpu == detected {
        format!("{cpu} ({})", std::env::consts::ARCH)
    } else {
        format!(
            "{cpu} (capped by MSN_CPU; this {} CPU has {detected})",
            std::env::consts::ARCH
        )
    }
}

/// The CPU level as JSON: `{"level", "detected", "arch"}`.
pub fn cpu_json() -> serde_json::Value {
    serde_json::json!({
        "level": msn_kernels::cpu::get().to_string(),
        "detected": msn_kernels::cpu::Cpu::detect().to_string(),
        "arch": std::env::consts::ARCH,
    })
}

/// The plan a command's `--f16` asks for: [`Plan::Half`](msn_runtime::Plan::Half) where the CPU
/// computes f16 natively (refused elsewhere, with the reason), else the optimised plan.
pub fn plan_for(f16: bool) -> anyhow::Result<msn_runtime::Plan> {
    if f16 {
        msn_runtime::half_supported().map_err(anyhow::Error::msg)?;
        return Ok(msn_runtime::Plan::Half);
    }
    Ok(msn_runtime::Plan::Optimized)
}

/// `[NAME=]D,D,...` with every dimension at least 1.
/// (`--input-shape` of `msn info` and `msn-fold`.)
pub fn parse_shape(s: &str) -> Result<(Option<String>, Vec<usize>), String> {
    let (name, dims) = match s.rsplit_once('=') {
        Some((n, d)) => (Some(n.to_string()), d),
        None => (None, s),
    };
    let dims: Vec<usize> = dims
        .split(',')
        .map(|d| match d.trim().parse::<usize>() {
            Ok(n) if (1..=1 << 24).contains(&n) => Ok(n),
            _ => Err(format!("'{d}' is not a dimension (1 to 16777216)")),
        })
        .collect::<Result<_, _>>()?;
    Ok((name, dims))
}

/// The exit code for every failure: bad input, a missing file, a model that cannot run.
pub const FAILURE: u8 = 2;

/// Turns a command's result into the process exit code, printing the error if there is one.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(FAILURE)
        }
    }
}

/// A binary that is one command (`msn-classify`, `msn-export`, `msn-fold`): its arguments are
/// the command's, under the binary's own name and description.
#[derive(clap::Parser)]
#[command(version)]
struct Single<A: clap::Args> {
    #[command(flatten)]
    args: A,
}

fn single_command<A: clap::Args>(name: &'static str, about: &'static str) -> clap::Command {
    use clap::CommandFactory;
    Single::<A>::command().name(name).about(about)
}

/// The `main` of a one-command binary: parse, run, and turn the result into the exit code.
pub fn single_main<A: clap::Args>(
    name: &'static str,
    about: &'static str,
    run: fn(A) -> anyhow::Result<()>,
) -> ExitCode {
    use clap::FromArgMatches;
    keep_freed_memory();
    let matches = single_command::<A>(name, about).get_matches();
    let cli = Single::<A>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    exit(check_environment().and_then(|()| run(cli.args)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_one_command_binaries_are_consistent() {
        super::single_command::<crate::classify::ClassifyArgs>("msn-classify", "").debug_assert();
        super::single_command::<crate::fold::FoldArgs>("msn-fold", "").debug_assert();
        super::single_command::<crate::quantize::QuantizeArgs>("msn-quantize", "").debug_assert();
        #[cfg(feature = "train")]
        super::single_command::<crate::export::ExportArgs>("msn-export", "").debug_assert();
    }
}
