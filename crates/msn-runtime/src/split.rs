//! How our kernels share an op's work out across tract's executor: in units of tiles, each
//! thread writing only its own part of the output.

use tract_onnx::tract_core::internal::*;

/// Work units the threads share an op's tiles out as (if there are that many tiles): enough
/// for four cores to balance.
pub(crate) const UNITS: usize = 32;

/// Part `i` of `n` items split into `parts` nearly equal ranges.
pub(crate) fn share(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    i * n / parts..(i + 1) * n / parts
}

/// Runs `f(a, bs)` over the units `(a, b)`, `a < outer` and `b < inner`, split across
/// tract's executor; each call gets consecutive units of one `a`.
pub(crate) fn par_units(
    (outer, inner): (usize, usize),
    work: usize,
    f: impl Fn(usize, std::ops::Range<usize>) -> TractResult<()> + Sync + Send,
) -> TractResult<()> {
    let mut units = vec![0u8; outer * inner];
    tract_linalg::multithread::par_chunks_mut(&mut units, 1, work, |first, chunk| {
        let (mut u, end) = (first, first + chunk.len());
        while u < end {
            let (a, b) = (u / inner, u % inner);
            let last = inner.min(b + end - u);
            f(a, b..last)?;
            u += last - b;
        }
        Ok(())
    })
}

/// An output shared by the threads: each writes its own part.
#[derive(Clone, Copy)]
pub(crate) struct Rows(pub(crate) *mut f32);

// SAFETY: the callers have each thread write a part of the output no other thread writes.
unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}

impl Rows {
    /// The output at value `i`.
    ///
    /// # Safety
    /// `i` is within the output.
    pub(crate) unsafe fn at(&self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}
