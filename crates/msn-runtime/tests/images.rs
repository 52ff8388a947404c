//! Images as users have them: EXIF orientation, WebP, BMP, TIFF, 16-bit and palette PNG, and
//! alpha, each against the upright 8-bit PNG it was made from
//! (`tests/python/make_image_fixtures.py`).

use msn_onnx::meta::Resize;
use msn_runtime::preprocess::{decode, Preprocess};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gray28() -> Preprocess {
    Preprocess {
        channels: 1,
        height: 28,
        width: 28,
        resize: Resize::Exact,
        scale: 1.0 / 255.0,
        mean: vec![0.0],
        std: vec![1.0],
    }
}

fn max_diff(a: &ndarray::Array3<f32>, b: &ndarray::Array3<f32>) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_format_and_orientation_gives_the_upright_pixels() {
    let p = gray28();
    let upright = p
        .load(root().join("models/images/0000-ankle-boot.png"))
        .unwrap();
    let fixtures = root().join("tests/fixtures/images");
    for (file, tolerance) in [
        ("boot-exif6.png", 0.0),
        ("boot-exif8.png", 0.0),
        ("boot-exif3.png", 0.0),
        ("boot.webp", 0.0),
        ("boot.bmp", 0.0),
        ("boot.tiff", 0.0),
        ("boot-16bit.png", 1.0 / 255.0),
        ("boot-palette.png", 0.0),
        ("boot-rgba.png", 0.0),
        // JPEG at quality 100 is still lossy.
        ("boot-exif6.jpg", 0.1),
    ] {
        let img = decode(&fixtures.join(file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((img.width(), img.height()), (28, 28), "{file}");
        let got = p.apply(&img);
        let d = max_diff(&upright, &got);
        assert!(d <= tolerance + 1e-6, "{file}: max difference {d}");
    }
}

#[test]
fn a_rotated_photo_gets_the_same_top5_as_the_upright_one() {
    let clf = msn_runtime::Classifier::load(
        root().join("models/fashion-cnn3-msn.folded.onnx"),
        &Default::default(),
    )
    .unwrap();
    let top5 = |path: PathBuf| {
        let x = clf.preprocess().load(&path).unwrap();
        let probs = msn_runtime::softmax(&clf.run_one(&x).unwrap());
        msn_runtime::topk(&probs, 5)
            .into_iter()
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let upright = top5(root().join("models/images/0000-ankle-boot.png"));
    for file in ["boot-exif6.png", "boot-exif8.png", "boot-exif6.jpg"] {
        assert_eq!(
            top5(root().join("tests/fixtures/images").join(file)),
            upright,
            "{file}"
        );
    }
}

#[test]
fn an_animated_gif_gives_its_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, RgbaImage};
    let p = gray28();
    let boot = root().join("models/images/0000-ankle-boot.png");
    let upright = p.load(&boot).unwrap();
    let first = decode(&boot).unwrap().to_rgba8();
    let mut second: RgbaImage = first.clone();
    for px in second.pixels_mut() {
        for c in 0..3 {
            px.0[c] = 255 - px.0[c];
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boot.gif");
    {
        let mut enc = GifEncoder::new(std::fs::File::create(&path).unwrap());
        for f in [first, second] {
            enc.encode_frame(Frame::from_parts(
                f,
                0,
                0,
                Delay::from_numer_denom_ms(100, 1),
            ))
            .unwrap();
        }
    }
    let got = p.apply(&decode(&path).unwrap());
    // GIF quantises colours to a palette: near the first frame, far from the second.
    let d = max_diff(&upright, &got);
    assert!(d <= 8.0 / 255.0, "first frame: max difference {d}");
    let inverted = upright.mapv(|v| 1.0 - v);
    assert!(max_diff(&inverted, &got) > 0.5);
    // Folders list .gif files as images.
    assert!(msn_runtime::preprocess::is_image_file(&path));
}
