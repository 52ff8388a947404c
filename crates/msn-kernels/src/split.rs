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

/// An output shared by the threads: each writes its own part. It knows its length, so every
/// pointer or row it hands out is checked against the output (the disjointness of the threads'
/// parts is what the callers uphold).
#[derive(Clone, Copy)]
pub(crate) struct Rows {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `Rows` only hands out pointers within the one output it was made from, and the
// callers have each thread write a part of that output no other thread reads or writes.
unsafe impl Send for Rows {}
// SAFETY: as for `Send`: the threads' parts are disjoint.
unsafe impl Sync for Rows {}

impl Rows {
    /// The output, shared out.
    pub(crate) fn new(out: &mut [f32]) -> Rows {
        Rows {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// A pointer to value `i`, `i <= len` (checked: an offset past the end is an error, never
    /// a pointer outside the output).
    pub(crate) fn at(&self, i: usize) -> TractResult<*mut f32> {
        ensure!(
            i <= self.len,
            "output offset {i} past the output's {} values",
            self.len
        );
        Ok(self.ptr.wrapping_add(i))
    }

    /// Values `at..at + n`, checked against the output's length.
    ///
    /// # Safety
    /// No other thread reads or writes these values while the slice lives.
    // A mutable part of a shared output is the point: the threads' parts are disjoint.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, at: usize, n: usize) -> TractResult<&mut [f32]> {
        let end = at.checked_add(n);
        ensure!(
            end.is_some_and(|e| e <= self.len),
            "output values {at}..+{n} past the output's {} values",
            self.len
        );
        // SAFETY: `at + n <= len` (checked above), so the values are within the output this
        // was made from; the caller has them to itself.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), n) })
    }

    /// Rows of `n` values from `at`, `stride` apart, checked to lie within the output.
    pub(crate) fn check_rows(
        &self,
        at: usize,
        rows: usize,
        stride: usize,
        n: usize,
    ) -> TractResult<()> {
        let last = (rows.max(1) - 1)
            .checked_mul(stride)
            .and_then(|r| r.checked_add(at))
            .and_then(|r| r.checked_add(n));
        ensure!(
            last.is_some_and(|l| l <= self.len),
            "{rows} rows of {n} values from {at} past the output's {} values",
            self.len
        );
        Ok(())
    }
}

/// A new f32 output of `shape`, every value NaN: a tile a kernel misses shows as NaN in
/// every build (the tests and the fuzz target compare every value), never as what the
/// allocator handed back, which is often a previous run's right answer.
pub(crate) fn output_f32(shape: &[usize]) -> TractResult<Tensor> {
    // SAFETY: f32 has no invalid bit patterns, and every value is written just below.
    let mut t = unsafe { Tensor::uninitialized::<f32>(shape)? };
    t.try_as_plain_ram_mut()?
        .as_slice_mut::<f32>()?
        .fill(f32::NAN);
    Ok(t)
}

/// A new u8 output of `shape`, zeroed.
pub(crate) fn output_u8(shape: &[usize]) -> TractResult<Tensor> {
    Tensor::zero::<u8>(shape)
}
