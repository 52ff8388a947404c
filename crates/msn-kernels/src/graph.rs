//! What the rewrites before tract's optimiser ([`crate::depthwise`], [`crate::qconv`],
//! [`crate::dense`], [`crate::maxpool`]) read off a decluttered model (constants, the bounds
//! of a clip, an image input's shape), and the loop that puts their ops in.

use std::sync::Arc;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math::{Max, Min};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// The constant a node's input holds, if it is one.
pub(crate) fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(outlet).ok()?.konst.clone()
}

/// The constant a node's input holds, as plain values of type `T`, if it is one of that type.
pub(crate) fn values<T: Datum + Copy>(model: &TypedModel, outlet: OutletId) -> Option<Vec<T>> {
    let t = konst(model, outlet)?;
    if t.datum_type() != T::datum_type() {
        return None;
    }
    Some(t.try_as_plain_ram().ok()?.as_slice::<T>().ok()?.to_vec())
}

/// `v` as `len` values: itself, or its one value repeated.
pub(crate) fn per_channel<T: Copy>(v: Vec<T>, len: usize) -> Option<Vec<T>> {
    match v.len() {
        1 => Some(vec![v[0]; len]),
        l if l == len => Some(v),
        _ => None,
    }
}

/// `Some(bound)` if `node` is `Max` (`is_max`) or `Min` of its other input and a constant
/// scalar f32.
pub(crate) fn clip_bound(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
) -> Option<(bool, f32)> {
    let op = node.op_as::<TypedBinOp>()?;
    let is_max = op.0.is::<Max>();
    if !is_max && !op.0.is::<Min>() || node.inputs.len() != 2 {
        return None;
    }
    let other = node.inputs.iter().find(|&&i| i != from)?;
    let v = values::<f32>(model, *other)?;
    match v[..] {
        [v] => Some((is_max, v)),
        _ => None,
    }
}

/// The concrete shapes of a node's first input and first output, if both are known.
pub(crate) fn concrete_shapes(
    model: &TypedModel,
    node: &TypedNode,
) -> Option<(TVec<usize>, TVec<usize>)> {
    let x = model.outlet_fact(*node.inputs.first()?).ok()?;
    let y = &node.outputs.first()?.fact;
    Some((x.shape.as_concrete()?.into(), y.shape.as_concrete()?.into()))
}

/// Whether a kernel's scratch buffer of `scratch` values is in proportion to the input and
/// output it serves (`input` and `output` values): at most four times both, plus 64 Ki.
/// A hostile model can ask for padding and strides that make a padded copy of a small input
/// enormous while the output stays small; such a convolution is left to tract.
pub(crate) fn in_proportion(scratch: usize, input: usize, output: usize) -> bool {
    scratch
        <= input
            .saturating_add(output)
            .saturating_mul(4)
            .saturating_add(1 << 16)
}

/// The `[n, c, h, w]` shape of a 2-D image op's input in `format` (NCHW, or CHW as a batch
/// of one), and whether the tensors have the batch axis.
pub(crate) fn image_shape(fact: &TypedFact, format: DataFormat) -> Option<([usize; 4], bool)> {
    let shape = fact.shape.as_concrete()?;
    match (format, shape) {
        (DataFormat::NCHW, &[n, c, h, w]) => Some(([n, c, h, w], true)),
        (DataFormat::CHW, &[c, h, w]) => Some(([1, c, h, w], false)),
        _ => None,
    }
}

/// Replaces, one at a time in evaluation order, every node `lower` finds an op for: the op
/// reads `inputs` and stands in for `last` (the node's output, or the last op after it that
/// it takes in). Returns how many.
pub(crate) fn replace_each<O: TypedOp>(
    model: &mut TypedModel,
    lower: impl Fn(&TypedModel, &TypedNode) -> Option<(O, TVec<OutletId>, OutletId)>,
) -> TractResult<usize> {
    let mut count = 0;
    loop {
        let found = model
            .eval_order()?
            .into_iter()
            .find_map(|id| lower(model, &model.nodes[id]).map(|l| (id, l)));
        let Some((id, (op, inputs, last))) = found else {
            break;
        };
        let mut patch = TypedModelPatch::default();
        let taps = inputs
            .iter()
            .map(|&i| patch.tap_model(model, i))
            .collect::<TractResult<TVec<_>>>()?;
        let y = patch.wire_node(&model.nodes[id].name, op, &taps)?;
        patch.shunt_outside(model, last, y[0])?;
        patch.apply(model)?;
        model.compact()?;
        count += 1;
    }
    Ok(count)
}

/// tract's `Op` for one of our kernels' ops: its name, its `Debug` form as its info, and
/// whether it rounds as tract's own op does (`Accurate`) or not (`Rounding`).
macro_rules! kernel_op {
    ($op:ty, $name:literal, $validation:ident) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            fn info(&self) -> TractResult<Vec<String>> {
                Ok(vec![format!("{self:?}")])
            }

            fn validation(&self) -> Validation {
                Validation::$validation
            }

            op_as_typed_op!();
        }
    };
}
pub(crate) use kernel_op;
