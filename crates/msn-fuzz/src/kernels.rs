//! The `kernels` target: differential fuzzing of msn-kernels.
//!
//! The bytes describe one small graph of one op: a float convolution (random kernel, stride
//! 1-4, dilation, pads, groups, odd channel counts and sizes, a bias or not, a ReLU or a clip
//! after it), a depthwise convolution, a max pool (ceil mode or not) or an int8 `QLinearConv`
//! between a quantize and a dequantize step (random scales, zero points, per-tensor or
//! per-channel weight scales). The graph is planned by tract alone (our kernels off) and with
//! every kernel at each CPU level this machine has (`MSN_CPU` caps them), run on the same
//! input, and every output is held to the op's plain-Rust reference
//! (`msn_kernels::reference`): within 1e-4 of the largest output value, or for a
//! convolution of the largest sum of absolute terms when that is larger (int8: one code).
//!
//! A plan tract builds but ours cannot, or any mismatch, is a finding (a panic).

use msn_kernels::reference::{self, Window};
use msn_kernels::testing::{relative_error, Planner, Source};
use msn_kernels::{Cpu, Options};
use msn_onnx::builder::{attr, GraphBuilder};
use msn_onnx::proto::tensor_proto::DataType;
use tract_onnx::prelude::Tensor;

/// The relative tolerance of float outputs against the reference.
pub const TOLERANCE: f64 = 1e-4;

/// Reads the case's choices from the fuzzer's bytes (zeros once they run out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// A value in `lo..=hi`.
    fn pick(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.byte() as usize % (hi - lo + 1)
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn seed(&mut self) -> u64 {
        (0..8).fold(0u64, |s, _| s << 8 | self.byte() as u64)
    }
}

/// What a case computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// A float convolution in `groups` groups, then `tail` (0 none, 1 ReLU, 2 clip 0..6).
    Conv {
        groups: usize,
        cout: usize,
        bias: bool,
        tail: u8,
    },
    /// A max pool.
    MaxPool { ceil: bool },
    /// An int8 convolution, one group.
    QConv {
        cout: usize,
        per_channel: bool,
        x_scale: f32,
        x0: u8,
        y_scale: f32,
        y0: u8,
        bias: bool,
    },
}

/// One case: an op on an input of `[n, c, h, w]` through `window`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Case {
    pub op: Op,
    pub input: [usize; 4],
    pub window: Window,
    pub seed: u64,
}

impl Case {
    /// The case the bytes describe, if its kernel fits its input.
    pub fn decode(data: &[u8]) -> Option<Case> {
        let mut b = Bytes(data);
        let kind = b.byte() % 4;
        let n = b.pick(1, 2);
        let (h, w) = (b.pick(1, 20), b.pick(1, 20));
        let kernel = [b.pick(1, 5), b.pick(1, 5)];
        let strides = [b.pick(1, 4), b.pick(1, 4)];
        let dilations = [b.pick(1, 3), b.pick(1, 3)];
        let pads = [b.pick(0, 4), b.pick(0, 4), b.pick(0, 4), b.pick(0, 4)];
        let conv = Window {
            kernel,
            strides,
            dilations,
            pads,
        };
        let (op, c, window) = match kind {
            // One group or several, odd counts.
            0 => {
                let groups = if b.flag() { 1 } else { b.pick(1, 4) };
                let (cg, og) = (b.pick(1, 9), b.pick(1, 9));
                let op = Op::Conv {
                    groups,
                    cout: og * groups,
                    bias: b.flag(),
                    tail: b.byte() % 3,
                };
                (op, cg * groups, conv)
            }
            // Depthwise: one group per channel, one or two outputs per channel.
            1 => {
                let c = b.pick(1, 40);
                let op = Op::Conv {
                    groups: c,
                    cout: c * b.pick(1, 2),
                    bias: b.flag(),
                    tail: b.byte() % 3,
                };
                (op, c, conv)
            }
            // ONNX's pads of a pool are smaller than its kernel.
            2 => {
                let c = b.pick(1, 40);
                let window = Window {
                    kernel,
                    strides,
                    dilations: [b.pick(1, 2), b.pick(1, 2)],
                    pads: [
                        pads[0] % kernel[0],
                        pads[1] % kernel[1],
                        pads[2] % kernel[0],
                        pads[3] % kernel[1],
                    ],
                };
                (Op::MaxPool { ceil: b.flag() }, c, window)
            }
            _ => {
                let c = b.pick(1, 24);
                let op = Op::QConv {
                    cout: b.pick(1, 24),
                    per_channel: b.flag(),
                    x_scale: 0.005 + b.byte() as f32 / 2048.0,
                    x0: b.byte(),
                    y_scale: 0.01 + b.byte() as f32 / 256.0,
                    y0: b.byte(),
                    bias: b.flag(),
                };
                (op, c, conv)
            }
        };
        let seed = b.seed();
        let case = Case {
            op,
            input: [n, c, h, w],
            window,
            seed,
        };
        case.output()?;
        Some(case)
    }

    fn ceil(&self) -> bool {
        matches!(self.op, Op::MaxPool { ceil: true })
    }

    /// The output's `[n, c, h, w]`, if the kernel fits.
    pub fn output(&self) -> Option<[usize; 4]> {
        let [n, c, h, w] = self.input;
        let [oh, ow] = self.window.output([h, w], self.ceil())?;
        let co = match self.op {
            Op::Conv { cout, .. } | Op::QConv { cout, .. } => cout,
            Op::MaxPool { .. } => c,
        };
        Some([n, co, oh, ow])
    }

    /// The weights of a convolution, as floats in `[-1, 1)` or int8 codes.
    fn kernel_len(&self) -> usize {
        let [_, c, _, _] = self.input;
        let [kh, kw] = self.window.kernel;
        match self.op {
            Op::Conv { groups, cout, .. } => cout * (c / groups) * kh * kw,
            Op::QConv { cout, .. } => cout * c * kh * kw,
            Op::MaxPool { .. } => 0,
        }
    }

    /// The input, the model and what the reference computes for it.
    pub fn build(&self) -> (Tensor, Vec<u8>, Tensor, f64) {
        let [n, c, h, w] = self.input;
        let out = self.output().expect("decode checked the output");
        let len = n * c * h * w;
        let x = msn_kernels::testing::noise(self.seed, len);
        let k = msn_kernels::testing::noise(self.seed ^ 0x9e37_79b9_7f4a_7c15, self.kernel_len());
        let wn = &self.window;
        let i64s = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let geometry = vec![
            attr::ints("kernel_shape", &i64s(&wn.kernel)),
            attr::ints("strides", &i64s(&wn.strides)),
            attr::ints("dilations", &i64s(&wn.dilations)),
            attr::ints("pads", &i64s(&wn.pads)),
        ];
        let f32s = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        let mut b = GraphBuilder::new("kernels");
        let xn = b.input("x", &i64s(&self.input));
        let (want, tolerance) = match self.op {
            Op::Conv {
                groups,
                cout,
                bias,
                tail,
            } => {
                let wshape = [cout, c / groups, wn.kernel[0], wn.kernel[1]];
                let wi = b.initializer_raw("w", DataType::Float, &wshape, f32s(&k));
                let bv: Vec<f32> = msn_kernels::testing::noise(self.seed ^ 7, cout);
                let mut inputs = vec![xn.clone(), wi];
                if bias {
                    inputs.push(b.initializer_raw("b", DataType::Float, &[cout], f32s(&bv)));
                }
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let mut attrs = geometry.clone();
                attrs.push(attr::int("group", groups as i64));
                let mut y = b.node("Conv", &refs, "conv", &attrs);
                let clip = match tail {
                    1 => {
                        y = b.node("Relu", &[&y], "relu", &[]);
                        (0.0, f32::INFINITY)
                    }
                    2 => {
                        let lo = b.initializer_raw("lo", DataType::Float, &[], f32s(&[0.0]));
                        let hi = b.initializer_raw("hi", DataType::Float, &[], f32s(&[0.5]));
                        y = b.node("Clip", &[&y, &lo, &hi], "clip", &[]);
                        (0.0, 0.5)
                    }
                    _ => (f32::NEG_INFINITY, f32::INFINITY),
                };
                b.output(&y, &i64s(&out));
                let (v, shape) = reference::conv2d(
                    &x,
                    self.input,
                    &k,
                    cout,
                    bias.then_some(&bv[..]),
                    groups,
                    wn,
                    clip,
                );
                // A sum of terms that cancel is exact only to the size of the terms: the
                // tolerance is relative to the largest sum of absolute terms when that is
                // larger than the largest output (a clip to [0, 0.5] over a few such sums).
                let abs = |v: &[f32]| v.iter().map(|f| f.abs()).collect::<Vec<f32>>();
                let bound = bias.then(|| abs(&bv));
                let (terms, _) = reference::conv2d(
                    &abs(&x),
                    self.input,
                    &abs(&k),
                    cout,
                    bound.as_deref(),
                    groups,
                    wn,
                    (f32::NEG_INFINITY, f32::INFINITY),
                );
                let largest = |v: &[f32]| v.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let ratio = largest(&terms) / largest(&v).max(1e-6);
                (
                    Tensor::from_shape(&shape, &v).expect("shape"),
                    TOLERANCE * ratio.max(1.0),
                )
            }
            Op::MaxPool { ceil } => {
                let mut attrs = geometry.clone();
                attrs.push(attr::int("ceil_mode", ceil as i64));
                let y = b.node("MaxPool", &[&xn], "pool", &attrs);
                b.output(&y, &i64s(&out));
                let (v, shape) = reference::max_pool2d(&x, self.input, wn, ceil);
                (Tensor::from_shape(&shape, &v).expect("shape"), TOLERANCE)
            }
            Op::QConv {
                cout,
                per_channel,
                x_scale,
                x0,
                y_scale,
                y0,
                bias,
            } => {
                let xs = b.initializer_raw("xs", DataType::Float, &[], f32s(&[x_scale]));
                let x0n = b.initializer_raw("x0", DataType::Uint8, &[], vec![x0]);
                let q = b.node("QuantizeLinear", &[&xn, &xs, &x0n], "xq", &[]);
                let codes: Vec<i8> = k.iter().map(|v| (v * 127.0) as i8).collect();
                let wshape = [cout, c, wn.kernel[0], wn.kernel[1]];
                let wq = b.initializer_raw(
                    "w",
                    DataType::Int8,
                    &wshape,
                    codes.iter().map(|&v| v as u8).collect(),
                );
                let taps = (c * wn.kernel[0] * wn.kernel[1]) as f32;
                let mut ws: Vec<f32> = msn_kernels::testing::noise(self.seed ^ 3, cout)
                    .iter()
                    .map(|v| (0.002 + 0.004 * v.abs()) * 4.0 / taps.sqrt())
                    .collect();
                if !per_channel {
                    ws.truncate(1);
                }
                let dims: &[usize] = if per_channel { &[cout] } else { &[] };
                let wsn = b.initializer_raw("ws", DataType::Float, dims, f32s(&ws));
                let w0 = b.initializer_raw("w0", DataType::Int8, dims, vec![0; ws.len()]);
                let ysn = b.initializer_raw("ys", DataType::Float, &[], f32s(&[y_scale]));
                let y0n = b.initializer_raw("y0", DataType::Uint8, &[], vec![y0]);
                let bv: Vec<i32> = msn_kernels::testing::noise(self.seed ^ 5, cout)
                    .iter()
                    .map(|v| (v * 2000.0) as i32)
                    .collect();
                let mut inputs = vec![q, xs.clone(), x0n, wq, wsn, w0, ysn.clone(), y0n.clone()];
                if bias {
                    let raw = bv.iter().flat_map(|v| v.to_le_bytes()).collect();
                    inputs.push(b.initializer_raw("bias", DataType::Int32, &[cout], raw));
                }
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let yq = b.node("QLinearConv", &refs, "yq", &geometry);
                let y = b.node("DequantizeLinear", &[&yq, &ysn, &y0n], "y", &[]);
                b.output(&y, &i64s(&out));
                let inv = 1.0 / x_scale;
                let xq: Vec<u8> = x
                    .iter()
                    .map(|&v| reference::quantize_u8(v, inv, x0))
                    .collect();
                let m: Vec<f32> = (0..cout)
                    .map(|o| x_scale * ws[if per_channel { o } else { 0 }] / y_scale)
                    .collect();
                let (codes, shape) = reference::qlinear_conv(
                    &xq,
                    self.input,
                    x0,
                    &codes,
                    cout,
                    bias.then_some(&bv[..]),
                    wn,
                    &m,
                    y0,
                );
                let v: Vec<f32> = codes
                    .iter()
                    .map(|&q| (q as f32 - y0 as f32) * y_scale)
                    .collect();
                // One code, relative to the largest output.
                let scale = v.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let tolerance = (y_scale * 1.001 / scale) as f64;
                (Tensor::from_shape(&shape, &v).expect("shape"), tolerance)
            }
        };
        let model = b.into_model(13);
        let x = Tensor::from_shape(&self.input, &x).expect("shape");
        (x, msn_onnx::io::to_bytes(&model), want, tolerance)
    }
}

/// What one case did: which plans ran, and how many of ours took the op.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Whether tract could plan and run the graph at all (if not, nothing was compared).
    pub compared: bool,
    /// Plans of ours whose graph holds one of our ops.
    pub ours: usize,
}

/// Runs a case: tract's own plan and ours at each CPU level, each held to the reference.
pub fn check(case: &Case) -> Outcome {
    let (x, bytes, want, tolerance) = case.build();
    let Ok(source) = Source::from_bytes(bytes) else {
        return Outcome::default();
    };
    // Parsed and analysed once; each plan starts from a copy.
    let Ok(typed) = source.typed(&source.shapes()) else {
        return Outcome::default();
    };
    let mut planner = Planner::new(typed);
    // tract's own plan: graphs it refuses (or cannot run) are outside what we compare.
    let Ok(tract) = planner.plan(&Options::none()) else {
        return Outcome::default();
    };
    let Ok(mut got) = tract.run(vec![x.clone()]) else {
        return Outcome::default();
    };
    let err = relative_error(&want, &got.remove(0));
    assert!(
        err <= tolerance,
        "tract's own plan differs from the reference by {err:e} on {case:?}"
    );
    let mut ours = 0;
    for cpu in levels() {
        let plan = planner.plan(&Options::all(cpu)).unwrap_or_else(|e| {
            panic!("tract plans {case:?} but not with our kernels at {cpu}: {e:#}")
        });
        ours += plan.ops().iter().any(|o| o.starts_with("Msn")) as usize;
        let mut got = plan
            .run(vec![x.clone()])
            .unwrap_or_else(|e| panic!("our plan at {cpu} fails on {case:?}: {e:#}"));
        let err = relative_error(&want, &got.remove(0));
        assert!(
            err <= tolerance,
            "our kernels at {cpu} differ from the reference by {err:e} (ops {:?}) on {case:?}",
            plan.ops()
        );
    }
    Outcome {
        compared: true,
        ours,
    }
}

/// The CPU levels each case runs at: every one this machine has, up to `MSN_CPU`'s cap.
pub fn levels() -> Vec<Cpu> {
    msn_kernels::cpu::get().levels()
}

/// The fuzz target.
pub fn target(data: &[u8]) {
    if let Some(case) = Case::decode(data) {
        check(&case);
    }
}
