//! # msn-runtime: run ONNX models on tract, and classify images with them
//!
//! 0. [`model`]: the one loader. Bytes are decoded and validated by msn-onnx, folded by
//!    msn-fold in memory, guarded against what tract computes wrongly, then planned by tract
//!    for fixed input shapes. No other crate builds a tract plan. [`verify`] proves a
//!    rewrite by running the original and the rewritten model on the same inputs.
//! 1. [`preprocess`]: decode a JPEG or PNG, convert to gray or RGB, resize (shorter side then
//!    centre crop, or plain), scale, normalise, lay out as NCHW.
//! 2. [`Classifier`]: load an ONNX model (validated by `msn-onnx`), fix its batch size, let
//!    tract optimise it, run batches.
//! 3. [`topk`]: softmax and the k most probable classes.
//! 4. [`bench`]: latency percentiles and throughput, several models interleaved.
//! 5. [`info`]: inputs, outputs, ops, parameters and multiply-accumulates of any model.
//! 6. [`gan`]: generators, and the classifier score and Fréchet distance of their samples.
//! 7. [`stream`]: images one after another on a pipe (concatenated PNG/JPEG, MJPEG, raw RGB).
//! 8. [`evaluate`]: class-folder layouts, accuracy and the confusion matrix.
//!
//! ```no_run
//! use msn_runtime::{Classifier, LoadOptions};
//! let clf = Classifier::load("model.onnx", &LoadOptions::default())?;
//! let input = clf.preprocess().load("cat.png")?;
//! let probs = msn_runtime::softmax(&clf.run_one(&input)?);
//! for (class, p) in msn_runtime::topk(&probs, 3) {
//!     println!("{p:.3} {}", clf.label(class));
//! }
//! # Ok::<(), msn_runtime::Error>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

pub mod bench;
mod classifier;
mod error;
pub mod evaluate;
pub mod gan;
mod guard;
pub mod info;
pub mod model;
pub mod npy;
pub mod preprocess;
pub mod stream;
pub mod verify;

pub use classifier::{Classifier, LoadOptions, PreprocessOverrides};
pub use error::Error;
pub use model::{Model, NodeTime, Plan, Source, TensorSpec};
/// The kernels crate: its CPU probe and plan options ([`Plan::With`]).
pub use msn_kernels;
pub use preprocess::Preprocess;
/// tract's tensor, the type [`Model::run`] takes and returns.
pub use tract_onnx::prelude::Tensor;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs tract's matrix products on `threads` threads from now on (0: every core; 1: the
/// calling thread only). tract's executor is process-wide; it also runs msn-kernels' ops; tract's other non-matrix ops stay on one thread: with more than one thread,
/// a model's run is on one of the pool's (`on_executor`).
pub fn set_threads(threads: usize) -> usize {
    use tract_linalg::multithread::{set_default_executor, Executor};
    let n = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Executor::multithread(1) would still hand work to a pool: one thread is no pool.
    set_default_executor(if n == 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(n)
    });
    n
}

/// Runs `f` (a whole plan) on a thread of tract's executor when that is a pool of more than
/// one thread, else on the calling thread. Each parallel op then splits its work among the
/// pool's threads from inside the pool, instead of the calling thread handing every op to the
/// pool and sleeping until it is done. The pool's other threads stay awake for the whole run
/// ([`keep_looking`]): left to rayon, a thread with no work sleeps after a few microseconds,
/// and waking it again costs each of the ~50 ops of a mobile network a cross-thread wake-up.
pub(crate) fn on_executor<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tract_linalg::multithread::{current_tract_executor, multithread_tract_scope, Executor};
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 => {
            // The same executor on the pool's thread, were it only this thread's override.
            let executor = Executor::MultiThread(pool.clone());
            let helpers = pool.current_num_threads() - 1;
            // One run at a time on the pool. A thread waiting inside an op takes any pending
            // work, another caller's whole run included, and tract's matrix products keep
            // their scratch space in a thread-local `RefCell`: a second run's product nested
            // inside the first's on one thread panics ("already borrowed") and aborts. Each
            // run uses every thread of the pool, so queueing the callers costs no throughput.
            static ONE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
            pool.install(|| {
                let done = AtomicBool::new(false);
                rayon::scope(|s| {
                    for _ in 0..helpers {
                        s.spawn(|_| keep_looking(&done));
                    }
                    // Both set back when these guards drop, also if `f` panics: the helpers
                    // must end for the scope to end.
                    let _stop = SetOnDrop(&done);
                    let _busy = Busy::enter();
                    multithread_tract_scope(executor, f)
                })
            })
        }
        _ => f(),
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

thread_local! {
    /// Whether this thread is running a plan or a [`keep_looking`] helper (lower on its stack).
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread [`BUSY`] until dropped, then restores what it was.
struct Busy(bool);

impl Busy {
    fn enter() -> Busy {
        Busy(BUSY.with(|b| b.replace(true)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(self.0));
    }
}

/// A helper of [`on_executor`]: runs the pool's pending work (parts of the run's ops) as it
/// appears, until the run is `done`; between two pieces it yields the core, never sleeps.
///
/// Only a thread with nothing lower on its stack spins. The run's own thread, which can pop a
/// helper that no other thread has taken yet while it waits inside an op, returns at once
/// (spinning there, it would wait for its own run to end), and so does a thread already inside
/// another helper.
fn keep_looking(done: &AtomicBool) {
    if BUSY.with(|b| b.get()) {
        return;
    }
    let _busy = Busy::enter();
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            // Gives the core to another runnable thread (an image decoder), if there is one.
            std::thread::yield_now();
        }
    }
}

/// Ok when tract computes f16 natively on this CPU ([`Plan::Half`]); otherwise why not.
pub fn half_supported() -> std::result::Result<(), String> {
    #[cfg(target_arch = "aarch64")]
    {
        if msn_kernels::cpu::get().fp16() {
            return Ok(());
        }
        Err("--f16: this CPU has no half-precision arithmetic (it needs ARMv8.2-A FP16: Raspberry Pi 5, Jetson Orin; a Pi 4's Cortex-A72 has none)".into())
    }
    #[cfg(not(target_arch = "aarch64"))]
    Err(format!(
        "--f16: tract has half-precision kernels only for aarch64 with FP16 (Raspberry Pi 5, Jetson Orin); on {} it emulates f16, hundreds of times slower than f32",
        std::env::consts::ARCH
    ))
}

/// Softmax of one row of logits, computed stably (max subtracted first).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` largest values as `(index, value)`, largest first; ties keep the lower index first.
pub fn topk(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, values[i])).collect()
}

/// Reads a labels file: one class name per line, line i = class i; trailing blank lines dropped.
pub fn read_labels(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        cause: e,
    })?;
    let mut labels: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    while labels.last().is_some_and(|l| l.is_empty()) {
        labels.pop();
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0, 1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.999);
        let p = softmax(&[0.0, (2.0f32).ln()]);
        assert!((p[1] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn topk_picks_largest_first() {
        assert_eq!(
            topk(&[0.1, 0.5, 0.2, 0.5], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.2)]
        );
        assert_eq!(topk(&[0.1], 5).len(), 1);
    }

    /// A helper that a thread picks up while it is inside a run (or another helper) returns
    /// at once instead of spinning until its own run ends; on an idle thread it runs until
    /// `done`. Each case on its own thread, with a time limit, so a failure is not a hang.
    #[test]
    fn a_helper_spins_only_on_an_idle_thread() {
        use std::sync::mpsc;
        use std::time::Duration;
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (d, t) = (done.clone(), tx.clone());
        std::thread::spawn(move || {
            let _busy = Busy::enter();
            keep_looking(&d);
            t.send("busy").unwrap();
        });
        let busy = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(busy, Ok("busy"), "a helper on a busy thread spun");
        let d = done.clone();
        std::thread::spawn(move || {
            keep_looking(&d);
            // And the thread is idle again afterwards.
            assert!(!BUSY.with(|b| b.get()));
            tx.send("idle").unwrap();
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            rx.try_recv().is_err(),
            "a helper on an idle thread did not wait"
        );
        done.store(true, Ordering::Release);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("idle"));
    }
}
