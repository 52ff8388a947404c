//! `msn-quantize`: the same command as `msn quantize`.

fn main() -> std::process::ExitCode {
    msn_cli::single_main(
        "msn-quantize",
        "Quantize a float ONNX model to int8, calibrated on your images.",
        msn_cli::quantize::run,
    )
}
