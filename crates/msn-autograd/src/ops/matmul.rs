//! Matrix product of two 2-D tensors, on matrixmultiply's sgemm through ndarray.

use crate::kernels::{as_2d, matmul};
use crate::Var;

impl Var {
    /// `[m, k] x [k, n] -> [m, n]`.
    pub fn matmul(&self, other: &Var) -> Var {
        let (a, b) = (as_2d(&self.value()), as_2d(&other.value()));
        assert_eq!(a.ncols(), b.nrows(), "matmul: inner dimensions differ");
        let y = matmul(a.view(), b.view()).into_dyn();
        Var::from_op(
            y,
            vec![self.clone(), other.clone()],
            Box::new(move |g, needs| {
                let g = as_2d(g);
                vec![
                    needs[0].then(|| matmul(g.view(), b.t()).into_dyn()),
                    needs[1].then(|| matmul(a.t(), g.view()).into_dyn()),
                ]
            }),
        )
    }
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
