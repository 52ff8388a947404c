use clap::Parser;
use msn_cli::fold::{run, FoldArgs};

/// Fold normalization into plain Conv/Gemm weights, and verify the result.
#[derive(Parser)]
#[command(name = "msn-fold", version)]
struct Cli {
    #[command(flatten)]
    args: FoldArgs,
}

fn main() -> std::process::ExitCode {
    msn_cli::exit(run(Cli::parse().args))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
