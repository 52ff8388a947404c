//! The graph index and edits the passes use live in msn-onnx, shared with the runtime.

pub use msn_onnx::index::{fresh_name, node_name, rename_all, rename_uses, set_init, Index};
