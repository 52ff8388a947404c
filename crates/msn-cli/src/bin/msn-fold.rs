//! `msn-fold`: the same command as `msn fold`.

fn main() -> std::process::ExitCode {
    msn_cli::single_main(
        "msn-fold",
        "Fold normalization into plain Conv/Gemm weights, and verify the result.",
        msn_cli::fold::run,
    )
}
