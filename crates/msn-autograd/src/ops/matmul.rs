//! Matrix product of two 2-D tensors, on matrixmultiply's sgemm through ndarray.

use crate::kernels::matmul;
use crate::Var;

impl Var {
    /// `[m, k] x [k, n] -> [m, n]`.
    pub fn matmul(&self, other: &Var) -> Var {
        let y = {
            let (av, bv) = (self.value(), other.value());
            let (a, b) = (view_2d(&av), view_2d(&bv));
            assert_eq!(a.ncols(), b.nrows(), "matmul: inner dimensions differ");
            matmul(a, b).into_dyn()
        };
        // Computed operands are read again at the backward pass, not copied; leaves
        // (weights an optimizer may update before the backward pass) are copied.
        if !crate::is_grad_enabled() || !(self.requires_grad() || other.requires_grad()) {
            return Var::constant(y);
        }
        let (x, w) = (Saved::new(self), Saved::new(other));
        Var::from_op(
            y,
            vec![self.clone(), other.clone()],
            Box::new(move |g, needs| {
                let g = view_2d(&g);
                vec![
                    needs[0].then(|| w.with(|b| matmul(g, view_2d(b).t()).into_dyn())),
                    needs[1].then(|| x.with(|a| matmul(view_2d(a).t(), g).into_dyn())),
                ]
            }),
        )
    }
}

/// An operand kept for the backward pass.
enum Saved {
    Op(Var),
    Leaf(crate::Array),
}

impl Saved {
    fn new(v: &Var) -> Saved {
        match v.is_leaf() {
            true => Saved::Leaf(v.value().clone()),
            false => Saved::Op(v.clone()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&crate::Array) -> R) -> R {
        match self {
            Saved::Op(v) => f(&v.value()),
            Saved::Leaf(a) => f(a),
        }
    }
}

/// A tensor that must have two axes, as a matrix view.
fn view_2d(a: &crate::Array) -> ndarray::ArrayView2<'_, f32> {
    a.view()
        .into_dimensionality::<ndarray::Ix2>()
        .expect("matmul: a 2-D tensor")
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;

    #[test]
    fn matmul_gradient_matches_finite_differences() {
        let a = spread(&[3, 5], -1.0, 1.0, 5);
        let b = spread(&[5, 2], -1.0, 1.0, 6);
        check("matmul", &[&a, &b], |v| v[0].matmul(&v[1])).unwrap();
    }
}
