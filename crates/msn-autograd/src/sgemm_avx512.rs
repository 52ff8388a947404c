//! Single-threaded sgemm with AVX-512 kernels, for the per-image products of the
//! convolutions (each thread runs its own images, so this never spawns threads).
//!
//! The `gemm` and `matrixmultiply` crates stop at AVX2 on stable Rust (the `gemm` crate's
//! AVX-512 kernels, behind its `x86-v4` feature, measured slower than its AVX2 ones here),
//! while a Sapphire Rapids core does twice the AVX2 work per cycle with AVX-512. This is the
//! classic GotoBLAS blocking: B is packed in `KC x NC` blocks (L2), A in `MC x KC` blocks,
//! and an `MR x NR` = 8 x 48 register tile (24 zmm accumulators) runs over one packed A
//! micro-panel (L1) against the packed B micro-panels. Ragged edges use AVX-512 masks for C;
//! the packed panels are zero-padded, so the kernel itself has no edge cases.

use std::arch::x86_64::*;
use std::cell::RefCell;

const MR: usize = 8;
/// Columns of a packed B panel: [`PackB::pack`] writes panels of this width.
pub const NR: usize = 48;
const KC: usize = 128;
const NC: usize = 1536;

/// Whether this CPU runs the AVX-512 kernels (msn-kernels' one CPU probe, which `MSN_CPU`
/// caps).
pub fn available() -> bool {
    msn_kernels::cpu::get().avx512()
}

thread_local! {
    /// Per-thread packing buffer of a B block.
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A strided matrix operand: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct Strided<P> {
    pub ptr: P,
    pub rs: isize,
    pub cs: isize,
}

/// A B operand that packs itself: the convolutions pack B straight from the image, so the
/// column matrix of im2col is never written out.
pub trait PackB {
    /// Writes rows `pc..pc + kc` and columns `jc..jc + nc` of B into `out` as panels of
    /// [`NR`] columns: panel `p` holds columns `jc + p * NR ..` at `out[p * NR * kc..]`, `NR`
    /// values per row, zero past column `nc`. `out` holds `nc.next_multiple_of(NR) * kc`.
    fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [f32]);
}

/// A plain strided B.
struct StridedB(Strided<*const f32>);

impl PackB for StridedB {
    fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [f32]) {
        // SAFETY: `sgemm`'s caller vouched for the pointer and strides; `sgemm_packed` asks
        // only for rows and columns inside the shape.
        unsafe { pack_b(self.0, pc, kc, jc, nc, out) }
    }
}

/// An A operand (`[m, k]`) packed once as `MR`-row panels, `MR` values per k (zero rows
/// past `m`): a convolution's weight is packed once and used for every image.
pub struct PackedA {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedA {
    /// Packs `a`.
    pub fn new(a: ndarray::ArrayView2<f32>) -> Self {
        let (m, k) = a.dim();
        let mut data = vec![0.0f32; m.next_multiple_of(MR) * k];
        if k > 0 {
            for (p, panel) in data.chunks_exact_mut(MR * k).enumerate() {
                for r in 0..MR.min(m - p * MR) {
                    for (kk, v) in a.row(p * MR + r).iter().enumerate() {
                        panel[kk * MR + r] = *v;
                    }
                }
            }
        }
        PackedA { data, m, k }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.m
    }
}

/// `c = a b` (or `c += a b` when `accumulate`) for `a: [m, k]`, `b: [k, n]`, `c: [m, n]`.
///
/// # Safety
/// [`available`] must be true; each operand's pointer and strides must address a live
/// matrix of its stated shape; `c` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: ndarray::ArrayView2<f32>,
    b: Strided<*const f32>,
    c: Strided<*mut f32>,
    accumulate: bool,
) {
    debug_assert_eq!(a.dim(), (m, k));
    sgemm_packed(n, &PackedA::new(a), &StridedB(b), c, accumulate)
}

/// `c = a b` (or `c += a b` when `accumulate`) with a packed A (`[m, k]`) and a B
/// (`[k, n]`) that packs itself.
///
/// # Safety
/// [`available`] must be true; `c` must address a live `[a.rows(), n]` matrix with its
/// strides and must not overlap what `b` reads.
pub unsafe fn sgemm_packed(
    n: usize,
    a: &PackedA,
    b: &impl PackB,
    c: Strided<*mut f32>,
    accumulate: bool,
) {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *c.ptr.offset(i as isize * c.rs + j as isize * c.cs) = 0.0;
                }
            }
        }
        return;
    }
    PACK.with(|bp| {
        let mut bp = bp.borrow_mut();
        // k in equal blocks of at most KC (288 = 144 + 144, not 256 + 32: a short last
        // block pays the C tile's loads and stores for little work).
        let kb = k.div_ceil(k.div_ceil(KC));
        bp.resize(NC.min(n.next_multiple_of(NR)) * kb, 0.0);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(kb) {
                let kc = kb.min(k - pc);
                let bp = &mut bp[..nc.next_multiple_of(NR) * kc];
                b.pack(pc, kc, jc, nc, bp);
                let load_c = accumulate || pc > 0;
                // Each B micro-panel (kc x NR) stays in L1 while every A panel of the
                // block passes over it.
                for jr in (0..nc).step_by(NR) {
                    let nr = NR.min(nc - jr);
                    for ir in (0..m).step_by(MR) {
                        let mr = MR.min(m - ir);
                        let apanel = a.data.as_ptr().add(ir * k + pc * MR);
                        let cptr = c.ptr.offset(ir as isize * c.rs + (jc + jr) as isize * c.cs);
                        kernel(
                            kc,
                            apanel,
                            bp.as_ptr().add(jr * kc),
                            Strided { ptr: cptr, ..c },
                            mr,
                            nr,
                            load_c,
                        );
                    }
                }
            }
        }
    });
}

/// Packs `b[pc..pc+kc, jc..jc+nc]` as `NR`-column panels, `NR` values per k, zero-padded.
unsafe fn pack_b(
    b: Strided<*const f32>,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    bp: &mut [f32],
) {
    for (p, jr) in (0..nc).step_by(NR).enumerate() {
        let nr = NR.min(nc - jr);
        let panel = &mut bp[p * NR * kc..(p + 1) * NR * kc];
        let at = |kk: usize, j: usize| {
            b.ptr
                .offset((pc + kk) as isize * b.rs + (jc + jr + j) as isize * b.cs)
        };
        if b.cs == 1 {
            for kk in 0..kc {
                let dst = &mut panel[kk * NR..(kk + 1) * NR];
                dst[..nr].copy_from_slice(std::slice::from_raw_parts(at(kk, 0), nr));
                dst[nr..].fill(0.0);
            }
        } else {
            // Transposed B (unit stride along k): read each column once, contiguously when
            // `rs` is 1.
            for j in 0..NR {
                if j < nr {
                    for kk in 0..kc {
                        panel[kk * NR + j] = *at(kk, j);
                    }
                } else {
                    for kk in 0..kc {
                        panel[kk * NR + j] = 0.0;
                    }
                }
            }
        }
    }
}

/// Fills a packed B panel (`starts.len()` rows of [`NR`] values) by gathering:
/// `panel[kk * NR + t] = xp[starts[kk] + offsets[t]]` for `t < offsets.len()`, zero beyond.
/// Panics when an index would fall outside `xp` or the panel is too short.
pub fn gather_panel(xp: &[f32], offsets: &[usize], starts: &[usize], panel: &mut [f32]) {
    assert!(available(), "gather_panel: this CPU has no AVX-512");
    assert!(offsets.len() <= NR && panel.len() >= starts.len() * NR);
    let (Some(&om), Some(&sm)) = (offsets.iter().max(), starts.iter().max()) else {
        panel[..starts.len() * NR].fill(0.0);
        return;
    };
    assert!(
        om + sm < xp.len() && xp.len() <= i32::MAX as usize,
        "gather_panel: out of bounds"
    );
    let mut idx = [0i32; NR];
    for (i, o) in idx.iter_mut().zip(offsets) {
        *i = *o as i32;
    }
    // SAFETY: AVX-512 is present; every gathered index is below `om + sm < xp.len()` (lanes
    // past `offsets.len()` are masked off), and the panel holds `starts.len() * NR` values.
    unsafe { gather_rows(xp.as_ptr(), &idx, offsets.len(), starts, panel.as_mut_ptr()) }
}

#[target_feature(enable = "avx512f")]
unsafe fn gather_rows(xp: *const f32, idx: &[i32; NR], n: usize, starts: &[usize], out: *mut f32) {
    let masks = [
        mask(n),
        mask(n.saturating_sub(16)),
        mask(n.saturating_sub(32)),
    ];
    let base = [
        _mm512_loadu_si512(idx.as_ptr().cast()),
        _mm512_loadu_si512(idx.as_ptr().add(16).cast()),
        _mm512_loadu_si512(idx.as_ptr().add(32).cast()),
    ];
    for (kk, &st) in starts.iter().enumerate() {
        let src = xp.add(st);
        for j in 0..3 {
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), masks[j], base[j], src);
            _mm512_storeu_ps(out.add(kk * NR + 16 * j), v);
        }
    }
}

/// Fills a packed B panel (`starts.len()` rows of [`NR`] values) from contiguous runs:
/// `panel[kk * NR + at + q] = xp[starts[kk] + src + q]` for each run `(src, len, at)` and
/// `q < len`; values past `width` are zero. The runs must cover `0..width` of a row.
/// Panics when a run would read outside `xp` or write past a row.
pub fn copy_panel(
    xp: &[f32],
    runs: &[(usize, usize, usize)],
    width: usize,
    starts: &[usize],
    panel: &mut [f32],
) {
    assert!(available(), "copy_panel: this CPU has no AVX-512");
    assert!(width <= NR && panel.len() >= starts.len() * NR);
    let reach = runs
        .iter()
        .map(|&(src, len, _)| src + len)
        .max()
        .unwrap_or(0);
    let smax = starts.iter().copied().max().unwrap_or(0);
    assert!(
        runs.iter().all(|&(_, len, at)| at + len <= NR)
            && (starts.is_empty() || smax + reach <= xp.len()),
        "copy_panel: out of bounds"
    );
    // SAFETY: AVX-512 is present; reads stay below `smax + reach <= xp.len()`, writes inside
    // the `starts.len()` rows of `NR` values (checked above).
    unsafe { copy_rows(xp.as_ptr(), runs, width, starts, panel.as_mut_ptr()) }
}

#[target_feature(enable = "avx512f")]
unsafe fn copy_rows(
    xp: *const f32,
    runs: &[(usize, usize, usize)],
    width: usize,
    starts: &[usize],
    out: *mut f32,
) {
    for (kk, &st) in starts.iter().enumerate() {
        let row = out.add(kk * NR);
        let mut z = width;
        while z < NR {
            _mm512_mask_storeu_ps(row.add(z), mask(NR - z), _mm512_setzero_ps());
            z += 16;
        }
        for &(src, len, at) in runs {
            let (from, to) = (xp.add(st + src), row.add(at));
            let mut q = 0;
            while q < len {
                let m = mask(len - q);
                _mm512_mask_storeu_ps(to.add(q), m, _mm512_maskz_loadu_ps(m, from.add(q)));
                q += 16;
            }
        }
    }
}

/// Lanes `0..n` of a 16-lane vector (all 16 when `n >= 16`).
#[inline(always)]
fn mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// The 8 x 48 tile: `c[..mr, ..nr] (+)= apanel^T bpanel` over `kc`.
#[target_feature(enable = "avx512f")]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: Strided<*mut f32>,
    mr: usize,
    nr: usize,
    load_c: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 3]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        let b2 = _mm512_loadu_ps(b.add(32));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            row[2] = _mm512_fmadd_ps(av, b2, row[2]);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    store(&acc, c, mr, nr, load_c);
}

/// Writes (or adds, `load_c`) the first `mr` rows and `nr` columns of a tile into `c`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store(acc: &[[__m512; 3]; MR], c: Strided<*mut f32>, mr: usize, nr: usize, load_c: bool) {
    if c.cs == 1 {
        let masks = [
            mask(nr),
            mask(nr.saturating_sub(16)),
            mask(nr.saturating_sub(32)),
        ];
        for (r, row) in acc.iter().enumerate().take(mr) {
            let crow = c.ptr.offset(r as isize * c.rs);
            for (j, (v, m)) in row.iter().zip(masks).enumerate() {
                if m == 0 {
                    continue;
                }
                let p = crow.add(16 * j);
                let v = if load_c {
                    _mm512_add_ps(*v, _mm512_maskz_loadu_ps(m, p))
                } else {
                    *v
                };
                _mm512_mask_storeu_ps(p, m, v);
            }
        }
    } else {
        let mut tile = [[0.0f32; NR]; MR];
        for (t, row) in tile.iter_mut().zip(acc) {
            for (j, v) in row.iter().enumerate() {
                _mm512_storeu_ps(t.as_mut_ptr().add(16 * j), *v);
            }
        }
        for (r, t) in tile.iter().enumerate().take(mr) {
            for (j, v) in t.iter().enumerate().take(nr) {
                let p = c.ptr.offset(r as isize * c.rs + j as isize * c.cs);
                *p = if load_c { *p + v } else { *v };
            }
        }
    }
}

/// One vector of up to 16 output pixels of a stride-1 convolution, consecutive in one
/// output row: its pixels read the padded image at `src + tap` for each tap, and sit at
/// column `dst` onwards of the output (or of the output gradient). Only `lanes` of the 16
/// are real; the others read past the row, into the padding or the next row, and are
/// dropped (masked stores, or zero lanes of the gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelVec {
    pub src: usize,
    pub dst: usize,
    pub lanes: usize,
}

/// Checks that every vector's full 16-lane reads at each tap stay inside `xp`, and returns
/// the largest `dst + lanes`.
fn direct_bounds(what: &str, xp: &[f32], taps: &[isize], vecs: &[PixelVec]) -> usize {
    let tmin = taps.iter().copied().min().unwrap_or(0);
    let tmax = taps.iter().copied().max().unwrap_or(0);
    let smax = vecs.iter().map(|v| v.src).max().unwrap_or(0);
    assert!(
        tmin >= 0 && tmax as usize + smax + 16 <= xp.len(),
        "{what}: reads outside the image"
    );
    assert!(
        vecs.iter().all(|v| (1..=16).contains(&v.lanes)),
        "{what}: 1 to 16 lanes a vector"
    );
    vecs.iter().map(|v| v.dst + v.lanes).max().unwrap_or(0)
}

/// The direct form of [`kernel`] for stride-1 convolutions: B is read straight from the
/// padded image, vector `v` of row `kk` at `src[v] + taps[kk]`, with no packing. `NV` (1 to
/// 3) vectors, stored at their own columns `dst[v]` under their lane masks.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_direct<const NV: usize>(
    kc: usize,
    a: *const f32,
    taps: *const isize,
    src: [*const f32; 3],
    c: *mut f32,
    rs: usize,
    dst: [usize; 3],
    masks: [__mmask16; 3],
    mr: usize,
    load_c: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 3]; MR];
    let mut a = a;
    for kk in 0..kc {
        let t = *taps.add(kk);
        let mut b = [_mm512_setzero_ps(); 3];
        for v in 0..NV {
            b[v] = _mm512_loadu_ps(src[v].offset(t));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r));
            for v in 0..NV {
                row[v] = _mm512_fmadd_ps(av, b[v], row[v]);
            }
        }
        a = a.add(MR);
    }
    for (r, row) in acc.iter().enumerate().take(mr) {
        for v in 0..NV {
            let p = c.add(r * rs + dst[v]);
            let val = if load_c {
                _mm512_add_ps(row[v], _mm512_maskz_loadu_ps(masks[v], p))
            } else {
                row[v]
            };
            _mm512_mask_storeu_ps(p, masks[v], val);
        }
    }
}

/// `c (+)= a B` for a stride-1 convolution read straight from its padded input `xp`:
/// `B[kk, vector v lane l] = xp[taps[kk] + v.src + l]`, written to `c[i * rs + v.dst + l]`
/// for output row `i` and `l < v.lanes`. Panics if a read would leave `xp` or a write `c`.
///
/// # Safety
/// [`available`] must be true.
pub unsafe fn sgemm_direct(
    a: &PackedA,
    xp: &[f32],
    taps: &[isize],
    vecs: &[PixelVec],
    c: &mut [f32],
    rs: usize,
    accumulate: bool,
) {
    let (m, k) = (a.m, a.k);
    assert_eq!(taps.len(), k, "sgemm_direct: one tap per row of B");
    if m == 0 || vecs.is_empty() {
        return;
    }
    assert!(k > 0, "sgemm_direct: B has no rows");
    let reach = direct_bounds("sgemm_direct", xp, taps, vecs);
    assert!(
        (m - 1) * rs + reach <= c.len(),
        "sgemm_direct: writes outside c"
    );
    let kb = k.div_ceil(k.div_ceil(KC));
    for pc in (0..k).step_by(kb) {
        let kc = kb.min(k - pc);
        let load_c = accumulate || pc > 0;
        let tp = taps.as_ptr().add(pc);
        for three in vecs.chunks(3) {
            let at = |v: usize| three[v.min(three.len() - 1)];
            let src = [0, 1, 2].map(|v| xp.as_ptr().add(at(v).src));
            let dst = [0, 1, 2].map(|v| at(v).dst);
            let masks = [0, 1, 2].map(|v| mask(at(v).lanes));
            for ir in (0..m).step_by(MR) {
                let mr = MR.min(m - ir);
                let apanel = a.data.as_ptr().add(ir * k + pc * MR);
                let cp = c.as_mut_ptr().add(ir * rs);
                match three.len() {
                    3 => kernel_direct::<3>(kc, apanel, tp, src, cp, rs, dst, masks, mr, load_c),
                    2 => kernel_direct::<2>(kc, apanel, tp, src, cp, rs, dst, masks, mr, load_c),
                    _ => kernel_direct::<1>(kc, apanel, tp, src, cp, rs, dst, masks, mr, load_c),
                }
            }
        }
    }
}

/// Rows and taps of one tile of [`dot_direct`]: 16 accumulators (LLVM spills some of 20),
/// 4 gradient vectors and the image vectors fit the registers.
const DOT_M: usize = 4;
const DOT_T: usize = 4;
/// Vectors a block of [`dot_direct`]: a call's vectors in one block at the shapes we train
/// (cnn3's and vgg7's calls take 240-256), so each tile sums its registers horizontally
/// once a call. 4-5% faster (one thread) than blocks of 96, whose gradient rows stayed in L1
/// but which paid those sums 2.7 times as often.
const DOT_V: usize = 256;

/// `dw[i * taps.len() + kk] += sum over vectors v and lanes l < v.lanes of
/// gy[i * gs + v.dst + l] * xp[taps[kk] + v.src + l]` for `i < m`: a stride-1 convolution's
/// weight gradient as dot products along the pixels, both operands read where they are,
/// with no packing or transposition. Panics if a read would leave `gy` or `xp`, or `dw` is
/// short.
///
/// # Safety
/// [`available`] must be true.
pub unsafe fn dot_direct(
    gy: &[f32],
    gs: usize,
    m: usize,
    xp: &[f32],
    taps: &[isize],
    vecs: &[PixelVec],
    dw: &mut [f32],
) {
    let n = taps.len();
    if m == 0 || n == 0 || vecs.is_empty() {
        return;
    }
    let reach = direct_bounds("dot_direct", xp, taps, vecs);
    assert!(
        (m - 1) * gs + reach <= gy.len(),
        "dot_direct: reads outside gy"
    );
    assert!(dw.len() >= m * n, "dot_direct: weight gradient size");
    for block in vecs.chunks(DOT_V) {
        // The tile's gradient rows (4 x 16 KB) stay in L2 while the taps pass.
        for i0 in (0..m).step_by(DOT_M) {
            // A ragged last tile repeats its last row (or tap) and drops the repeat.
            let gr = [0, 1, 2, 3].map(|i| gy.as_ptr().add((i0 + i).min(m - 1) * gs));
            for t0 in (0..n).step_by(DOT_T) {
                let tap = |t: usize| taps[(t0 + t).min(n - 1)];
                let xt: [*const f32; DOT_T] = std::array::from_fn(|t| xp.as_ptr().offset(tap(t)));
                let sums = dot_tile(gr, xt, block);
                for (i, row) in sums.iter().enumerate().take(m - i0) {
                    let out = &mut dw[(i0 + i) * n + t0..];
                    for (o, s) in out.iter_mut().zip(row).take(n - t0) {
                        *o += s;
                    }
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn dot_tile(
    gy: [*const f32; DOT_M],
    xt: [*const f32; DOT_T],
    vecs: &[PixelVec],
) -> [[f32; DOT_T]; DOT_M] {
    // One flat array of accumulators, indexed by constants once the loops unroll, so they
    // all live in registers.
    let mut acc = [_mm512_setzero_ps(); DOT_M * DOT_T];
    for v in vecs {
        let m = mask(v.lanes);
        let g0 = _mm512_maskz_loadu_ps(m, gy[0].add(v.dst));
        let g1 = _mm512_maskz_loadu_ps(m, gy[1].add(v.dst));
        let g2 = _mm512_maskz_loadu_ps(m, gy[2].add(v.dst));
        let g3 = _mm512_maskz_loadu_ps(m, gy[3].add(v.dst));
        for t in 0..DOT_T {
            let x = _mm512_loadu_ps(xt[t].add(v.src));
            acc[t] = _mm512_fmadd_ps(g0, x, acc[t]);
            acc[DOT_T + t] = _mm512_fmadd_ps(g1, x, acc[DOT_T + t]);
            acc[2 * DOT_T + t] = _mm512_fmadd_ps(g2, x, acc[2 * DOT_T + t]);
            acc[3 * DOT_T + t] = _mm512_fmadd_ps(g3, x, acc[3 * DOT_T + t]);
        }
    }
    let mut sums = [[0.0f32; DOT_T]; DOT_M];
    for (i, row) in sums.iter_mut().enumerate() {
        for (t, s) in row.iter_mut().enumerate() {
            *s = _mm512_reduce_add_ps(acc[i * DOT_T + t]);
        }
    }
    sums
}

/// Taps of one tile of [`outer_direct`]: 8 taps by 2 vectors of output channels make 16
/// accumulators, with the 8 broadcasts and 2 loads that feed them, well inside the registers.
const OUTER_T: usize = 8;
/// Output channels a block of [`outer_direct`] (two 16-lane vectors).
const OUTER_M: usize = 32;

/// The sums of [`dot_direct`] as outer products, written transposed: for `i < m` and each
/// tap `kk`, `dwt[kk * m + i]` gains the sum over vectors `v` and lanes `l < v.lanes` of
/// `gy[i * gs + v.dst + l] * xp[taps[kk] + v.src + l]`. For each block of 32 output
/// channels the gradient is transposed once into `[pixel, 32]` rows (two gathers a pixel);
/// then each tile of 8 taps runs over all the pixels with its accumulators in registers (one
/// broadcast of the image value and two vector loads of the gradient feed 16 products) and
/// adds them to its 8 rows of `dwt`. Where the dot products are short (a strided
/// convolution's phase images, an image a call), their horizontal sums cost as much as the
/// products. Panics if a read would leave `gy` or `xp`, or `dwt` is short.
///
/// # Safety
/// [`available`] must be true.
pub unsafe fn outer_direct(
    gy: &[f32],
    gs: usize,
    m: usize,
    xp: &[f32],
    taps: &[isize],
    vecs: &[PixelVec],
    dwt: &mut [f32],
) {
    let n = taps.len();
    if m == 0 || n == 0 || vecs.is_empty() {
        return;
    }
    let reach = direct_bounds("outer_direct", xp, taps, vecs);
    assert!(
        (m - 1) * gs + reach <= gy.len(),
        "outer_direct: reads outside gy"
    );
    assert!(dwt.len() >= m * n, "outer_direct: weight gradient size");
    assert!(
        16 * gs <= i32::MAX as usize,
        "outer_direct: gradient rows too far apart"
    );
    let pixels: usize = vecs.iter().map(|v| v.lanes).sum();
    let rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(gs as i32),
    );
    OUTER_PANEL.with(|panel| {
        let mut panel = panel.borrow_mut();
        panel.resize(pixels * OUTER_M, 0.0);
        for o0 in (0..m).step_by(OUTER_M) {
            let mb = OUTER_M.min(m - o0);
            // gy^T for this block: panel row p holds pixel p's 32 channels, those past `m`
            // zero. Channel o of a gather reads gy[(o0 + j * 16 + o) * gs + pixel], inside
            // gy for o0 + j * 16 + o < m (checked above).
            let masks = [0, 1].map(|j| mask(mb.saturating_sub(16 * j).min(16)));
            let mut out = panel.as_mut_ptr();
            for v in vecs {
                for l in 0..v.lanes {
                    for (j, &k) in masks.iter().enumerate() {
                        let at = gy.as_ptr().add((o0 + 16 * j) * gs + v.dst + l);
                        let g = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), k, rows, at);
                        _mm512_storeu_ps(out.add(16 * j), g);
                    }
                    out = out.add(OUTER_M);
                }
            }
            for t0 in (0..n).step_by(OUTER_T) {
                // A ragged last tile repeats its last tap and drops the repeat.
                let tap = [0, 1, 2, 3, 4, 5, 6, 7].map(|t| taps[(t0 + t).min(n - 1)]);
                let nt = OUTER_T.min(n - t0);
                let dst = dwt.as_mut_ptr().add(t0 * m + o0);
                if mb > 16 {
                    outer_tile::<2>(xp.as_ptr(), tap, vecs, panel.as_ptr(), dst, m, nt, masks);
                } else {
                    outer_tile::<1>(xp.as_ptr(), tap, vecs, panel.as_ptr(), dst, m, nt, masks);
                }
            }
        }
    })
}

thread_local! {
    /// [`outer_direct`]'s transposed gradient block.
    static OUTER_PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One tile of [`outer_direct`]: `dst[t * rs + o] += sum over pixels of xp[taps[t] + pixel]
/// * panel[pixel * 32 + o]` for `t < nt` and the channels `o` of `masks` (`NV` vectors),
/// pixels in the order of `vecs`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn outer_tile<const NV: usize>(
    xp: *const f32,
    taps: [isize; OUTER_T],
    vecs: &[PixelVec],
    panel: *const f32,
    dst: *mut f32,
    rs: usize,
    nt: usize,
    masks: [__mmask16; 2],
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; OUTER_T];
    let mut g = panel;
    for v in vecs {
        let base = xp.add(v.src);
        let rows = taps.map(|t| base.offset(t));
        for l in 0..v.lanes {
            let mut gv = [_mm512_setzero_ps(); 2];
            for (j, x) in gv.iter_mut().enumerate().take(NV) {
                *x = _mm512_loadu_ps(g.add(16 * j));
            }
            for t in 0..OUTER_T {
                let x = _mm512_set1_ps(*rows[t].add(l));
                for j in 0..NV {
                    acc[t][j] = _mm512_fmadd_ps(x, gv[j], acc[t][j]);
                }
            }
            g = g.add(OUTER_M);
        }
    }
    for (t, row) in acc.iter().enumerate().take(nt) {
        for j in 0..NV {
            let p = dst.add(t * rs + 16 * j);
            let sum = _mm512_add_ps(row[j], _mm512_maskz_loadu_ps(masks[j], p));
            _mm512_mask_storeu_ps(p, masks[j], sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `outer_direct` against the definition summed in f64 (and so against `dot_direct`'s
    /// sums): channel counts around the 16- and 32-channel blocks, tap counts around the
    /// 8-tap tile, partial vectors, and the accumulation into what `dwt` held.
    #[test]
    fn outer_direct_matches_the_definition() {
        if !available() {
            eprintln!("SKIPPED: this CPU has no AVX-512");
            return;
        }
        let val = |i: usize, s: f32| (i as f32 * 0.377 + s).sin();
        for (m, n) in [(1, 1), (16, 25), (17, 8), (32, 9), (33, 16), (70, 3)] {
            let xp: Vec<f32> = (0..4000).map(|i| val(i, 0.3)).collect();
            let taps: Vec<isize> = (0..n).map(|t| (t * 37 % 500) as isize).collect();
            let vecs: Vec<PixelVec> = (0..9)
                .map(|v| PixelVec {
                    src: v * 300 + v % 3,
                    dst: v * 16,
                    lanes: [16, 5, 12][v % 3],
                })
                .collect();
            let gs = 9 * 16 + 3;
            let gy: Vec<f32> = (0..m * gs).map(|i| val(i, 1.1)).collect();
            let start: Vec<f32> = (0..m * n).map(|i| val(i, 2.0)).collect();
            let mut dwt = start.clone();
            unsafe { outer_direct(&gy, gs, m, &xp, &taps, &vecs, &mut dwt) };
            for i in 0..m {
                for (kk, &t) in taps.iter().enumerate() {
                    let mut want = start[kk * m + i] as f64;
                    for v in &vecs {
                        for l in 0..v.lanes {
                            want += gy[i * gs + v.dst + l] as f64
                                * xp[(t + (v.src + l) as isize) as usize] as f64;
                        }
                    }
                    let got = dwt[kk * m + i] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "m {m} n {n} ({i}, {kk}): {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Against a plain triple loop, over ragged shapes, transposed operands and accumulate.
    #[test]
    fn matches_the_definition() {
        if !available() {
            eprintln!("SKIPPED: this CPU has no AVX-512");
            return;
        }
        let shapes = [
            (1, 1, 1),
            (8, 5, 48),
            (9, 3, 49),
            (16, 25, 784),
            (7, 300, 97),
            (33, 257, 17),
            (300, 40, 1600),
            (2, 600, 3),
        ];
        for (si, &(m, k, n)) in shapes.iter().enumerate() {
            for (ta, tb, tc, acc) in [
                (false, false, false, false),
                (true, false, false, true),
                (false, true, false, false),
                (true, true, true, true),
            ] {
                let val = |i: usize, s: f32| (i as f32 * 0.731 + s).sin() * 2.0;
                let a: Vec<f32> = (0..m * k).map(|i| val(i, si as f32)).collect();
                let b: Vec<f32> = (0..k * n).map(|i| val(i, 0.5)).collect();
                let c0: Vec<f32> = (0..m * n).map(|i| val(i, 1.5)).collect();
                // Element (i, j) of a row-major [r, c] buffer, or of its transpose.
                let st = |t: bool, rows: usize, cols: usize| -> (isize, isize) {
                    if t {
                        (1, rows as isize)
                    } else {
                        (cols as isize, 1)
                    }
                };
                let (ars, acs) = st(ta, m, k);
                let (brs, bcs) = st(tb, k, n);
                let (crs, ccs) = st(tc, m, n);
                let mut c = c0.clone();
                let shape = ndarray::ShapeBuilder::strides((m, k), (ars as usize, acs as usize));
                let av = ndarray::ArrayView2::from_shape(shape, &a).unwrap();
                unsafe {
                    sgemm(
                        m,
                        k,
                        n,
                        av,
                        Strided {
                            ptr: b.as_ptr(),
                            rs: brs,
                            cs: bcs,
                        },
                        Strided {
                            ptr: c.as_mut_ptr(),
                            rs: crs,
                            cs: ccs,
                        },
                        acc,
                    );
                }
                for i in 0..m {
                    for j in 0..n {
                        let mut want = 0.0f64;
                        for p in 0..k {
                            let av = a[(i as isize * ars + p as isize * acs) as usize];
                            let bv = b[(p as isize * brs + j as isize * bcs) as usize];
                            want += av as f64 * bv as f64;
                        }
                        let at = (i as isize * crs + j as isize * ccs) as usize;
                        if acc {
                            want += c0[at] as f64;
                        }
                        let got = c[at] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (k as f64).sqrt() * want.abs().max(1.0),
                            "m{m} k{k} n{n} ta{ta} tb{tb} tc{tc} acc{acc} at ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
