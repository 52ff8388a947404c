//! The cross-built binaries, run under qemu-user, give the host's answers: same top-1 and
//! probabilities within 1e-4, on the built-in default model, the unfolded model file, and a
//! model folded by the cross-built msn-fold.
//!
//! Runs for each target in `MSN_CROSS_TARGETS` (comma-separated, e.g.
//! `aarch64-unknown-linux-gnu,armv7-unknown-linux-gnueabihf`), with binaries in
//! `target/TARGET/PROFILE/` (`MSN_CROSS_PROFILE`, default `dist`): build them first with
//! `scripts/cross.sh`. Without `MSN_CROSS_TARGETS` the test says so and does nothing.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("models/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The qemu-user command line that runs a binary of `target`.
fn emulator(target: &str) -> Vec<String> {
    let (qemu, sysroot) = match target {
        t if t.starts_with("aarch64") => ("qemu-aarch64", "/usr/aarch64-linux-gnu"),
        t if t.starts_with("armv7") => ("qemu-arm", "/usr/arm-linux-gnueabihf"),
        other => panic!("no emulator known for {other}"),
    };
    let mut cmd = vec![qemu.to_string()];
    // Static musl binaries need no loader or libc from a sysroot.
    if !target.contains("musl") {
        cmd.extend(["-L".to_string(), sysroot.to_string()]);
    }
    cmd
}

/// The environment that makes tract pick the kernels of a real board rather than the
/// generic ones it picks under qemu (which shows the host's /proc/cpuinfo).
fn board_kernels(target: &str) -> (&'static str, &'static str) {
    if target.starts_with("armv7") {
        ("TRACT_CPU_ARM32_NEON", "true")
    } else {
        ("TRACT_CPU_AARCH64_KIND", "a53")
    }
}

fn run(cmd: &[String], args: &[&str]) -> String {
    run_env(cmd, args, &[])
}

fn run_env(cmd: &[String], args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd[0]));
    assert!(
        out.status.success(),
        "{cmd:?} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn classify(cmd: &[String], model: Option<&Path>) -> Vec<Value> {
    classify_env(cmd, model, &[])
}

fn classify_env(cmd: &[String], model: Option<&Path>, env: &[(&str, &str)]) -> Vec<Value> {
    classify_flags(cmd, model, env, &[])
}

fn classify_flags(
    cmd: &[String],
    model: Option<&Path>,
    env: &[(&str, &str)],
    flags: &[&str],
) -> Vec<Value> {
    let mut args = vec!["--json".to_string(), "--top-k".into(), "10".into()];
    args.extend(flags.iter().map(|f| f.to_string()));
    if let Some(m) = model {
        args.extend(["--model".into(), m.display().to_string()]);
    }
    args.extend(images().iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_env(cmd, &args, env)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Same top-1 per image and every class probability within 1e-4; returns the largest gap.
fn compare(what: &str, host: &[Value], board: &[Value]) -> f64 {
    compare_within(what, host, board, 1e-4)
}

/// Same top-1 per image and every class probability within `tol`; returns the largest gap.
fn compare_within(what: &str, host: &[Value], board: &[Value], tol: f64) -> f64 {
    assert_eq!(host.len(), board.len(), "{what}: number of results");
    let mut worst = 0.0f64;
    for (h, b) in host.iter().zip(board) {
        let (ht, bt) = (h["top"].as_array().unwrap(), b["top"].as_array().unwrap());
        assert_eq!(
            ht[0]["index"], bt[0]["index"],
            "{what}: top-1 of {}",
            h["file"]
        );
        for e in ht {
            let p = bt.iter().find(|x| x["index"] == e["index"]).unwrap();
            let d = (e["prob"].as_f64().unwrap() - p["prob"].as_f64().unwrap()).abs();
            worst = worst.max(d);
        }
    }
    assert!(worst <= tol, "{what}: probabilities differ by {worst}");
    worst
}

/// `msn teach` on the board and on the host, same folder and seed (the shipped Fashion-MNIST
/// model as the backbone, the shipped images in three classes); both models classified on
/// the host, and the board's also on the board. Returns the largest probability gap.
fn teach_on_board(target: &str, board_msn: &Path, tmp: &Path) -> f64 {
    assert!(
        board_msn.exists(),
        "{}: no cross-built msn; build it with scripts/cross.sh (without --runtime-only)",
        board_msn.display()
    );
    let data = tmp.join(format!("{target}-photos"));
    for (i, image) in images().iter().enumerate() {
        let class = ["tops", "shoes", "other"][i % 3];
        let d = data.join("train").join(class);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(image, d.join(image.file_name().unwrap())).unwrap();
    }
    let backbone = root().join("models/fashion-cnn3-msn.folded.onnx");
    let taught = |cmd: &[String], out: &Path| {
        let mut args = common::teach_args(&backbone, &data, out, 10);
        args.extend(["--hidden".to_string(), "16".to_string()]);
        run(cmd, &args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let (on_host, on_board) = (tmp.join("teach-host.onnx"), tmp.join("teach-board.onnx"));
    taught(&[env!("CARGO_BIN_EXE_msn").to_string()], &on_host);
    let mut board = emulator(target);
    board.push(board_msn.display().to_string());
    let t = Instant::now();
    taught(&board, &on_board);
    eprintln!(
        "{target}: taught under qemu in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let host = vec![env!("CARGO_BIN_EXE_msn-classify").to_string()];
    let reference = classify(&host, Some(&on_host));
    let d1 = compare(target, &reference, &classify(&host, Some(&on_board)));
    let mut board_classify = emulator(target);
    board_classify.push(
        board_msn
            .with_file_name("msn-classify")
            .display()
            .to_string(),
    );
    let d2 = compare(
        target,
        &reference,
        &classify(&board_classify, Some(&on_board)),
    );
    d1.max(d2)
}

#[test]
fn cross_built_binaries_match_the_host_under_qemu() {
    let Ok(targets) = std::env::var("MSN_CROSS_TARGETS") else {
        eprintln!(
            "MSN_CROSS_TARGETS not set: no cross-built binaries to check (see scripts/cross.sh)"
        );
        return;
    };
    let profile = std::env::var("MSN_CROSS_PROFILE").unwrap_or_else(|_| "dist".into());
    let host = vec![env!("CARGO_BIN_EXE_msn-classify").to_string()];
    let unfolded = root().join("models/fashion-cnn3-msn.onnx");
    let tmp = tempfile::tempdir().unwrap();
    for target in targets.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let bin = |name: &str| root().join("target").join(target).join(&profile).join(name);
        let mut board = emulator(target);
        board.push(bin("msn-classify").display().to_string());

        let t = Instant::now();
        let built_in = classify(&board, None);
        let seconds = t.elapsed().as_secs_f64();
        let d1 = compare(target, &classify(&host, None), &built_in);
        let d2 = compare(
            target,
            &classify(&host, Some(&unfolded)),
            &classify(&board, Some(&unfolded)),
        );
        // The kernels tract picks on a real board (NEON on armv7, Cortex-A53 on aarch64).
        let kernels = board_kernels(target);
        let d4 = compare(
            target,
            &classify(&host, None),
            &classify_env(&board, None, &[kernels]),
        );
        // msn-fold on the board, its output classified on the host.
        let folded = tmp.path().join(format!("{target}.folded.onnx"));
        let mut fold = emulator(target);
        fold.push(bin("msn-fold").display().to_string());
        run(
            &fold,
            &[
                unfolded.to_str().unwrap(),
                "-o",
                folded.to_str().unwrap(),
                "--verify",
                "4",
            ],
        );
        let d3 = compare(
            target,
            &classify(&host, None),
            &classify(&host, Some(&folded)),
        );
        let d5 = teach_on_board(target, &bin("msn"), tmp.path());
        // An int8 model made on the host (the unfolded model, calibrated on the shipped
        // images), on the board with the default and the board's kernels. Integer products
        // are exact; requantization may round one code differently, hence 1e-3.
        let int8 = tmp.path().join(format!("{target}.int8.onnx"));
        let quantize = vec![env!("CARGO_BIN_EXE_msn").to_string()];
        let images_dir = root().join("models/images");
        run(
            &quantize,
            &[
                "quantize",
                unfolded.to_str().unwrap(),
                "-o",
                int8.to_str().unwrap(),
                "--calibration",
                images_dir.to_str().unwrap(),
            ],
        );
        let host_int8 = classify(&host, Some(&int8));
        let d6 = compare_within(target, &host_int8, &classify(&board, Some(&int8)), 1e-3);
        let d7 = compare_within(
            target,
            &host_int8,
            &classify_env(&board, Some(&int8), &[kernels]),
            1e-3,
        );
        // Our aarch64 kernels at both levels: qemu's default CPU (`max`) has the dot
        // product, so the int8 convolutions above ran on `sdot`; a Cortex-A53 (Pi 3) has NEON
        // without it. The float model's convolutions run on our NEON kernels on both.
        if target.starts_with("aarch64") {
            let mut a53 = board.clone();
            a53.splice(1..1, ["-cpu".to_string(), "cortex-a53".to_string()]);
            let d9 = compare_within(target, &host_int8, &classify(&a53, Some(&int8)), 1e-3);
            let d10 = compare(target, &classify(&host, None), &classify(&a53, None));
            eprintln!(
                "{target}: on a Cortex-A53 (NEON, no dot product) vs the host: int8 max |dp| \
                 {d9:.1e}, float {d10:.1e}"
            );
        }
        // --f16: qemu's default CPU (`max`) has ARMv8.2-A FP16, so tract's f16 kernels run;
        // a Pi 4's Cortex-A72 has none, and the flag is refused.
        if target.starts_with("aarch64") {
            let d8 = compare_within(
                target,
                &classify(&host, None),
                &classify_flags(&board, None, &[], &["--f16"]),
                5e-3,
            );
            let mut a72 = board.clone();
            a72.splice(1..1, ["-cpu".to_string(), "cortex-a72".to_string()]);
            let refused = Command::new(&a72[0])
                .args(&a72[1..])
                .args(["--f16", images()[0].to_str().unwrap()])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert_eq!(refused.status.code(), Some(2), "{stderr}");
            assert!(
                stderr.contains("--f16: this CPU has no half-precision"),
                "{stderr}"
            );
            eprintln!("{target}: --f16 (FP16 CPU) vs f32 on the host: max |dp| {d8:.1e}; refused on a Cortex-A72");
        }
        eprintln!(
            "{target}: int8 model on the board vs the host: max |dp| {d6:.1e}, with {}={} {d7:.1e}",
            kernels.0, kernels.1
        );
        eprintln!("{target}: taught on the board vs on the host: max |dp| {d5:.1e}");
        eprintln!(
            "{target}: built-in model max |dp| {d1:.1e}, unfolded {d2:.1e}, folded on the board {d3:.1e}, \
             with {}={} {d4:.1e}; {} images in {seconds:.2} s under qemu",
            kernels.0,
            kernels.1,
            images().len()
        );
    }
}
