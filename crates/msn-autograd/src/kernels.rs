//! Numeric kernels kept apart from the graph: sgemm, per-image im2col / col2im for
//! convolutions, and the batch split that runs images on all threads.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of threads matrix products use (0: all cores, the default). Results are
/// the same for a given thread count.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// Makes the calling thread the first thread of rayon's global pool, [`threads`] threads in
/// all, before anything else uses the pool: a training loop on this thread then runs each
/// op's parallel parts from inside the pool (its own half here, the other thread stealing
/// the rest), instead of handing every op to the pool's threads and sleeping until they are
/// done, a wake-up of this thread per op. False when the pool was already built (then ops
/// run as before).
pub fn join_global_pool() -> bool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads())
        .use_current_thread()
        .build_global()
        .is_ok()
}

/// The thread count in use: the one set by [`set_threads`], or all cores.
pub fn threads() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match THREADS.load(Ordering::Relaxed) {
        0 => *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        t => t,
    }
}

/// `c = a b`, or `c += a b` when `accumulate`, on the `gemm` crate's sgemm over all threads.
/// Any strides (transposed views included) are read directly, without copies.
pub fn gemm_into(
    c: &mut ArrayViewMut2<f32>,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let threads = threads();
    // With a short inner dimension (a linear layer's input gradient: k = its 10 outputs) the
    // `gemm` crate spends its time packing on the calling thread: 1.36 ms against
    // matrixmultiply's 0.18 ms on one thread for [64, 10] x [10, 8192].
    if k < 32 {
        return gemm_mm(c, a, b, accumulate);
    }
    // Small products are not worth waking threads for.
    let parallel = m * c.ncols() * k >= 32 * 32 * 32 && threads > 1;
    gemm_with(c, a, b, accumulate, parallel.then_some(threads));
}

/// [`gemm_into`] on the calling thread only: for work that is already split across threads.
///
/// Two sgemm crates share the work, by shape. Measured on the conv shapes of `cnn3` and `vgg7`
/// (`cargo run --release -p msn-autograd --example gemm_shapes`), `matrixmultiply` is faster
/// on one thread for most of them, up to 3x on the short inner dimensions of the input
/// gradient (k = output channels), and `gemm`'s kernels are faster when the inner dimension
/// dominates (the weight gradient: k = output pixels).
pub fn gemm_seq(c: &mut ArrayViewMut2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, acc: bool) {
    let (m, k) = a.dim();
    let n = b.ncols();
    if k >= 3 * m.max(n) {
        gemm_with(c, a, b, acc, None);
    } else {
        gemm_mm(c, a, b, acc);
    }
}

/// `c = a b` or `c += a b` with the AVX-512 kernels of [`crate::sgemm_avx512`].
#[cfg(target_arch = "x86_64")]
pub fn gemm_avx512(c: &mut ArrayViewMut2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, acc: bool) {
    use crate::sgemm_avx512::{available, sgemm, Strided};
    assert!(available(), "gemm_avx512: this CPU has no AVX-512");
    let Some((m, k, n)) = gemm_dims(c, &a, &b) else {
        return;
    };
    let (cs, bs) = (c.strides(), b.strides());
    let (cs, bs) = ([cs[0], cs[1]], [bs[0], bs[1]]);
    // SAFETY: AVX-512 is present (checked above); the pointers and strides come from live
    // ndarray views of the stated shapes, and `c` is borrowed mutably so it cannot alias.
    unsafe {
        sgemm(
            m,
            k,
            n,
            a,
            Strided {
                ptr: b.as_ptr(),
                rs: bs[0],
                cs: bs[1],
            },
            Strided {
                ptr: c.as_mut_ptr(),
                rs: cs[0],
                cs: cs[1],
            },
            acc,
        );
    }
}

/// `(m, k, n)` of `c[m, n] = a[m, k] b[k, n]`, checked; `None` when `c` is empty.
fn gemm_dims(
    c: &ArrayViewMut2<f32>,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
) -> Option<(usize, usize, usize)> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "gemm: output shape");
    (m != 0 && n != 0).then_some((m, k, n))
}

/// `c = a b` or `c += a b` with `matrixmultiply`'s sgemm on the calling thread.
fn gemm_mm(c: &mut ArrayViewMut2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, accumulate: bool) {
    let Some((m, k, n)) = gemm_dims(c, &a, &b) else {
        return;
    };
    let (cs, as_, bs) = (c.strides(), a.strides(), b.strides());
    let (cs, as_, bs) = ([cs[0], cs[1]], [as_[0], as_[1]], [bs[0], bs[1]]);
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the pointers and strides come from live ndarray views of the stated shapes,
    // `c` is borrowed mutably and cannot alias `a` or `b`; with beta 0 `c` is only written.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            as_[0],
            as_[1],
            b.as_ptr(),
            bs[0],
            bs[1],
            beta,
            c.as_mut_ptr(),
            cs[0],
            cs[1],
        );
    }
}

/// `c = a b` or `c += a b` with the `gemm` crate's sgemm (AVX-512 kernels where the CPU has
/// them), on rayon's pool with `threads` threads, or on the calling thread with `None`.
pub fn gemm_with(
    c: &mut ArrayViewMut2<f32>,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    accumulate: bool,
    threads: Option<usize>,
) {
    // gemm-common 0.18 sizes its blocks from the cache sizes in usize arithmetic, which
    // overflows on 32-bit targets when the L3 cache is large (the host's 300 MB L3 that
    // qemu-arm shows): there, matrixmultiply computes every product, on the calling thread.
    if cfg!(target_pointer_width = "32") {
        return gemm_mm(c, a, b, accumulate);
    }
    let Some((m, k, n)) = gemm_dims(c, &a, &b) else {
        return;
    };
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let parallelism = threads.map_or(
        gemm_common::Parallelism::None,
        gemm_common::Parallelism::Rayon,
    );
    let (cs, as_, bs) = (
        c.strides().to_vec(),
        a.strides().to_vec(),
        b.strides().to_vec(),
    );
    // SAFETY: the pointers and strides come from live ndarray views of the stated shapes,
    // `c` is borrowed mutably and cannot alias `a` or `b`.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            m,
            n,
            k,
            c.as_mut_ptr(),
            cs[1],
            cs[0],
            accumulate,
            a.as_ptr(),
            as_[1],
            as_[0],
            b.as_ptr(),
            bs[1],
            bs[0],
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `a b` as a new matrix.
pub fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::<f32>::zeros((a.nrows(), b.ncols()));
    gemm_into(&mut c.view_mut(), a, b, false);
    c
}

/// A linear layer's three products, `x` `[n, k]` and `W` `[o, k]` both read along `k` where
/// they are contiguous, with no transposed copy: `y = x W^T` as dot products, `dx = dy W` and
/// `dW = dy^T x` as sums of scaled rows. Each output value is summed in a fixed order, so the
/// results do not depend on the thread count.
pub mod linear {
    use rayon::prelude::*;

    /// Rows of `W` whose dot products with one row of `x` run together.
    const ROWS: usize = 4;
    /// Lanes a dot product keeps apart (a vector register's worth).
    const LANES: usize = 16;

    /// `y = x W^T`, `[n, o]`.
    pub fn forward(x: &[f32], w: &[f32], n: usize, k: usize, o: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; n * o];
        if k == 0 || o == 0 {
            return y;
        }
        let row = |(i, yi): (usize, &mut [f32])| dots(&x[i * k..(i + 1) * k], w, k, yi);
        if n * k * o < 1 << 16 || super::threads() == 1 {
            y.chunks_mut(o).enumerate().for_each(row);
        } else {
            y.par_chunks_mut(o).enumerate().for_each(row);
        }
        y
    }

    /// `dx = dy W`, `[n, k]`.
    pub fn input_grad(dy: &[f32], w: &[f32], n: usize, k: usize, o: usize) -> Vec<f32> {
        let mut dx = vec![0.0f32; n * k];
        if k == 0 {
            return dx;
        }
        let row = |(i, dxi): (usize, &mut [f32])| {
            for j in 0..o {
                axpy(dy[i * o + j], &w[j * k..(j + 1) * k], dxi);
            }
        };
        if n * k * o < 1 << 16 || super::threads() == 1 {
            dx.chunks_mut(k).enumerate().for_each(row);
        } else {
            dx.par_chunks_mut(k).enumerate().for_each(row);
        }
        dx
    }

    /// `dW = dy^T x`, `[o, k]`: split along `k` (columns of `x`), so each task reads its
    /// own block of every row of `x` and fills its own `[o, BLOCK]` tile, which is then
    /// copied into place.
    pub fn weight_grad(dy: &[f32], x: &[f32], n: usize, k: usize, o: usize) -> Vec<f32> {
        const BLOCK: usize = 512;
        if k == 0 || o == 0 {
            return vec![0.0f32; o * k];
        }
        let blocks = k.div_ceil(BLOCK);
        let mut tiles = vec![0.0f32; blocks * o * BLOCK];
        let tile = |(b, t): (usize, &mut [f32])| {
            let cols = b * BLOCK..((b + 1) * BLOCK).min(k);
            for (j, out) in t.chunks_mut(BLOCK).enumerate() {
                let out = &mut out[..cols.len()];
                for i in 0..n {
                    axpy(dy[i * o + j], &x[i * k + cols.start..i * k + cols.end], out);
                }
            }
        };
        if n * k * o < 1 << 16 || super::threads() == 1 || blocks == 1 {
            tiles.chunks_mut(o * BLOCK).enumerate().for_each(tile);
        } else {
            tiles.par_chunks_mut(o * BLOCK).enumerate().for_each(tile);
        }
        let mut dw = Vec::with_capacity(o * k);
        for j in 0..o {
            for b in 0..blocks {
                let len = BLOCK.min(k - b * BLOCK);
                let at = (b * o + j) * BLOCK;
                dw.extend_from_slice(&tiles[at..at + len]);
            }
        }
        dw
    }

    /// `y[j] = x . W[j]` for every row of `W`, `ROWS` rows at a time.
    fn dots(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if msn_kernels::cpu::get().avx512() {
            // SAFETY: the CPU probe found AVX-512 F (and so FMA).
            return unsafe { dots_avx512(x, w, k, y) };
        }
        dots_plain(x, w, k, y)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dots_avx512(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
        dots_plain(x, w, k, y)
    }

    #[inline(always)]
    fn dots_plain(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
        let full = k - k % LANES;
        for (j0, yj) in (0..y.len()).step_by(ROWS).zip(y.chunks_mut(ROWS)) {
            let mut acc = [[0.0f32; LANES]; ROWS];
            for at in (0..full).step_by(LANES) {
                let xs = &x[at..at + LANES];
                for (r, a) in acc.iter_mut().enumerate().take(yj.len()) {
                    let ws = &w[(j0 + r) * k + at..(j0 + r) * k + at + LANES];
                    for l in 0..LANES {
                        a[l] += xs[l] * ws[l];
                    }
                }
            }
            for (r, v) in yj.iter_mut().enumerate() {
                let ws = &w[(j0 + r) * k..(j0 + r + 1) * k];
                let tail: f32 = (full..k).map(|t| x[t] * ws[t]).sum();
                *v = acc[r].iter().sum::<f32>() + tail;
            }
        }
    }

    /// `out += a x`.
    fn axpy(a: f32, x: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if msn_kernels::cpu::get().avx512() {
            // SAFETY: the CPU probe found AVX-512 F (and so FMA).
            return unsafe { axpy_avx512(a, x, out) };
        }
        axpy_plain(a, x, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn axpy_avx512(a: f32, x: &[f32], out: &mut [f32]) {
        axpy_plain(a, x, out)
    }

    #[inline(always)]
    fn axpy_plain(a: f32, x: &[f32], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o += v * a;
        }
    }
}

/// `v = leaky_relu(v + b, slope)` for every value of a row (a convolution's bias and
/// activation), compiled for AVX-512 where the CPU has it.
pub fn bias_leaky_relu(row: &mut [f32], b: f32, slope: f32) {
    #[inline(always)]
    fn plain(row: &mut [f32], b: f32, slope: f32) {
        // Branch-free: the sign of a pre-activation is data, not a pattern to predict.
        for v in row {
            let t = *v + b;
            *v = t.max(0.0) + slope * t.min(0.0);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(row: &mut [f32], b: f32, slope: f32) {
        plain(row, b, slope)
    }
    #[cfg(target_arch = "x86_64")]
    if msn_kernels::cpu::get().avx512() {
        // SAFETY: the CPU probe found AVX-512 F.
        return unsafe { avx512(row, b, slope) };
    }
    plain(row, b, slope)
}

/// `g *= 1` where the leaky ReLU's output `y` is positive, else `slope`, for a row; returns
/// the sum of the new `g` (the row's share of the bias gradient).
pub fn leaky_relu_grad(g: &mut [f32], y: &[f32], slope: f32) -> f32 {
    #[inline(always)]
    fn plain(g: &mut [f32], y: &[f32], slope: f32) -> f32 {
        // 16 partial sums, so the loop vectorizes.
        let mut s = [0.0f32; 16];
        let mut gc = g.chunks_exact_mut(16);
        let mut yc = y.chunks_exact(16);
        for (g, y) in (&mut gc).zip(&mut yc) {
            for l in 0..16 {
                g[l] *= if y[l] > 0.0 { 1.0 } else { slope };
                s[l] += g[l];
            }
        }
        for (g, y) in gc.into_remainder().iter_mut().zip(yc.remainder()) {
            *g *= if *y > 0.0 { 1.0 } else { slope };
            s[0] += *g;
        }
        s.iter().sum()
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(g: &mut [f32], y: &[f32], slope: f32) -> f32 {
        plain(g, y, slope)
    }
    assert_eq!(g.len(), y.len(), "leaky_relu_grad: one output per gradient");
    #[cfg(target_arch = "x86_64")]
    if msn_kernels::cpu::get().avx512() {
        // SAFETY: the CPU probe found AVX-512 F.
        return unsafe { avx512(g, y, slope) };
    }
    plain(g, y, slope)
}

/// Sum, sum of squares (both in f64) and the count of values at or below zero, in one pass
/// over `v`, on all threads for long slices. Chunks are fixed (64 Ki values), so the result
/// depends only on `v`.
pub fn moments(v: &[f32]) -> (f64, f64, usize) {
    const CHUNK: usize = 1 << 16;
    let one = |c: &[f32]| {
        // Eight lanes per accumulator: the sums vectorise and do not wait on each other.
        let (mut s, mut q, mut z) = ([0.0f64; 8], [0.0f64; 8], 0usize);
        let mut lanes = c.chunks_exact(8);
        for l in &mut lanes {
            for k in 0..8 {
                let a = l[k] as f64;
                s[k] += a;
                q[k] += a * a;
            }
            z += l.iter().filter(|&&a| a <= 0.0).count();
        }
        for &a in lanes.remainder() {
            s[0] += a as f64;
            q[0] += a as f64 * a as f64;
            z += usize::from(a <= 0.0);
        }
        (s.iter().sum::<f64>(), q.iter().sum::<f64>(), z)
    };
    let add = |a: (f64, f64, usize), b: (f64, f64, usize)| (a.0 + b.0, a.1 + b.1, a.2 + b.2);
    if v.len() <= CHUNK || threads() == 1 {
        return v.chunks(CHUNK).map(one).fold((0.0, 0.0, 0), add);
    }
    let parts: Vec<_> = v.par_chunks(CHUNK).map(one).collect();
    parts.into_iter().fold((0.0, 0.0, 0), add)
}

/// Runs `f(images, out_part)` on contiguous chunks of a batch of `n` images, one chunk per
/// thread, in parallel. `out` holds `stride` values per image and is split with the images
/// (`stride` 0: every chunk gets an empty slice). Results come back in chunk order, and the
/// chunks depend only on `n` and the thread count, so sums over them are reproducible.
pub fn par_images<R: Send>(
    n: usize,
    out: &mut [f32],
    stride: usize,
    f: impl Fn(Range<usize>, &mut [f32]) -> R + Sync,
) -> Vec<R> {
    assert_eq!(out.len(), n * stride, "par_images: output size");
    let per = n.div_ceil(threads().clamp(1, n.max(1))).max(1);
    let mut parts = Vec::new();
    let mut rest = out;
    for start in (0..n).step_by(per) {
        let end = (start + per).min(n);
        let (head, tail) = rest.split_at_mut((end - start) * stride);
        parts.push((start..end, head));
        rest = tail;
    }
    if parts.len() <= 1 {
        return parts.into_iter().map(|(r, o)| f(r, o)).collect();
    }
    parts.into_par_iter().map(|(r, o)| f(r, o)).collect()
}

/// [`par_images`] into a new zeroed `n * stride`-value vector, returned with the results.
/// Each thread zeroes its own part, so the calling thread does not zero it all first, and
/// it does so piece by piece as `f` takes the pieces ([`Pieces::next`]): right before they
/// are written, while they are in cache, not megabytes ahead.
pub fn par_images_new<R: Send>(
    n: usize,
    stride: usize,
    f: impl Fn(Range<usize>, &mut Pieces) -> R + Sync,
) -> (Vec<f32>, Vec<R>) {
    let len = n * stride;
    let mut out = Vec::<f32>::with_capacity(len);
    let ptr = SendPtr(out.as_mut_ptr());
    let results = par_images(n, &mut [], 0, |imgs, _| {
        // SAFETY: the chunks of `par_images` are disjoint ranges of images, so each thread
        // owns values `start..end` of the allocation (capacity `len`).
        let mut pieces = unsafe {
            Pieces {
                ptr: ptr.get().add(imgs.start * stride),
                len: imgs.len() * stride,
                taken: 0,
                stride,
            }
        };
        let r = f(imgs, &mut pieces);
        pieces.rest();
        r
    });
    // SAFETY: the chunks cover all `n` images and each thread zeroed all of its part (the
    // pieces `f` took, then the rest), so every value was zeroed (then written).
    unsafe { out.set_len(len) };
    (out, results)
}

/// One thread's part of [`par_images_new`]'s output, handed out in zeroed pieces of whole
/// images, in order.
pub struct Pieces {
    ptr: *mut f32,
    len: usize,
    taken: usize,
    stride: usize,
}

impl Pieces {
    /// The next `images` images' values, zeroed. Panics past the part's end.
    pub fn next(&mut self, images: usize) -> &mut [f32] {
        let size = images * self.stride;
        assert!(self.taken + size <= self.len, "Pieces::next: past the end");
        // SAFETY: `taken..taken + size` is inside this thread's part and not yet handed out;
        // it is zeroed through the raw pointer before the slice is made, and the slice
        // borrows `self`, so no two live slices overlap.
        let piece = unsafe {
            let p = self.ptr.add(self.taken);
            std::ptr::write_bytes(p, 0, size);
            std::slice::from_raw_parts_mut(p, size)
        };
        self.taken += size;
        piece
    }

    /// Zeroes what `f` did not take.
    fn rest(&mut self) {
        let images = (self.len - self.taken) / self.stride.max(1);
        if images > 0 {
            self.next(images);
        }
    }
}

/// A raw pointer the threads of [`par_images_new`] share; each writes only its own range.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: used only to hand disjoint ranges of one allocation to scoped worker threads.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A new `len`-value vector whose values `f(offset, chunk)` writes, chunk by chunk, one
/// chunk per thread for long vectors (from `min_parallel` values). The memory is written
/// once, by the threads, instead of being zeroed first on the calling thread.
///
/// # Safety
/// `f` must write every value of each chunk it is given.
pub(crate) unsafe fn par_fill(
    len: usize,
    min_parallel: usize,
    f: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    let threads = threads().max(1);
    if len < min_parallel || threads == 1 {
        f(0, spare);
    } else {
        let per = len.div_ceil(threads);
        spare
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|(i, chunk)| f(i * per, chunk));
    }
    // SAFETY: `f` writes every value of each chunk (the caller's promise), and the chunks
    // cover `0..len`.
    unsafe { out.set_len(len) };
    out
}

/// The geometry of a 2-D convolution of one image, seen from its (non-transposed) input side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels of one group.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Output size of a convolution; panics with a clear message if the kernel does not fit.
    pub fn new(
        c: usize,
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Self {
        let out = |size: usize, k: usize, s: usize, p: usize, d: usize| {
            let span = d * (k - 1) + 1;
            assert!(
                size + 2 * p >= span,
                "conv: kernel larger than the padded input"
            );
            (size + 2 * p - span) / s + 1
        };
        ConvGeom {
            c,
            h,
            w,
            kh,
            kw,
            stride,
            padding,
            dilation,
            oh: out(h, kh, stride[0], padding[0], dilation[0]),
            ow: out(w, kw, stride[1], padding[1], dilation[1]),
        }
    }

    /// Rows of the column matrix: `c * kh * kw`.
    pub fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the column matrix: `oh * ow`.
    pub fn cols(&self) -> usize {
        self.oh * self.ow
    }

    /// Input pixels per channel.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }

    /// A 1x1 kernel with stride 1 and no padding: the column matrix is the input itself.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// The padded input plane: `(h + 2 ph, w + 2 pw)`.
    pub(crate) fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.padding[0], self.w + 2 * self.padding[1])
    }
}

thread_local! {
    /// Per-thread scratch for one zero-padded image group (im2col) or its gradient (col2im).
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Copies `x` (`[c, h, w]`) into `buf` with a zero border of the geometry's padding.
fn pad_into(x: &[f32], g: &ConvGeom, buf: &mut Vec<f32>) {
    let (hp, wp) = g.padded();
    let (ph, pw) = (g.padding[0], g.padding[1]);
    buf.clear();
    buf.resize(g.c * hp * wp, 0.0);
    for c in 0..g.c {
        for y in 0..g.h {
            let dst = (c * hp + y + ph) * wp + pw;
            let src = (c * g.h + y) * g.w;
            buf[dst..dst + g.w].copy_from_slice(&x[src..src + g.w]);
        }
    }
}

/// Calls `f(col_row_slice_offset, src_offset)` for every (tap, output row) pair, with source
/// offsets into the padded `[c, hp, wp]` plane: output column `ox` of that row reads
/// `src_offset + ox * stride_w`. Every pair is in bounds of the padded plane.
#[inline(always)]
fn for_each_tap_row(g: &ConvGeom, wp: usize, hp: usize, mut f: impl FnMut(usize, usize)) {
    let l = g.cols();
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = (c * g.kh + i) * g.kw + j;
                for oy in 0..g.oh {
                    let y = oy * g.stride[0] + i * g.dilation[0];
                    f(row * l + oy * g.ow, (c * hp + y) * wp + j * g.dilation[1]);
                }
            }
        }
    }
}

/// Unfolds one image's group (`x`: `[c, h, w]`, contiguous) into the column matrix
/// `col` (`[c*kh*kw, oh*ow]`, row-major). Every element of `col` is written.
///
/// The image is first copied into a zero-padded scratch plane, so each (tap, output row) is
/// one plain copy (or strided gather) with no bounds tests and no separate zero fills.
pub fn im2col(x: &[f32], geom: &ConvGeom, col: &mut [f32]) {
    debug_assert_eq!(col.len(), geom.rows() * geom.cols());
    if geom.padding == [0, 0] {
        im2col_padded(x, geom, col);
        return;
    }
    PADDED.with(|buf| {
        let mut buf = buf.borrow_mut();
        pad_into(x, geom, &mut buf);
        im2col_padded(&buf, geom, col);
    });
}

fn im2col_padded(xp: &[f32], g: &ConvGeom, col: &mut [f32]) {
    let (hp, wp) = g.padded();
    let (ow, sx) = (g.ow, g.stride[1]);
    for_each_tap_row(g, wp, hp, |dst, src| {
        let d = &mut col[dst..dst + ow];
        if sx == 1 {
            copy_row(d, &xp[src..src + ow]);
        } else {
            // Output columns 0..ow-1 take the first value of each `sx`-wide chunk (a loop
            // without bounds tests that vectorizes), the last one is read alone so the
            // read never passes the end of the plane.
            let (head, last) = d.split_at_mut(ow - 1);
            let run = &xp[src..src + (ow - 1) * sx];
            if sx == 2 {
                gather_every::<2>(head, run);
            } else {
                for (v, chunk) in head.iter_mut().zip(run.chunks_exact(sx)) {
                    *v = chunk[0];
                }
            }
            last[0] = xp[src + (ow - 1) * sx];
        }
    });
}

/// `dst[k] = src[k * S]`, with the stride known at compile time (the common stride 2).
#[inline(always)]
fn gather_every<const S: usize>(dst: &mut [f32], src: &[f32]) {
    for (v, chunk) in dst.iter_mut().zip(src.chunks_exact(S)) {
        *v = chunk[0];
    }
}

/// `dst[k * S] += src[k]`, the adjoint of [`gather_every`].
#[inline(always)]
fn scatter_add_every<const S: usize>(dst: &mut [f32], src: &[f32]) {
    for (chunk, v) in dst.chunks_exact_mut(S).zip(src) {
        chunk[0] += v;
    }
}

/// Copies a short row (a conv output row: tens of values) inline, in 8-wide blocks, the last
/// block overlapping the one before, instead of a `memcpy` call per row.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    if n < 8 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
        return;
    }
    let block = |dst: &mut [f32], src: &[f32], at: usize| {
        let s: [f32; 8] = src[at..at + 8].try_into().expect("8 values");
        dst[at..at + 8].copy_from_slice(&s);
    };
    let mut i = 0;
    while i + 8 <= n {
        block(dst, src, i);
        i += 8;
    }
    if i < n {
        block(dst, src, n - 8);
    }
}

/// Folds a column matrix back, adding into one image's group `dx` (`[c, h, w]`).
pub fn col2im(col: &[f32], geom: &ConvGeom, dx: &mut [f32]) {
    debug_assert_eq!(col.len(), geom.rows() * geom.cols());
    let (hp, wp) = geom.padded();
    let (ow, sx) = (geom.ow, geom.stride[1]);
    let add = |acc: &mut [f32]| {
        for_each_tap_row(geom, wp, hp, |src, dst| {
            let s = &col[src..src + ow];
            if sx == 1 {
                for (d, v) in acc[dst..dst + ow].iter_mut().zip(s) {
                    *d += v;
                }
            } else {
                // As in im2col: chunked without bounds tests, the last column alone.
                let run = &mut acc[dst..dst + (ow - 1) * sx];
                if sx == 2 {
                    scatter_add_every::<2>(run, &s[..ow - 1]);
                } else {
                    for (chunk, v) in run.chunks_exact_mut(sx).zip(&s[..ow - 1]) {
                        chunk[0] += v;
                    }
                }
                acc[dst + (ow - 1) * sx] += s[ow - 1];
            }
        });
    };
    if geom.padding == [0, 0] {
        add(dx);
        return;
    }
    PADDED.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.resize(geom.c * hp * wp, 0.0);
        add(&mut buf);
        let (ph, pw) = (geom.padding[0], geom.padding[1]);
        for c in 0..geom.c {
            for y in 0..geom.h {
                let src = (c * hp + y + ph) * wp + pw;
                let dst = (c * geom.h + y) * geom.w;
                for (d, v) in dx[dst..dst + geom.w]
                    .iter_mut()
                    .zip(&buf[src..src + geom.w])
                {
                    *d += v;
                }
            }
        }
    });
}

/// The column matrix of im2col (`[rows, cols]`, or its transpose `[cols, rows]`) read
/// straight from a zero-padded image group, as the B operand of the AVX-512 sgemm: the
/// convolutions pack their panels from the image and never write the column matrix.
#[cfg(target_arch = "x86_64")]
struct Im2colB<'a> {
    /// The padded `[c, hp, wp]` image groups, back to back: columns run over (image, output
    /// pixel), so small images are multiplied several at a time.
    xp: &'a [f32],
    g: &'a ConvGeom,
    transposed: bool,
}

#[cfg(target_arch = "x86_64")]
impl Im2colB<'_> {
    /// Offset of tap row `r` (`(c, i, j)`) in the padded plane, for output pixel (0, 0).
    fn tap(&self, r: usize) -> usize {
        tap_offset(self.g, r)
    }

    /// Columns `l0..l1` (image `l / cols`, its output pixel `l % cols`) as runs within
    /// output rows: `(source offset of the run's first pixel relative to a tap, run length,
    /// position of the run's first pixel - l0)`.
    fn runs(&self, l0: usize, l1: usize) -> Vec<(usize, usize, usize)> {
        let g = self.g;
        let (hp, wp) = g.padded();
        let (cols, image) = (g.cols(), g.c * hp * wp);
        let mut runs = Vec::with_capacity((l1 - l0) / g.ow.max(1) + 2);
        let mut l = l0;
        while l < l1 {
            let (im, px) = (l / cols, l % cols);
            let (oy, ox) = (px / g.ow, px % g.ow);
            let len = (g.ow - ox).min(l1 - l);
            runs.push((
                im * image + oy * g.stride[0] * wp + ox * g.stride[1],
                len,
                l - l0,
            ));
            l += len;
        }
        runs
    }
}

#[cfg(target_arch = "x86_64")]
impl crate::sgemm_avx512::PackB for Im2colB<'_> {
    fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [f32]) {
        use crate::sgemm_avx512::{copy_panel, gather_panel, NR};
        let sx = self.g.stride[1];
        let pixels = |runs: Vec<(usize, usize, usize)>| -> Vec<usize> {
            runs.into_iter()
                .flat_map(|(src, len, _)| (0..len).map(move |q| src + q * sx))
                .collect()
        };
        if !self.transposed {
            // B[r, l]: each packed row is the tap `r` over NR output pixels.
            let taps: Vec<usize> = (pc..pc + kc).map(|r| self.tap(r)).collect();
            for (p, jr) in (0..nc).step_by(NR).enumerate() {
                let nr = NR.min(nc - jr);
                let panel = &mut out[p * NR * kc..(p + 1) * NR * kc];
                let runs = self.runs(jc + jr, jc + jr + nr);
                if sx == 1 {
                    copy_panel(self.xp, &runs, nr, &taps, panel);
                } else {
                    gather_panel(self.xp, &pixels(runs), &taps, panel);
                }
            }
        } else {
            // B[l, r]: packed column `t` is the tap `jc + jr + t` over output pixels,
            // gathered one output pixel (packed row) at a time.
            let starts = pixels(self.runs(pc, pc + kc));
            for (p, jr) in (0..nc).step_by(NR).enumerate() {
                let nr = NR.min(nc - jr);
                let panel = &mut out[p * NR * kc..(p + 1) * NR * kc];
                let taps: Vec<usize> = (jc + jr..jc + jr + nr).map(|r| self.tap(r)).collect();
                gather_panel(self.xp, &taps, &starts, panel);
            }
        }
    }
}

/// Runs `f` with one image group (`x`: `[c, h, w]`) zero-padded as the geometry says (the
/// image itself when there is no padding).
#[cfg(target_arch = "x86_64")]
fn with_padded<R>(xs: &[&[f32]], g: &ConvGeom, f: impl FnOnce(&[f32]) -> R) -> R {
    if g.padding == [0, 0] && xs.len() == 1 {
        return f(&xs[0][..g.c * g.plane()]);
    }
    PADDED.with(|buf| {
        let mut buf = buf.borrow_mut();
        if xs.len() == 1 {
            pad_into(xs[0], g, &mut buf);
        } else {
            let (hp, wp) = g.padded();
            let image = g.c * hp * wp;
            let mut one = Vec::new();
            buf.clear();
            for x in xs {
                if g.padding == [0, 0] {
                    buf.extend_from_slice(&x[..image]);
                } else {
                    pad_into(x, g, &mut one);
                    buf.extend_from_slice(&one);
                }
            }
        }
        f(&buf)
    })
}

thread_local! {
    static FUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Turns the fused convolution kernels off (`false`: im2col into a buffer, then sgemm, the
/// path of machines without AVX-512) or back on, for the convolutions this thread builds
/// from now on (a convolution keeps its path for its backward pass): tests check both paths
/// on one machine, benchmarks time both in one run.
pub fn set_fused(on: bool) {
    FUSED.with(|f| f.set(on));
}

/// Whether the convolutions this thread builds run on [`conv_gemm`] and [`conv_weight_gemm`]:
/// on x86-64 with AVX-512, unless [`set_fused`] turned them off.
pub fn fused_conv_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return FUSED.with(|f| f.get()) && crate::sgemm_avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A convolution's weight matrix (`[b, rows]`) packed once for [`conv_gemm`] and used for
/// every image.
pub struct PackedWeight {
    #[cfg(target_arch = "x86_64")]
    a: crate::sgemm_avx512::PackedA,
    #[cfg(not(target_arch = "x86_64"))]
    never: std::convert::Infallible,
}

impl PackedWeight {
    /// `None` where the fused kernels do not run ([`fused_conv_available`]).
    pub fn new(w: ArrayView2<f32>) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if fused_conv_available() {
            return Some(PackedWeight {
                a: crate::sgemm_avx512::PackedA::new(w),
            });
        }
        let _ = w;
        None
    }
}

/// `out (+)= w [im2col(x_0) .. im2col(x_n)]` for image groups `xs` (`w`: `[b, rows]`,
/// `out`: `[b, xs.len() * cols]` row-major) on the AVX-512 sgemm, im2col fused into its
/// packing.
pub fn conv_gemm(xs: &[&[f32]], g: &ConvGeom, w: &PackedWeight, out: &mut [f32], acc: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::sgemm_avx512::{sgemm_packed, Strided};
        let n = g.cols() * xs.len();
        assert!(out.len() >= w.a.rows() * n, "conv_gemm: output size");
        let c = Strided {
            ptr: out.as_mut_ptr(),
            rs: n as isize,
            cs: 1,
        };
        with_padded(xs, g, |xp| {
            let b = Im2colB {
                xp,
                g,
                transposed: false,
            };
            // SAFETY: a `PackedWeight` exists only where AVX-512 is present; `out` holds
            // `rows * n` values and is borrowed mutably, so it does not overlap the image.
            unsafe {
                sgemm_packed(n, &w.a, &b, c, acc);
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xs, g, out, acc);
        match w.never {}
    }
}

/// Offset of im2col row `r` (tap `(c, i, j)`) in a padded `[c, hp, wp]` image group, for
/// output pixel (0, 0).
#[cfg(target_arch = "x86_64")]
fn tap_offset(g: &ConvGeom, r: usize) -> usize {
    let (hp, wp) = g.padded();
    let (c, ij) = (r / (g.kh * g.kw), r % (g.kh * g.kw));
    let (i, j) = (ij / g.kw, ij % g.kw);
    (c * hp + i * g.dilation[0]) * wp + j * g.dilation[1]
}

/// Whether a convolution runs on the direct kernels ([`conv_direct`],
/// [`conv_weight_direct`]), which read the padded image where it is instead of packing
/// im2col panels: on AVX-512, for stride 1, when the output rows fill at least 3/4 of the
/// 16-pixel vectors they take (28 or 30 pixels: 2 vectors; not 8 or 4).
pub fn direct_conv(g: &ConvGeom) -> bool {
    fused_conv_available()
        && g.stride == [1, 1]
        && g.ow > 0
        && 4 * g.ow >= 3 * 16 * g.ow.div_ceil(16)
}

/// The padded image groups `xs` back to back (`[c, hp, wp]` each) and 16 zeros after them,
/// the most a vector's unused lanes read past the last image.
#[cfg(target_arch = "x86_64")]
fn with_padded_images<R>(xs: &[&[f32]], g: &ConvGeom, f: impl FnOnce(&[f32]) -> R) -> R {
    let (hp, wp) = g.padded();
    let (ph, pw) = (g.padding[0], g.padding[1]);
    let image = g.c * hp * wp;
    PADDED.with(|buf| {
        let mut buf = buf.borrow_mut();
        // Every value is written below (borders zeroed, rows copied), so the buffer is not
        // cleared first: one pass over memory instead of two.
        buf.resize(xs.len() * image + 16, 0.0);
        let (body, tail) = buf.split_at_mut(xs.len() * image);
        tail.fill(0.0);
        for (x, out) in xs.iter().zip(body.chunks_exact_mut(image)) {
            for (c, plane) in out.chunks_exact_mut(hp * wp).enumerate() {
                let (top, rest) = plane.split_at_mut(ph * wp);
                top.fill(0.0);
                let (rows, bottom) = rest.split_at_mut(g.h * wp);
                bottom.fill(0.0);
                for (y, row) in rows.chunks_exact_mut(wp).enumerate() {
                    let src = &x[(c * g.h + y) * g.w..][..g.w];
                    row[..pw].fill(0.0);
                    row[pw..pw + g.w].copy_from_slice(src);
                    row[pw + g.w..].fill(0.0);
                }
            }
        }
        f(&buf)
    })
}

/// The input images of a direct convolution.
pub enum DirectInput<'a> {
    /// Image groups (`[c, h, w]` each), zero-padded into a scratch buffer by the kernels.
    Images(&'a [&'a [f32]]),
    /// `count` image groups already padded (`[c, hp, wp]` each, back to back, the geometry's
    /// padding included), followed by at least 16 more values: the most a vector's unused
    /// lanes read past the last image.
    Padded(&'a [f32], usize),
}

impl DirectInput<'_> {
    #[cfg(target_arch = "x86_64")]
    fn count(&self) -> usize {
        match self {
            DirectInput::Images(xs) => xs.len(),
            DirectInput::Padded(_, count) => *count,
        }
    }
}

/// Runs `f` on the padded images of `x`.
#[cfg(target_arch = "x86_64")]
fn with_input<R>(x: &DirectInput, g: &ConvGeom, f: impl FnOnce(&[f32]) -> R) -> R {
    match x {
        DirectInput::Images(xs) => with_padded_images(xs, g, f),
        DirectInput::Padded(xp, _) => f(xp),
    }
}

/// The 16-pixel vectors of [`with_padded_images`]' images: image `i`'s output pixel `px`
/// lands at column `i * image + px` (rows of the output `rs` apart, see [`conv_direct`]).
#[cfg(target_arch = "x86_64")]
fn pixel_vecs(g: &ConvGeom, count: usize, image: usize) -> Vec<crate::sgemm_avx512::PixelVec> {
    let (hp, wp) = g.padded();
    let mut vecs = Vec::with_capacity(count * g.oh * g.ow.div_ceil(16));
    for i in 0..count {
        for y in 0..g.oh {
            for x in (0..g.ow).step_by(16) {
                vecs.push(crate::sgemm_avx512::PixelVec {
                    src: i * g.c * hp * wp + y * wp + x,
                    dst: i * image + y * g.ow + x,
                    lanes: (g.ow - x).min(16),
                });
            }
        }
    }
    vecs
}

/// `out[o * rs + i * image + px] (+)= (w im2col(xs[i]))[o, px]` for a convolution that
/// [`direct_conv`] accepts: the kernel reads the padded images directly, and writes each
/// image's output where it belongs (no side-by-side buffer).
pub fn conv_direct(
    x: DirectInput,
    g: &ConvGeom,
    w: &PackedWeight,
    out: &mut [f32],
    rs: usize,
    image: usize,
    acc: bool,
) {
    assert!(direct_conv(g), "conv_direct: not a direct convolution");
    #[cfg(target_arch = "x86_64")]
    direct(&x, g, w, out, rs, &pixel_vecs(g, x.count(), image), acc);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, w, out, rs, image, acc);
}

/// [`conv_direct`] for any stride-1 convolution on AVX-512, in the "wide" layout: output
/// pixel `(y, x)` of image `i` and channel `o` at `out[o * rs + i * image + y * wp + x]`,
/// with `wp` the padded input's width. The 16-pixel vectors run on across rows, so narrow
/// rows waste no lanes; the `wp - ow` columns past each row's end hold garbage. Only the
/// output pixels in `rows` x `cols` are wanted: the vectors cover that window (and the
/// garbage between its rows); the rest of `out` is left as it was.
pub fn conv_direct_wide(
    x: DirectInput,
    g: &ConvGeom,
    w: &PackedWeight,
    out: &mut [f32],
    rs: usize,
    image: usize,
    (rows, cols): (Range<usize>, Range<usize>),
) {
    assert!(
        fused_conv_available() && g.stride == [1, 1],
        "conv_direct_wide: not a direct convolution"
    );
    assert!(
        rows.end <= g.oh && cols.end <= g.ow,
        "conv_direct_wide: window outside the output"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        let (hp, wp) = g.padded();
        let first = rows.start * wp + cols.start;
        let end = (rows.end - 1) * wp + cols.end;
        let vecs: Vec<_> = (0..x.count())
            .flat_map(|i| {
                (first..end)
                    .step_by(16)
                    .map(move |q| crate::sgemm_avx512::PixelVec {
                        src: i * g.c * hp * wp + q,
                        dst: i * image + q,
                        lanes: (end - q).min(16),
                    })
            })
            .collect();
        direct(&x, g, w, out, rs, &vecs, false);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, w, out, rs, image);
}

#[cfg(target_arch = "x86_64")]
fn direct(
    x: &DirectInput,
    g: &ConvGeom,
    w: &PackedWeight,
    out: &mut [f32],
    rs: usize,
    vecs: &[crate::sgemm_avx512::PixelVec],
    acc: bool,
) {
    let taps: Vec<isize> = (0..g.rows()).map(|r| tap_offset(g, r) as isize).collect();
    with_input(x, g, |xp| {
        // SAFETY: a `PackedWeight` exists only where AVX-512 is present; `sgemm_direct`
        // checks its reads and writes.
        unsafe { crate::sgemm_avx512::sgemm_direct(&w.a, xp, &taps, vecs, out, rs, acc) }
    });
}

/// `dw[o, r] += sum over images i and pixels px of gy[o * rs + i * image + px] *
/// im2col(xs[i])[r, px]` (`dw`: `[m, rows]`, `m = dw.len() / rows`) for a convolution that
/// [`direct_conv`] accepts, as dot products along the pixels: no packing, no transposition.
pub fn conv_weight_direct(
    x: DirectInput,
    g: &ConvGeom,
    gy: &[f32],
    rs: usize,
    image: usize,
    dw: &mut [f32],
) {
    weight_direct(x, g, gy, rs, image, dw, false)
}

/// [`conv_weight_direct`] as outer products of the image values and the transposed
/// gradient ([`crate::sgemm_avx512::outer_direct`]), for calls with few pixels, where the
/// dot products' horizontal sums would cost as much as the products; `dwt` transposed:
/// `dwt[r * m + o]`.
pub fn conv_weight_outer(
    x: DirectInput,
    g: &ConvGeom,
    gy: &[f32],
    rs: usize,
    image: usize,
    dwt: &mut [f32],
) {
    weight_direct(x, g, gy, rs, image, dwt, true)
}

fn weight_direct(
    x: DirectInput,
    g: &ConvGeom,
    gy: &[f32],
    rs: usize,
    image: usize,
    dw: &mut [f32],
    outer: bool,
) {
    assert!(
        direct_conv(g),
        "conv_weight_direct: not a direct convolution"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use crate::sgemm_avx512::{dot_direct, outer_direct};
        let taps: Vec<isize> = (0..g.rows()).map(|r| tap_offset(g, r) as isize).collect();
        let vecs = pixel_vecs(g, x.count(), image);
        let m = dw.len() / g.rows().max(1);
        with_input(&x, g, |xp| {
            // SAFETY: AVX-512 is present (`direct_conv`); both kernels check their reads and
            // the size of `dw`.
            unsafe {
                if outer {
                    outer_direct(gy, rs, m, xp, &taps, &vecs, dw)
                } else {
                    dot_direct(gy, rs, m, xp, &taps, &vecs, dw)
                }
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, gy, rs, image, dw, outer);
    }
}

/// `dw += gy [im2col(x_0) .. im2col(x_n)]^T` for image groups `xs` (`gy`:
/// `[b, xs.len() * cols]`, `dw`: `[b, rows]` row-major), im2col fused into the packing as
/// in [`conv_gemm`]. `false` (nothing done) when the CPU has no AVX-512.
pub fn conv_weight_gemm(xs: &[&[f32]], g: &ConvGeom, gy: ArrayView2<f32>, dw: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::sgemm_avx512::{sgemm_packed, PackedA, Strided};
        if !fused_conv_available() {
            return false;
        }
        let (m, k, n) = (gy.nrows(), g.cols() * xs.len(), g.rows());
        assert_eq!(gy.ncols(), k, "conv_weight_gemm: gradient columns");
        assert!(dw.len() >= m * n, "conv_weight_gemm: weight size");
        let a = PackedA::new(gy);
        with_padded(xs, g, |xp| {
            let b = Im2colB {
                xp,
                g,
                transposed: true,
            };
            // SAFETY: AVX-512 is present; `dw` holds `m * n` values and is borrowed mutably.
            unsafe {
                sgemm_packed(
                    n,
                    &a,
                    &b,
                    Strided {
                        ptr: dw.as_mut_ptr(),
                        rs: n as isize,
                        cs: 1,
                    },
                    true,
                );
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xs, g, gy, dw);
        false
    }
}

/// A row-major `[rows, cols]` view of a slice.
pub fn view2(s: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), &s[..rows * cols]).expect("slice of the stated size")
}

/// A mutable row-major `[rows, cols]` view of a slice.
pub fn view2_mut(s: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), &mut s[..rows * cols])
        .expect("slice of the stated size")
}

#[cfg(test)]
mod tests {
    use super::{col2im, im2col, moments, ConvGeom};

    /// The one-pass moments against plain sums, on lengths around the lanes and the
    /// parallel chunks (empty, a lane tail, several chunks with a tail).
    #[test]
    fn moments_match_plain_sums() {
        for n in [0usize, 1, 7, 8, 13, 65_536, 65_537, 200_003] {
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.61).sin() - 0.1).collect();
            let want_s: f64 = v.iter().map(|&a| a as f64).sum();
            let want_q: f64 = v.iter().map(|&a| a as f64 * a as f64).sum();
            let want_z = v.iter().filter(|&&a| a <= 0.0).count();
            let (s, q, z) = moments(&v);
            assert!(
                (s - want_s).abs() <= 1e-9 * n as f64 + 1e-12,
                "{n}: {s} vs {want_s}"
            );
            assert!(
                (q - want_q).abs() <= 1e-9 * n as f64 + 1e-12,
                "{n}: {q} vs {want_q}"
            );
            assert_eq!(z, want_z, "{n}");
        }
    }

    /// im2col against its definition, and col2im as its adjoint, over strides, paddings,
    /// dilations and non-square shapes.
    #[test]
    fn im2col_matches_its_definition_and_col2im_is_its_adjoint() {
        for (c, h, w, kh, kw, s, p, d) in [
            (2, 5, 7, 3, 3, [1, 1], [1, 1], [1, 1]),
            (3, 6, 6, 4, 4, [2, 2], [2, 2], [1, 1]),
            (1, 7, 5, 3, 2, [2, 1], [0, 1], [2, 1]),
            (2, 4, 4, 1, 1, [1, 1], [0, 0], [1, 1]),
            (2, 6, 8, 5, 3, [1, 3], [2, 0], [1, 2]),
        ] {
            let g = ConvGeom::new(c, (h, w), (kh, kw), s, p, d);
            let x: Vec<f32> = (0..c * h * w).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut col = vec![f32::NAN; g.rows() * g.cols()];
            im2col(&x, &g, &mut col);
            for ci in 0..c {
                for i in 0..kh {
                    for j in 0..kw {
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let y = (oy * s[0] + i * d[0]) as isize - p[0] as isize;
                                let xx = (ox * s[1] + j * d[1]) as isize - p[1] as isize;
                                let inside =
                                    (0..h as isize).contains(&y) && (0..w as isize).contains(&xx);
                                let want = if inside {
                                    x[(ci * h + y as usize) * w + xx as usize]
                                } else {
                                    0.0
                                };
                                let row = (ci * kh + i) * kw + j;
                                assert_eq!(col[row * g.cols() + oy * g.ow + ox], want);
                            }
                        }
                    }
                }
            }
            let cv: Vec<f32> = (0..col.len()).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut dx = vec![0.0f32; x.len()];
            col2im(&cv, &g, &mut dx);
            let lhs: f64 = col.iter().zip(&cv).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }
}
