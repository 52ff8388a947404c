//! # msn-autograd: reverse-mode automatic differentiation over `ndarray`
//!
//! A [`Var`] is an f32 tensor that remembers how it was made. Every op computes its value and,
//! right beside it, the rule that turns the gradient of its output into gradients of its
//! inputs. [`Var::backward`] sorts the graph once and sweeps it in reverse, accumulating
//! gradients with `+=`; each op's saved buffers are released as soon as its rule has run.
//!
//! ```
//! use msn_autograd::Var;
//! use ndarray::array;
//! let w = Var::parameter(array![[1.0f32, 2.0], [3.0, 4.0]].into_dyn());
//! let x = Var::constant(array![[1.0f32], [-1.0]].into_dyn());
//! let loss = w.matmul(&x).relu().sum();
//! loss.backward();
//! assert_eq!(w.grad().unwrap(), array![[0.0, 0.0], [0.0, 0.0]].into_dyn()); // both rows < 0
//! ```
//!
//! - [`var`]: the graph node, `backward()`, no-grad mode.
//! - [`ops`]: one module per op family (elementwise, broadcasting arithmetic, matmul, conv,
//!   pooling, reductions, losses, shape ops, dropout).
//! - [`kernels`]: the numeric loops (im2col/col2im, sgemm) kept apart from graph bookkeeping.
//! - [`gradcheck`]: central finite differences, used by every op's tests.

pub mod gradcheck;
pub mod kernels;
pub mod ops;
#[cfg(target_arch = "x86_64")]
pub mod sgemm_avx512;
mod var;

pub use var::{is_grad_enabled, no_grad, Var};

/// The tensor type every op works on.
pub type Array = ndarray::ArrayD<f32>;
