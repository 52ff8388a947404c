use msn_autograd::kernels::{gemm_avx512, gemm_seq, gemm_with};
use ndarray::Array2;
use std::time::Instant;

fn bench(name: &str, m: usize, n: usize, k: usize, ta: bool, tb: bool) {
    let a = if ta {
        Array2::<f32>::from_elem((k, m), 0.5)
    } else {
        Array2::<f32>::from_elem((m, k), 0.5)
    };
    let b = if tb {
        Array2::<f32>::from_elem((n, k), 0.25)
    } else {
        Array2::<f32>::from_elem((k, n), 0.25)
    };
    let mut c = Array2::<f32>::zeros((m, n));
    let av = if ta { a.t() } else { a.view() };
    let bv = if tb { b.t() } else { b.view() };
    let reps = (2e9 / (2.0 * (m * n * k) as f64)).max(1.0) as usize;
    for _ in 0..3 {
        gemm_seq(&mut c.view_mut(), av, bv, false);
    }
    let s = Instant::now();
    for _ in 0..reps {
        gemm_seq(&mut c.view_mut(), av, bv, false);
    }
    let t = s.elapsed().as_secs_f64();
    let g1 = 2.0 * (m * n * k * reps) as f64 / t / 1e9;
    let s = Instant::now();
    for _ in 0..reps {
        gemm_with(&mut c.view_mut(), av, bv, false, None);
    }
    let g3 = 2.0 * (m * n * k * reps) as f64 / s.elapsed().as_secs_f64() / 1e9;
    let s = Instant::now();
    for _ in 0..reps {
        gemm_avx512(&mut c.view_mut(), av, bv, false);
    }
    let g4 = 2.0 * (m * n * k * reps) as f64 / s.elapsed().as_secs_f64() / 1e9;
    let s = Instant::now();
    for _ in 0..reps {
        unsafe {
            let (sa, sb, sc) = (
                av.strides().to_vec(),
                bv.strides().to_vec(),
                c.strides().to_vec(),
            );
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                av.as_ptr(),
                sa[0],
                sa[1],
                bv.as_ptr(),
                sb[0],
                sb[1],
                0.0,
                c.as_mut_ptr(),
                sc[0],
                sc[1],
            );
        }
    }
    let t = s.elapsed().as_secs_f64();
    let g2 = 2.0 * (m * n * k * reps) as f64 / t / 1e9;
    println!(
        "{name:<22} m{m:5} n{n:5} k{k:5} ta{} tb{}  chosen {g1:6.1}  gemm {g3:6.1}  mm {g2:6.1}  avx512 {g4:6.1} GFLOP/s",
        ta as u8, tb as u8
    );
}

fn main() {
    bench("fwd 32x32 l1024", 32, 1024, 288, false, false);
    bench("fwd^T 32x32", 1024, 32, 288, true, true);
    bench("dW 32x32", 32, 288, 1024, false, true);
    bench("dX 32x32 (W^T gy)", 288, 1024, 32, true, false);
    bench("dX nontrans", 288, 1024, 32, false, false);
    bench("fwd 64@16", 64, 256, 576, false, false);
    bench("fwd 256@4", 256, 16, 1152, false, false);
    bench("fwd 256@4 x16img", 256, 256, 1152, false, false);
    bench("fwd 128@8", 128, 64, 576, false, false);
    bench("big square", 512, 512, 512, false, false);
    bench("cnn3 conv1 fwd", 16, 784, 25, false, false);
    bench("cnn3 conv2 fwd", 32, 900, 144, false, false);
    bench("cnn3 conv3 fwd", 32, 256, 512, false, false);
    bench("cnn3 conv2 dX", 144, 900, 32, true, false);
    bench("cnn3 conv3 dX", 512, 256, 32, true, false);
    bench("cnn3 conv2 dW", 32, 144, 900, false, true);
    bench("big 1024", 1024, 1024, 1024, false, false);
}
