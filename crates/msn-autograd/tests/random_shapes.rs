//! Property tests: gradients match central finite differences on random shapes and settings.

use msn_autograd::gradcheck::check;
use msn_autograd::ops::conv::ConvOptions;
use msn_autograd::ops::elementwise::spread;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn conv2d(n in 1usize..3, cg in 1usize..3, og in 1usize..3, groups in 1usize..3, h in 3usize..7, w in 3usize..7,
              k in 1usize..4, stride in 1usize..3, padding in 0usize..2, dilation in 1usize..3, seed in 0u64..1000) {
        prop_assume!(h + 2 * padding > dilation * (k - 1) && w + 2 * padding > dilation * (k - 1));
        let x = spread(&[n, cg * groups, h, w], -1.0, 1.0, seed);
        let wt = spread(&[og * groups, cg, k, k], -1.0, 1.0, seed + 1);
        let o = ConvOptions::default().stride(stride).padding(padding).dilation(dilation).groups(groups);
        check("conv2d", &[&x, &wt], move |v| v[0].conv2d(&v[1], o)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv_transpose2d(n in 1usize..3, cg in 1usize..3, og in 1usize..3, groups in 1usize..3, h in 2usize..5, w in 2usize..5,
                        k in 1usize..4, stride in 1usize..3, padding in 0usize..2, seed in 0u64..1000) {
        prop_assume!(padding < k);
        let output_padding = if stride > 1 { seed as usize % stride } else { 0 };
        let x = spread(&[n, cg * groups, h, w], -1.0, 1.0, seed);
        let wt = spread(&[cg * groups, og, k, k], -1.0, 1.0, seed + 1);
        let o = ConvOptions::default().stride(stride).padding(padding).groups(groups).output_padding(output_padding);
        check("conv_transpose2d", &[&x, &wt], move |v| v[0].conv_transpose2d(&v[1], o)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn avg_pool_and_reductions(n in 1usize..3, c in 1usize..4, h in 2usize..7, w in 2usize..7, k in 1usize..3, seed in 0u64..1000) {
        prop_assume!(h >= k && w >= k);
        let x = spread(&[n, c, h, w], -1.0, 1.0, seed);
        check("avg_pool2d", &[&x], move |v| v[0].avg_pool2d(k, k)).map_err(TestCaseError::fail)?;
        check("channel_var", &[&x], |v| v[0].channel_var()).map_err(TestCaseError::fail)?;
        check("mean_only_batch_norm", &[&x, &spread(&[c], 0.5, 1.5, seed), &spread(&[c], -1.0, 1.0, seed)],
              |v| v[0].mean_only_batch_norm(&v[1], &v[2]).0).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn broadcasting_arithmetic(a in 1usize..4, b in 1usize..4, c in 1usize..4, mask in 0u8..8, seed in 0u64..1000) {
        // The second operand keeps each axis or broadcasts it, per the mask's bits.
        let x = spread(&[a, b, c], -1.0, 1.0, seed);
        let shape: Vec<usize> = [a, b, c].iter().enumerate().map(|(i, &d)| if mask >> i & 1 == 1 { d } else { 1 }).collect();
        let y = spread(&shape, 0.5, 1.5, seed + 1);
        check("add", &[&x, &y], |v| v[0].add(&v[1])).map_err(TestCaseError::fail)?;
        check("mul", &[&x, &y], |v| v[0].mul(&v[1])).map_err(TestCaseError::fail)?;
        check("div", &[&x, &y], |v| v[0].div(&v[1])).map_err(TestCaseError::fail)?;
        check("sub", &[&y, &x], |v| v[0].sub(&v[1])).map_err(TestCaseError::fail)?;
    }
}
