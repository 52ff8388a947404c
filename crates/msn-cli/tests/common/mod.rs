//! What the process-level tests share: running the binaries, checking exits, reading a run's
//! metrics and stopping a training process the two ways a user does (kill -9 and Ctrl-C).
#![allow(dead_code)] // each test file uses its own part

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `msn teach` on `backbone` and the photo folder `data`, writing `out`: `epochs` epochs of
/// batches of 4 at lr 0.01, every photo for training, a JSON summary.
pub fn teach_args(backbone: &Path, data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_string();
    let mut args: Vec<String> = vec!["teach".into(), "--backbone".into(), path(backbone)];
    args.extend(["--data".into(), path(data), "-o".into(), path(out)]);
    args.extend(["--epochs".into(), epochs.to_string()]);
    for a in [
        "--lr",
        "0.01",
        "--batch-size",
        "4",
        "--test-fraction",
        "0",
        "--json",
    ] {
        args.push(a.into());
    }
    args
}

/// Runs `msn` with `args` to completion.
pub fn msn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msn"))
        .args(args)
        .output()
        .expect("msn runs")
}

/// Asserts a successful exit (showing stderr otherwise) and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a clean failure: exit code 2, stderr naming `needle`, no panic.
pub fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The run's `metrics.jsonl`, one value per finished epoch (none yet: empty).
pub fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Metrics without the wall-clock fields, which differ between runs.
pub fn comparable(mut m: Vec<Value>) -> Vec<Value> {
    for v in &mut m {
        let o = v.as_object_mut().unwrap();
        o.remove("epoch_seconds");
        o.remove("images_per_second");
    }
    m
}

/// Starts `msn args` training into `run` and returns once `epochs` epochs are finished (the
/// next one running), with stderr piped.
pub fn train_until(args: &[&str], run: &Path, epochs: usize) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_msn"))
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while metrics(run).len() < epochs {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "epoch {epochs} never finished"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// SIGKILL: the process has no chance to save anything.
pub fn kill_9(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Sends SIGINT (Ctrl-C) to a running `msn` and returns the epoch and step its message says
/// it stopped at.
pub fn interrupt(child: Child) -> (usize, usize) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let tail = stderr
        .split("interrupted at epoch ")
        .nth(1)
        .unwrap_or_else(|| panic!("no interruption message in: {stderr}"));
    let number = |s: &str| s.split([' ', ';']).next().unwrap().parse().unwrap();
    (number(tail), number(tail.split(" step ").nth(1).unwrap()))
}
