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
mod preprocess_args;
pub mod run;
#[cfg(feature = "train")]
pub mod train;

pub use preprocess_args::PreprocessArgs;

use std::process::ExitCode;

#[cfg(not(target_env = "musl"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
