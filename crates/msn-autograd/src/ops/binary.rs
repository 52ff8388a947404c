//! Broadcasting arithmetic. Operands broadcast as in NumPy; each gradient is summed back to
//! its operand's shape.

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

    /// `x / s` for a single-element `s` (any shape of one element): spectral norm's `W / sigma`.
    /// One vectorized pass each way, where [`Var::div`]'s broadcasting would walk `x` several
    /// times (and copy it) to reduce the gradient of `s`.
    pub fn div_scalar(&self, s: &Var) -> Var {
        let sv = {
            let s = s.value();
            assert_eq!(s.len(), 1, "div_scalar: the divisor must have one element");
            s.iter().copied().next().expect("one element")
        };
        let x = self.value().as_standard_layout().into_owned();
        let y = x.mapv(|v| v / sv);
        let s_shape = s.value().raw_dim();
        Var::from_op(
            y,
            vec![self.clone(), s.clone()],
            Box::new(move |g, needs| {
                let g = g.as_standard_layout();
                let gs = g.as_slice().expect("standard layout");
                let dx = needs[0].then(|| g.mapv(|v| v / sv));
                let ds = needs[1].then(|| {
                    let xs = x.as_slice().expect("standard layout");
                    let dot: f64 = gs.iter().zip(xs).map(|(a, b)| (a * b) as f64).sum();
                    crate::Array::from_elem(s_shape, (-dot / (sv as f64 * sv as f64)) as f32)
                });
                vec![dx, ds]
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
        let s = spread(&[1, 1, 1, 1], 0.7, 0.7, 5);
        check("div_scalar", &[&x, &s], |v| v[0].div_scalar(&v[1])).unwrap();
        let s1 = spread(&[1], -1.3, -1.3, 6);
        check("div_scalar 1-D", &[&x, &s1], |v| v[0].div_scalar(&v[1])).unwrap();
    }
}
