use msn_autograd::ops::elementwise::spread;
use msn_autograd::Var;
use msn_nn::layers::SpectralNorm;
use rand::SeedableRng;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let w0 = spread(&[256, 128, 3, 3], -1.0, 1.0, 7);
    let sn = SpectralNorm::new(&w0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let w = Var::parameter(w0);
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..20 {
            w.zero_grad();
            sn.normalize(&w, true).sum().backward();
        }
        println!(
            "{:.3} ms per normalize + backward",
            t.elapsed().as_secs_f64() * 1e3 / 20.0
        );
    }
    let t = Instant::now();
    for _ in 0..20 {
        sn.power_iteration(&w.value(), 1);
    }
    println!(
        "{:.3} ms per power iteration",
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );
}
