//! Gradient checking by central finite differences.
//!
//! The op's output is projected on a fixed random tensor to get a scalar, so every output
//! element takes part; each input element is nudged by `±EPS` and the numeric slope compared
//! with the gradient that `backward()` found.

use crate::ops::elementwise::spread;
use crate::{no_grad, Array, Var};

const EPS: f32 = 1e-2;
const ATOL: f64 = 2e-3;
const RTOL: f64 = 2e-2;
/// At most this many elements per input are checked (spread evenly), to keep tests quick.
const MAX_CHECKED: usize = 200;

fn projected(out: &Var, proj: &Array) -> f64 {
    out.value()
        .iter()
        .zip(proj.iter())
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum()
}

/// Checks the gradients of `f` with respect to every input. Returns a description of the
/// worst mismatch, if any.
pub fn check(name: &str, inputs: &[&Array], f: impl Fn(&[Var]) -> Var) -> Result<(), String> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|a| Var::parameter((*a).clone()))
        .collect();
    let out = f(&vars);
    let proj = spread(&out.shape(), -1.0, 1.0, 99);
    out.mul(&Var::constant(proj.clone())).sum().backward();

    for (i, input) in inputs.iter().enumerate() {
        let analytic = vars[i]
            .grad()
            .ok_or_else(|| format!("{name}: input {i} received no gradient"))?;
        let n = input.len();
        let step = n.div_ceil(MAX_CHECKED).max(1);
        for j in (0..n).step_by(step) {
            let eval = |delta: f32| {
                let mut x = (*input).clone();
                *x.iter_mut().nth(j).expect("index in range") += delta;
                let args: Vec<Var> = inputs
                    .iter()
                    .enumerate()
                    .map(|(k, a)| Var::constant(if k == i { x.clone() } else { (*a).clone() }))
                    .collect();
                no_grad(|| projected(&f(&args), &proj))
            };
            let numeric = (eval(EPS) - eval(-EPS)) / (2.0 * EPS as f64);
            let a = *analytic.iter().nth(j).expect("index in range") as f64;
            if (numeric - a).abs() > ATOL + RTOL * numeric.abs().max(a.abs()) {
                return Err(format!(
                    "{name}: input {i} element {j}: analytic {a:.6}, numeric {numeric:.6}"
                ));
            }
        }
    }
    Ok(())
}
