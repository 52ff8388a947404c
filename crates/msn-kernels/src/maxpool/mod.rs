//! Float max pooling of NCHW planes (ResNet's 3x3 stride-2 pool after its stem) on the
//! depthwise kernel's layout: each plane copied once into a padded, phase-split buffer
//! ([`Geometry`], its padding the lowest finite f32, as tract and onnxruntime start a maximum), then every output is the largest of the taps read at
//! fixed offsets, 64 outputs (four AVX-512 vectors, eight AVX2 or sixteen NEON ones) at a time.
//!
//! tract 0.23.9 pools with generic Rust over its patch iterator: ResNet-18's 112x112x64 pool
//! took 1.3 ms against onnxruntime's 0.17, and twice that at the boards' opt-level "z".

// Elsewhere than x86-64 and aarch64 the kernel is compiled out and `available(cpu)` is
// false: the op is never built, and its parts go unused.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code, unused_variables, unreachable_code)
)]

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::MaxPool;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use crate::depthwise::Geometry;
use crate::graph::{image_shape, in_proportion, replace_each};
use crate::lanes::copy_rows;
use crate::Cpu;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

/// Max pooling of an f32 `[n, c, h, w]` (or `[c, h, w]`) tensor, no dilation, no indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MaxPool2d {
    /// `[n, c, h, w]`; `batch` whether the tensors have the `n` axis.
    input: [usize; 4],
    batch: bool,
    geometry: Geometry,
    /// What the kernel may use: AVX-512, AVX2 or NEON (only then is the op made).
    cpu: Cpu,
}

/// Whether `cpu` has what the kernel needs.
pub(crate) fn available(cpu: Cpu) -> bool {
    cpu.avx512() || cpu.avx2() || cpu.neon()
}

impl MaxPool2d {
    fn shape(&self) -> TVec<usize> {
        let [n, c, ..] = self.input;
        let g = &self.geometry;
        if self.batch {
            tvec![n, c, g.oh, g.ow]
        } else {
            tvec![c, g.oh, g.ow]
        }
    }
}

crate::graph::kernel_op!(MaxPool2d, "MsnMaxPool", Accurate);

impl EvalOp for MaxPool2d {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].try_as_plain_ram()?;
        let x = input.as_slice::<f32>()?;
        let [n, c, h, w] = self.input;
        ensure!(
            x.len() == n * c * h * w,
            "max pool input has the wrong size"
        );
        let g = &self.geometry;
        let plane = g.oh * g.ow;
        let mut output = crate::split::output_f32(&self.shape())?;
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let work = out.len() * g.offsets.len();
        tract_linalg::multithread::par_chunks_mut(out, plane, work, |first, chunk| {
            let mut buf = vec![0f32; g.buffer_len()];
            let mut wide = vec![0f32; g.wide_len()];
            for (i, out) in chunk.chunks_exact_mut(plane).enumerate() {
                let p = first + i;
                let x = &x[p * h * w..(p + 1) * h * w];
                // The padding is set once; after that only the plane's places change.
                match i {
                    0 => g.fill_group_padded(self.cpu, x, &mut buf, f32::MIN),
                    _ => g.refill_group(self.cpu, x, &mut buf),
                }
                max_plane(self.cpu, g, &buf, &mut wide)?;
                copy_rows((&wide, g.qw), (out, g.ow), g.oh, g.ow);
            }
            Ok(())
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MaxPool2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(self.shape())))
    }

    as_op!();
}

/// `wide[i] = max over taps t of buf[offsets[t] + i]` for the whole wide output (rows of
/// `qw`, of which the first `ow` are kept), on this CPU's kernel.
fn max_plane(cpu: Cpu, g: &Geometry, buf: &[f32], wide: &mut [f32]) -> TractResult<()> {
    // What the kernel's unchecked reads rely on.
    ensure!(g.reach + wide.len() <= buf.len() && wide.len().is_multiple_of(16));
    #[cfg(target_arch = "x86_64")]
    if cpu.avx512() {
        // SAFETY: `cpu`, so the CPU, has AVX-512 F; every tap's reads for the whole wide output are
        // within `buf` (checked above), and `wide` is whole vectors.
        unsafe { x86_64::max_plane_avx512(g, buf, wide) };
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if cpu.avx2() {
        // SAFETY: `cpu`, so the CPU, has AVX2; the reads and writes are bounded as above.
        unsafe { x86_64::max_plane_avx2(g, buf, wide) };
        return Ok(());
    }
    #[cfg(target_arch = "aarch64")]
    if cpu.neon() {
        // SAFETY: `cpu`, so the CPU, has NEON; the reads and writes are bounded as above.
        unsafe { aarch64::max_plane_neon(g, buf, wide) };
        return Ok(());
    }
    max_plane_plain(g, buf, wide);
    Ok(())
}

/// The plain definition of [`max_plane`] (`f32::max`, which passes over a NaN).
fn max_plane_plain(g: &Geometry, buf: &[f32], wide: &mut [f32]) {
    for (i, y) in wide.iter_mut().enumerate() {
        *y = g.offsets.iter().fold(f32::MIN, |m, &o| m.max(buf[o + i]));
    }
}

/// The op that replaces the `MaxPool` `node`, if this kernel covers it.
fn lower(model: &TypedModel, node: &TypedNode, cpu: Cpu) -> Option<MaxPool2d> {
    let pool = node.op_as::<MaxPool>()?;
    let spec = &pool.pool_spec;
    let x = model.outlet_fact(node.inputs[0]).ok()?;
    let ([n, c, h, w], batch) = image_shape(x, spec.data_format)?;
    if x.datum_type != f32::datum_type()
        || pool.with_index_outputs.is_some()
        || node.outputs.len() != 1
        || spec.kernel_shape.len() != 2
        || spec.dilations().iter().any(|&d| d != 1)
    {
        return None;
    }
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let strides = spec.strides();
    let pads = spec.computed_padding(&[h, w]);
    let (oh, ow) = (pads[0].convoluted, pads[1].convoluted);
    let (sh, sw) = (strides[0], strides[1]);
    if oh == 0 || ow == 0 || n * c == 0 || sh == 0 || sw == 0 || kh == 0 || kw == 0 {
        return None;
    }
    // Every window must hold at least one input value (a window wholly in the padding would
    // be the lowest f32 here, left to tract); and the padded copy must stay in proportion to the input and output (a
    // hostile model's padding and strides could make it enormous).
    let (pt, pl) = (pads[0].pad_before, pads[1].pad_before);
    if pt >= kh || pl >= kw || (oh - 1) * sh >= pt + h || (ow - 1) * sw >= pl + w {
        return None;
    }
    let ph = ((oh - 1).checked_mul(sh)?.checked_add(kh)?).max(pt.checked_add(h)?);
    let pw = ((ow - 1).checked_mul(sw)?.checked_add(kw)?).max(pl.checked_add(w)?);
    let buffer = (ph.checked_add(sh)?).saturating_mul(pw.checked_add(sw)?);
    if !in_proportion(buffer, h * w, oh * ow) {
        return None;
    }
    let geometry = Geometry::new(1, (h, w), (kh, kw), (sh, sw), (pt, pl), (oh, ow));
    Some(MaxPool2d {
        input: [n, c, h, w],
        batch,
        geometry,
        cpu,
    })
}

/// Replaces every float max pool [`MaxPool2d`] covers in a decluttered model, when this CPU
/// runs its kernel; returns how many.
pub fn rewrite(model: &mut TypedModel, cpu: Cpu) -> TractResult<usize> {
    if !available(cpu) {
        return Ok(0);
    }
    replace_each(model, |model, node| {
        Some((
            lower(model, node, cpu)?,
            tvec![node.inputs[0]],
            OutletId::new(node.id, 0),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Plan, Source};
    use msn_onnx::builder::{attr, GraphBuilder};
    use tract_onnx::prelude::{Framework, InferenceModelExt};

    /// A `MaxPool` on `[n, c, h, w]`.
    fn graph(
        (n, c, h, w): (usize, usize, usize, usize),
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        pads: [usize; 4],
        ceil: bool,
    ) -> Source {
        let mut b = GraphBuilder::new("pool");
        let x = b.input("x", &[n as i64, c as i64, h as i64, w as i64]);
        let attrs = [
            attr::ints("kernel_shape", &[kh as i64, kw as i64]),
            attr::ints("pads", &pads.map(|p| p as i64)),
            attr::ints("strides", &[sh as i64, sw as i64]),
            attr::int("ceil_mode", ceil as i64),
        ];
        let y = b.node("MaxPool", &[&x], "pool", &attrs);
        let out = |len: usize, k: usize, s: usize, p: usize| {
            let span = len + p - k;
            (if ceil { span.div_ceil(s) } else { span / s }) + 1
        };
        let (oh, ow) = (
            out(h, kh, sh, pads[0] + pads[2]),
            out(w, kw, sw, pads[1] + pads[3]),
        );
        b.output(&y, &[n as i64, c as i64, oh as i64, ow as i64]);
        let model = b.into_model(13);
        Source::from_bytes(msn_onnx::io::to_bytes(&model)).unwrap()
    }

    /// Our plan against tract's own (its unoptimised plan), on random inputs, bit for bit
    /// (a max is exact); and whether our op is in the plan.
    #[test]
    fn max_pools_match_tracts_own() {
        if !available(crate::cpu::get()) {
            eprintln!(
                "SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX-512, AVX2 or NEON"
            );
            return;
        }
        type Case = (
            (usize, usize, usize, usize),
            (usize, usize),
            (usize, usize),
            [usize; 4],
            bool,
        );
        let cases: [Case; 7] = [
            ((1, 8, 112, 112), (3, 3), (2, 2), [1; 4], false),
            ((2, 5, 17, 13), (3, 3), (2, 2), [1; 4], false),
            ((1, 4, 16, 16), (2, 2), (2, 2), [0; 4], false),
            ((1, 3, 15, 11), (3, 3), (1, 1), [1; 4], false),
            ((1, 6, 14, 14), (3, 2), (2, 3), [1, 0, 2, 1], false),
            ((1, 2, 10, 10), (3, 3), (2, 2), [0; 4], true),
            ((1, 3, 9, 20), (5, 5), (3, 3), [2; 4], false),
        ];
        for (shape, k, s, pads, ceil) in cases {
            let source = graph(shape, k, s, pads, ceil);
            let shapes = source.shapes();
            let ours = source.plan(&shapes, Plan::Optimized).unwrap();
            assert!(
                ours.ops().iter().any(|o| o == "MsnMaxPool"),
                "{shape:?} {k:?} {s:?}: {:?}",
                ours.ops()
            );
            let reference = source.plan(&shapes, Plan::Reference).unwrap();
            let len = shapes[0].iter().product::<usize>();
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
                .collect();
            let x = tract_onnx::prelude::Tensor::from_shape(&shapes[0], &x).unwrap();
            let (a, b) = (
                ours.run(vec![x.clone()]).unwrap(),
                reference.run(vec![x]).unwrap(),
            );
            assert_eq!(a[0].shape(), b[0].shape());
            let (a, b) = (
                a[0].to_plain_array_view::<f32>().unwrap(),
                b[0].to_plain_array_view::<f32>().unwrap(),
            );
            assert_eq!(a.len(), b.len());
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert_eq!(
                    p.to_bits(),
                    q.to_bits(),
                    "{shape:?} {k:?} {s:?} {pads:?}: output {i}"
                );
            }
        }
    }

    /// The vector kernel against the plain definition, on a plane with ragged rows, at
    /// every CPU level this machine has.
    #[test]
    fn the_kernel_matches_the_definition() {
        let levels: Vec<Cpu> = Cpu::detect()
            .levels()
            .into_iter()
            .filter(|&c| available(c))
            .collect();
        if levels.is_empty() {
            eprintln!("SKIPPED: this CPU has no AVX-512, AVX2 or NEON");
            return;
        }
        let g = Geometry::new(1, (23, 19), (3, 3), (2, 2), (1, 1), (12, 10));
        let x: Vec<f32> = (0..23 * 19)
            .map(|i| ((i * 7919) % 1013) as f32 - 500.0)
            .collect();
        for cpu in levels {
            eprintln!("max pool at {cpu}");
            let mut buf = vec![0f32; g.buffer_len()];
            g.fill_group_padded(cpu, &x, &mut buf, f32::MIN);
            let (mut a, mut b) = (vec![f32::NAN; g.wide_len()], vec![0f32; g.wide_len()]);
            max_plane(cpu, &g, &buf, &mut a).unwrap();
            max_plane_plain(&g, &buf, &mut b);
            assert_eq!(a, b, "{cpu}");
        }
    }

    /// Padding and strides that would make the padded copy enormous for a small output are
    /// refused (left to tract).
    #[test]
    fn enormous_padding_is_refused() {
        let source = graph((1, 2, 10, 10), (3, 3), (2, 2), [1; 4], false);
        let shapes = source.shapes();
        let plan = source.plan(&shapes, Plan::Optimized).unwrap();
        assert_eq!(
            plan.ops().iter().any(|o| o == "MsnMaxPool"),
            available(crate::cpu::get())
        );
        let mut b = GraphBuilder::new("pool");
        let x = b.input("x", &[1, 2, 10, 10]);
        let attrs = [
            attr::ints("kernel_shape", &[3000, 3000]),
            attr::ints("pads", &[2999; 4]),
            attr::ints("strides", &[3000, 3000]),
        ];
        let y = b.node("MaxPool", &[&x], "pool", &attrs);
        b.output(&y, &[1, 2, 2, 2]);
        let model = b.into_model(13);
        let bytes = msn_onnx::io::to_bytes(&model);
        let typed = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .unwrap()
            .into_typed()
            .unwrap()
            .into_decluttered()
            .unwrap();
        let pool = typed.nodes.iter().find(|n| n.op_is::<MaxPool>()).unwrap();
        assert!(lower(&typed, pool, Cpu::detect()).is_none());
    }
}
