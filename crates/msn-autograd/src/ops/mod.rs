//! The ops, one module per family. Each op computes its value and builds its backward rule in
//! the same function; its tests check the gradient against finite differences.

pub mod binary;
pub mod conv;
pub mod elementwise;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod shape;

use crate::Array;
use ndarray::{Axis, IxDyn};

/// Sums a gradient over the axes along which an operand of shape `shape` was broadcast, so it
/// gets the operand's shape back.
pub(crate) fn unbroadcast(grad: &Array, shape: &[usize]) -> Array {
    let mut g = grad.clone();
    while g.ndim() > shape.len() {
        g = g.sum_axis(Axis(0));
    }
    for (axis, &n) in shape.iter().enumerate() {
        if n == 1 && g.shape()[axis] != 1 {
            g = g.sum_axis(Axis(axis)).insert_axis(Axis(axis));
        }
    }
    g.into_shape_with_order(IxDyn(shape))
        .expect("unbroadcast keeps the element count")
}
