//! Broadcasting arithmetic. Operands broadcast as in NumPy; each gradient is summed back to
//! its operand's shape.

use super::norm::lane_dot;
use super::unbroadcast;
use crate::Var;

impl Var {
    fn binary(
        &self,
        other: &Var,
        value: crate::Array,
        rule: impl FnOnce(&crate::Array, &crate::Array, &crate::Array) -> (crate::Array, crate::Array)
            + 'static,
    ) -> Var {
        let (a, b) = (self.value().clone(), other.value().clone());
        Var::from_op(
            value,
            vec![self.clone(), other.clone()],
            Box::new(move |g, needs| {
                let g = &g;
                let (ga, gb) = rule(g, &a, &b);
                vec![
                    needs[0].then(|| unbroadcast(&ga, a.shape())),
                    needs[1].then(|| unbroadcast(&gb, b.shape())),
                ]
            }),
        )
    }

    pub fn add(&self, other: &Var) -> Var {
        let y = &*self.value() + &*other.value();
        self.binary(other, y, |g, _, _| (g.clone(), g.clone()))
    }

    pub fn sub(&self, other: &Var) -> Var {
        let y = &*self.value() - &*other.value();
        self.binary(other, y, |g, _, _| (g.clone(), -g))
    }

    pub fn mul(&self, other: &Var) -> Var {
        let y = &*self.value() * &*other.value();
        self.binary(other, y, |g, a, b| (g * b, g * a))
    }

    pub fn div(&self, other: &Var) -> Var {
        let y = &*self.value() / &*other.value();
        self.binary(other, y, |g, a, b| {
            let ga = g / b;
            let gb = -(g * a) / (b * b);
            (ga, gb)
        })
    }

    /// `W / sigma` with `sigma = u . (W_mat v)`, `W_mat` the weight viewed as
    /// `[u.len(), v.len()]`, and the gradient flowing through `sigma` (`u`, `v` held fixed):
    /// spectral normalization's reparameterization as one op, two passes over the weight each
    /// way: `dW = g / sigma - (<g, W> / sigma^2) u v^T`.
    pub fn divide_by_sigma(&self, u: &[f32], v: &[f32]) -> Var {
        let w = self.value().as_standard_layout().into_owned();
        let ws = w.as_slice().expect("standard layout");
        let (rows, cols) = (u.len(), v.len());
        assert_eq!(
            ws.len(),
            rows * cols,
            "divide_by_sigma: u and v do not fit the weight"
        );
        let sigma: f64 = ws
            .chunks_exact(cols.max(1))
            .zip(u)
            .map(|(row, &ui)| ui as f64 * lane_dot(row, v) as f64)
            .sum();
        let sigma = sigma as f32;
        let y = crate::Array::from_shape_vec(w.raw_dim(), ws.iter().map(|x| x / sigma).collect())
            .expect("same size");
        let (u, v) = (u.to_vec(), v.to_vec());
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |g, _| {
                let g = &g;
                let g = g.as_standard_layout();
                let gs = g.as_slice().expect("standard layout");
                let ws = w.as_slice().expect("standard layout");
                let dot: f64 = gs
                    .chunks(4096)
                    .zip(ws.chunks(4096))
                    .map(|(a, b)| lane_dot(a, b) as f64)
                    .sum();
                let k = (dot / (sigma as f64 * sigma as f64)) as f32;
                let mut dw = Vec::with_capacity(gs.len());
                for (row, &ui) in gs.chunks_exact(cols.max(1)).zip(&u) {
                    let kui = k * ui;
                    dw.extend(row.iter().zip(&v).map(|(&d, &vj)| d / sigma - kui * vj));
                }
                vec![Some(
                    crate::Array::from_shape_vec(g.raw_dim(), dw).expect("same size"),
                )]
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;

    #[test]
    fn broadcasting_gradients_match_finite_differences() {
        let x = spread(&[2, 3, 4, 4], -1.0, 1.0, 2);
        let c = spread(&[1, 3, 1, 1], 0.5, 1.5, 3);
        let row = spread(&[4], -1.0, 1.0, 4);
        check("add", &[&x, &c], |v| v[0].add(&v[1])).unwrap();
        check("sub", &[&x, &c], |v| v[0].sub(&v[1])).unwrap();
        check("sub reversed", &[&c, &x], |v| v[0].sub(&v[1])).unwrap();
        check("mul", &[&x, &c], |v| v[0].mul(&v[1])).unwrap();
        check("div", &[&x, &c], |v| v[0].div(&v[1])).unwrap();
        check("mul row", &[&x, &row], |v| v[0].mul(&v[1])).unwrap();
        // W / (u . W v), u and v fixed, against finite differences and the composed ops.
        let w = spread(&[3, 2, 2, 2], -1.0, 1.0, 7);
        let u = vec![0.6f32, -0.3, 0.74];
        let v: Vec<f32> = (0..8).map(|i| (i as f32 * 0.7).sin() * 0.5).collect();
        let (uc, vc) = (u.clone(), v.clone());
        check("divide_by_sigma", &[&w], move |x| {
            x[0].divide_by_sigma(&uc, &vc)
        })
        .unwrap();
        let wv = crate::Var::constant(w.clone());
        let um = crate::Var::constant(
            ndarray::Array::from_shape_vec(vec![1, 3], u.clone())
                .unwrap()
                .into_dyn(),
        );
        let vm = crate::Var::constant(
            ndarray::Array::from_shape_vec(vec![8, 1], v.clone())
                .unwrap()
                .into_dyn(),
        );
        let sigma = um.matmul(&wv.reshape(&[3, 8]).matmul(&vm));
        let composed = wv.div(&sigma.reshape(&[1, 1, 1, 1]));
        let fused = wv.divide_by_sigma(&u, &v);
        let diff = (&*fused.value() - &*composed.value())
            .iter()
            .fold(0.0f32, |m, d| m.max(d.abs()));
        assert!(diff < 1e-5, "{diff}");
    }
}
