//! One pass per file, each named for its effect.

pub mod constant_folding;
pub mod eliminate;
pub mod evaluate;
pub mod fuse_into_following_conv;
pub mod fuse_into_weights;
pub mod matmul_to_gemm;
pub mod simplify;
pub mod static_shapes;
pub mod uniform_quant_params;
