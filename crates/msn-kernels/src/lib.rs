//! # msn-kernels: our vector kernels, plugged into tract
//!
//! tract plans a model; before its optimiser runs, [`rewrite`] replaces the ops one of our
//! kernels covers by that kernel's tract op, and after it [`rewrite_optimized`] swaps tract's
//! `QuantizeLinear` for ours. One module per op family, each with its op, its lowering (what
//! it takes in from the graph), a plain-Rust reference that defines what it computes
//! ([`reference`]), and the per-architecture code beside it:
//!
//! | module | op | x86-64 | aarch64 | elsewhere |
//! |---|---|---|---|---|
//! | [`dense`] | float convolutions, one group, with bias, clips and a residual fused | AVX-512 | NEON (not in the default plan: tract's is cheaper) | tract |
//! | [`depthwise`] | float depthwise and grouped convolutions with few taps per group, and u8 ones through float | AVX-512, AVX2 | NEON | plain Rust |
//! | [`maxpool`] | float 2-D max pool | AVX-512 | NEON | tract |
//! | [`qconv`] | int8 convolutions with the requantization fused | AVX-512 VNNI | `sdot`, or NEON without it | tract |
//! | [`quant`] | f32 -> u8 quantize | plain Rust (vectorised by the compiler) | same | same |
//!
//! [`probe`] marks where a plan's nodes start and end for `scripts/board_cost.sh`'s
//! instruction counts under qemu.
//!
//! Every kernel asks the one CPU probe, [`cpu`], which `MSN_CPU` caps; which kernels a plan
//! gets is an argument ([`Options`]), not a global. The ops share their work across tract's
//! executor ([`split`]); [`lanes`] holds what several families share.
//!
//! Safety: every kernel entry checks its buffers' lengths and the geometry it reads through
//! with checked arithmetic before any unchecked access, whatever checked the model before;
//! outputs are fully written (tests fill them with NaN first); every `unsafe` block says what
//! it relies on in a `SAFETY:` comment.

// Off x86-64 the AVX paths fall away: the `Cpu` they were chosen by goes unread and the
// `unsafe` blocks around their calls hold only safe code. (Lints stay strict on x86-64, where
// CI runs clippy with warnings denied.)
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(unused_variables, unused_unsafe, unused_imports)
)]

pub mod cpu;
pub mod dense;
pub mod depthwise;
mod dwlanes;
mod graph;
pub mod lanes;
pub mod maxpool;
pub mod probe;
pub mod qconv;
pub mod quant;
pub mod reference;
mod split;
pub mod testing;

pub use cpu::{Cpu, Level};
use tract_onnx::tract_core::internal::*;

/// Which of our kernels a plan gets, and the CPU level they may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Options {
    /// The features the kernels may use ([`cpu::get`] unless a test or an A/B run says).
    pub cpu: Cpu,
    /// Float one-group convolutions ([`dense`]).
    pub dense: bool,
    /// Depthwise and small grouped convolutions ([`depthwise`]).
    pub depthwise: bool,
    /// Depthwise convolutions of small planes with channels on the vector lanes (part of
    /// [`depthwise`]); off, they take the plane kernel.
    pub channel_lanes: bool,
    /// Max pools ([`maxpool`]).
    pub max_pool: bool,
    /// int8 convolutions ([`qconv`]) and the quantize step ([`quant`]).
    pub int8: bool,
}

impl Options {
    /// Every kernel that beats tract's on `cpu`: all of them, but for the float one-group
    /// convolutions on aarch64, where tract's assembly matrix kernels execute fewer
    /// instructions than our NEON tile (on a Cortex-A76, ResNet-18's convolutions 748 M
    /// against tract's 661 M; see docs/RESULTS.md). Set `dense` to run ours there.
    pub fn all(cpu: Cpu) -> Options {
        Options {
            cpu,
            dense: !cpu.neon(),
            depthwise: true,
            channel_lanes: true,
            max_pool: true,
            int8: true,
        }
    }

    /// None of our kernels: tract's own plan.
    pub fn none() -> Options {
        Options {
            cpu: cpu::get(),
            dense: false,
            depthwise: false,
            channel_lanes: false,
            max_pool: false,
            int8: false,
        }
    }
}

impl Default for Options {
    /// Every kernel, on [`cpu::get`].
    fn default() -> Options {
        Options::all(cpu::get())
    }
}

/// How many ops of each family [`rewrite`] put in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub depthwise: usize,
    pub int8: usize,
    pub dense: usize,
    pub max_pool: usize,
}

/// tract's declutter, for a model [`rewrite`] will put our ops in. Where tract has a
/// channel-last depthwise kernel (aarch64), its declutter moves the channels of every
/// depthwise convolution's input last (`ChangeAxes`), and the convolutions around follow:
/// none of them is then NCHW, which our kernels take. That pass is left out here when our
/// kernels take the depthwise convolutions on NEON, or the int8 convolutions of a quantized
/// model; tract's optimiser runs the whole declutter again after [`rewrite`], where our ops
/// stand in for those convolutions. On a Cortex-A76 (instructions under qemu) the pass cost
/// 170 M of EfficientNet-Lite0's 426 M load, and tract's channel-last depthwise kernel
/// plus its matrix products 166.7 M an inference, against 165.8 M with ours in NCHW; an
/// int8 model's quantized convolutions were left to tract's int8 path, 3x slower than ours
/// (EfficientNet-Lite0 428 M against 151 M).
pub fn declutter(mut model: TypedModel, options: &Options) -> TractResult<TypedModel> {
    if !keeps_channels_first(&model, options) {
        return model.into_decluttered();
    }
    let mut optimizer = tract_onnx::tract_core::optim::Optimizer::declutter();
    optimizer
        .passes
        .retain(|p| format!("{p:?}") != "ChangeAxes");
    optimizer.optimize(&mut model)?;
    Ok(model)
}

/// Whether [`declutter`] leaves tract's `ChangeAxes` pass out for this model and these
/// options (its only two outcomes: models declutter alike when this is alike).
pub fn keeps_channels_first(model: &TypedModel, options: &Options) -> bool {
    let quantized = || {
        model.nodes.iter().any(|n| {
            n.op_as::<tract_onnx::tract_core::ops::cnn::Conv>()
                .is_some_and(|c| c.q_params.is_some())
        })
    };
    let ours = (options.depthwise && options.cpu.neon())
        || (options.int8 && qconv::available(options.cpu) && quantized());
    ours && tract_linalg::routines::depthwise_c_f32().is_some()
}

/// Puts our ops in a decluttered model, before tract's optimiser: every node a kernel in
/// `options` covers on `options.cpu`.
pub fn rewrite(model: &mut TypedModel, options: &Options) -> TractResult<Rewritten> {
    let mut done = Rewritten::default();
    if options.depthwise {
        done.depthwise = depthwise::rewrite(model, options.cpu, options.channel_lanes)
            .context("lower depthwise convolutions")?;
    }
    if options.int8 {
        done.int8 = qconv::rewrite(model, options.cpu).context("lower int8 convolutions")?;
    }
    if options.dense {
        done.dense =
            dense::rewrite(model, options.cpu).context("lower float one-group convolutions")?;
    }
    if options.max_pool {
        done.max_pool = maxpool::rewrite(model, options.cpu).context("lower max pools")?;
    }
    Ok(done)
}

/// Swaps in our ops in a model tract has optimised: its f32 -> u8 quantize steps.
pub fn rewrite_optimized(model: &mut TypedModel, options: &Options) -> TractResult<usize> {
    if !options.int8 {
        return Ok(0);
    }
    quant::rewrite(model).context("swap in QuantizeU8")
}
