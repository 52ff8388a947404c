//! Matrix products of 2-D tensors: `matmul` (on the sgemm kernels of [`crate::kernels`]) and a
//! linear layer's `x W^T` (`linear`, on [`crate::kernels::linear`]).

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

impl Var {
    /// A linear layer's product `x W^T`: `x` `[n, k]`, `W` `[o, k]` (PyTorch's layout) ->
    /// `[n, o]`. The same as `x.matmul(&w.t())` without the transposed copies: every pass
    /// reads both operands along `k`, where they are contiguous, on all threads (see
    /// [`crate::kernels::linear`]).
    pub fn linear(&self, w: &Var) -> Var {
        let (n, k, o) = {
            let (xs, ws) = (self.shape(), w.shape());
            assert!(
                xs.len() == 2 && ws.len() == 2 && xs[1] == ws[1],
                "linear: x [n, k] and w [o, k], got {xs:?} and {ws:?}"
            );
            (xs[0], xs[1], ws[0])
        };
        let y = {
            let (xv, wv) = (self.value(), w.value());
            let (xv, wv) = (xv.as_standard_layout(), wv.as_standard_layout());
            let y = linear::forward(slice(&xv), slice(&wv), n, k, o);
            crate::Array::from_shape_vec(ndarray::IxDyn(&[n, o]), y).expect("[n, o]")
        };
        if !crate::is_grad_enabled() || !(self.requires_grad() || w.requires_grad()) {
            return Var::constant(y);
        }
        let (x, wk) = (Saved::new(self), Saved::new(w));
        Var::from_op(
            y,
            vec![self.clone(), w.clone()],
            Box::new(move |g, needs| {
                let g = g.as_standard_layout();
                let g = slice(&g);
                let dx = needs[0].then(|| {
                    wk.with(|w| linear::input_grad(g, slice(&w.as_standard_layout()), n, k, o))
                });
                let dw = needs[1].then(|| {
                    x.with(|x| linear::weight_grad(g, slice(&x.as_standard_layout()), n, k, o))
                });
                vec![
                    dx.map(|v| {
                        crate::Array::from_shape_vec(ndarray::IxDyn(&[n, k]), v).expect("[n, k]")
                    }),
                    dw.map(|v| {
                        crate::Array::from_shape_vec(ndarray::IxDyn(&[o, k]), v).expect("[o, k]")
                    }),
                ]
            }),
        )
    }
}

fn slice<'a>(a: &'a ndarray::CowArray<'_, f32, ndarray::IxDyn>) -> &'a [f32] {
    a.as_slice().expect("standard layout")
}

use crate::kernels::linear;

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
    fn linear_gradient_matches_finite_differences() {
        // k = 37: a tail past the 16-lane blocks; o = 6: a tail past the 4-row blocks.
        let x = spread(&[3, 37], -1.0, 1.0, 7);
        let w = spread(&[6, 37], -1.0, 1.0, 8);
        check("linear", &[&x, &w], |v| v[0].linear(&v[1])).unwrap();
    }

    /// `linear` against `matmul` with the transposed weight, on a shape that splits over
    /// threads (a classifier head: 64 images, 8192 features, 10 classes).
    #[test]
    fn linear_matches_matmul_of_the_transpose() {
        use crate::Var;
        let x = Var::parameter(spread(&[64, 8192], -1.0, 1.0, 9));
        let w = Var::parameter(spread(&[10, 8192], -0.1, 0.1, 10));
        let (a, b) = (x.linear(&w), x.matmul(&w.t()));
        let g = spread(&[64, 10], -1.0, 1.0, 11);
        let close = |p: &crate::Array, q: &crate::Array| {
            let scale = q.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = p
                .iter()
                .zip(q)
                .fold(0.0f32, |m, (u, v)| m.max((u - v).abs()));
            assert!(err <= 1e-5 * scale.max(1.0), "{err} against {scale}");
        };
        close(&a.value(), &b.value());
        a.mul(&Var::constant(g.clone())).sum().backward();
        let (dx1, dw1) = (x.grad().unwrap(), w.grad().unwrap());
        x.zero_grad();
        w.zero_grad();
        b.mul(&Var::constant(g)).sum().backward();
        close(&dx1, &x.grad().unwrap());
        close(&dw1, &w.grad().unwrap());
    }

    #[test]
    fn matmul_gradient_matches_finite_differences() {
        let a = spread(&[3, 5], -1.0, 1.0, 5);
        let b = spread(&[5, 2], -1.0, 1.0, 6);
        check("matmul", &[&a, &b], |v| v[0].matmul(&v[1])).unwrap();
    }
}
