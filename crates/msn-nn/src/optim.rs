//! Optimizers with PyTorch's update rules, and learning-rate schedules.

use msn_autograd::{Array, Var};

/// Something that updates parameters from their gradients.
pub trait Optimizer {
    /// Applies one update to every parameter that has a gradient, at learning rate `lr`.
    fn step(&mut self, params: &[Var], lr: f32);
    /// The optimizer's state tensors, named, for checkpoints.
    fn state(&self) -> Vec<(String, Array)>;
    /// Restores state saved by [`Optimizer::state`].
    fn load_state(&mut self, state: Vec<(String, Array)>);
}

/// Clears every parameter's gradient.
pub fn zero_grad(params: &[Var]) {
    for p in params {
        p.zero_grad();
    }
}

/// SGD with momentum, Nesterov momentum and (L2) weight decay, as `torch.optim.SGD`.
pub struct Sgd {
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    buffers: Vec<Option<Array>>,
}

impl Sgd {
    pub fn new(momentum: f32, nesterov: bool, weight_decay: f32) -> Self {
        Sgd {
            momentum,
            nesterov,
            weight_decay,
            buffers: Vec::new(),
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[Var], lr: f32) {
        self.buffers.resize(params.len(), None);
        for (p, buf) in params.iter().zip(self.buffers.iter_mut()) {
            let Some(mut d) = p.grad() else { continue };
            if self.weight_decay != 0.0 {
                d.scaled_add(self.weight_decay, &p.value());
            }
            if self.momentum != 0.0 {
                let b = match buf.take() {
                    None => d.clone(),
                    Some(mut b) => {
                        b.mapv_inplace(|x| x * self.momentum);
                        b += &d;
                        b
                    }
                };
                if self.nesterov {
                    d.scaled_add(self.momentum, &b);
                } else {
                    d = b.clone();
                }
                *buf = Some(b);
            }
            p.update(|w| w.scaled_add(-lr, &d));
        }
    }

    fn state(&self) -> Vec<(String, Array)> {
        self.buffers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (format!("sgd.momentum.{i}"), b.clone())))
            .collect()
    }

    fn load_state(&mut self, state: Vec<(String, Array)>) {
        for (name, a) in state {
            if let Some(i) = name
                .strip_prefix("sgd.momentum.")
                .and_then(|i| i.parse::<usize>().ok())
            {
                if self.buffers.len() <= i {
                    self.buffers.resize(i + 1, None);
                }
                self.buffers[i] = Some(a);
            }
        }
    }
}

/// Adam, as `torch.optim.Adam` (L2 weight decay added to the gradient).
pub struct Adam {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    step: u64,
    m: Vec<Option<Array>>,
    v: Vec<Option<Array>>,
}

impl Adam {
    pub fn new(beta1: f32, beta2: f32, weight_decay: f32) -> Self {
        Adam {
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &[Var], lr: f32) {
        self.m.resize(params.len(), None);
        self.v.resize(params.len(), None);
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for (i, p) in params.iter().enumerate() {
            let Some(mut g) = p.grad() else { continue };
            if self.weight_decay != 0.0 {
                g.scaled_add(self.weight_decay, &p.value());
            }
            let m = self.m[i].get_or_insert_with(|| Array::zeros(g.raw_dim()));
            let v = self.v[i].get_or_insert_with(|| Array::zeros(g.raw_dim()));
            ndarray::Zip::from(&mut *m)
                .and(&mut *v)
                .and(&g)
                .for_each(|m, v, &g| {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                });
            let step = lr / c1;
            let c2s = c2.sqrt();
            p.update(|w| {
                ndarray::Zip::from(w)
                    .and(&*m)
                    .and(&*v)
                    .for_each(|w, &m, &v| {
                        *w -= step * m / (v.sqrt() / c2s + self.eps);
                    });
            });
        }
    }

    fn state(&self) -> Vec<(String, Array)> {
        let mut out = vec![(
            "adam.step".to_string(),
            Array::from_elem(ndarray::IxDyn(&[1]), self.step as f32),
        )];
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            if let (Some(m), Some(v)) = (m, v) {
                out.push((format!("adam.m.{i}"), m.clone()));
                out.push((format!("adam.v.{i}"), v.clone()));
            }
        }
        out
    }

    fn load_state(&mut self, state: Vec<(String, Array)>) {
        for (name, a) in state {
            if name == "adam.step" {
                self.step = a.iter().next().copied().unwrap_or(0.0) as u64;
            } else if let Some((kind, i)) =
                name.strip_prefix("adam.").and_then(|r| r.split_once('.'))
            {
                let Ok(i) = i.parse::<usize>() else { continue };
                let slot = if kind == "m" {
                    &mut self.m
                } else {
                    &mut self.v
                };
                if slot.len() <= i {
                    slot.resize(i + 1, None);
                }
                slot[i] = Some(a);
            }
        }
    }
}

/// A learning rate per epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f32,
    },
    /// Cosine from the base rate to zero over `epochs`.
    Cosine {
        epochs: usize,
    },
}

impl Schedule {
    /// The learning rate for `epoch` (0-based).
    pub fn lr(&self, base: f32, epoch: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine { epochs } => {
                let t = epoch as f32 / epochs.max(1) as f32;
                0.5 * base * (1.0 + (std::f32::consts::PI * t.min(1.0)).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn sgd_momentum_matches_the_torch_recurrence() {
        let p = Var::parameter(array![1.0f32].into_dyn());
        let mut opt = Sgd::new(0.9, false, 0.0);
        for _ in 0..2 {
            p.zero_grad();
            p.mul(&p).sum().backward(); // grad = 2p
            opt.step(std::slice::from_ref(&p), 0.1);
        }
        // step 1: buf = 2, p = 0.8; step 2: buf = 0.9*2 + 1.6 = 3.4, p = 0.8 - 0.34
        assert!((p.value()[[0]] - 0.46).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_the_learning_rate() {
        let p = Var::parameter(array![3.0f32, -2.0].into_dyn());
        let mut opt = Adam::new(0.9, 0.999, 0.0);
        p.sum().backward();
        opt.step(std::slice::from_ref(&p), 0.01);
        let v = p.value();
        assert!((v[[0]] - 2.99).abs() < 1e-5 && (v[[1]] + 2.01).abs() < 1e-5);
    }

    #[test]
    fn schedules() {
        assert_eq!(
            Schedule::Step {
                every: 2,
                gamma: 0.1
            }
            .lr(1.0, 3),
            0.1
        );
        assert!((Schedule::Cosine { epochs: 10 }.lr(1.0, 5) - 0.5).abs() < 1e-6);
        assert_eq!(Schedule::Constant.lr(0.3, 7), 0.3);
    }
}
