//! From an image file to the model's input tensor.
//!
//! The order is the one torchvision and PIL pipelines use, so models trained there see the same
//! numbers: decode (PNG, JPEG, WebP, BMP, TIFF, GIF (its first frame); 8- or 16-bit, palette or not; upright by the
//! EXIF orientation); convert to gray or RGB (an alpha channel is dropped, as PIL's
//! `convert("RGB")` does; 16-bit values are scaled to 0-255); resize with an antialiased bilinear (triangle)
//! filter, either the shorter side to N and a centre crop, or straight to height x width;
//! multiply the raw 0-255 values by `scale`; subtract `mean` and divide by `std` per channel;
//! lay out channels first.

use crate::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageReader};
use msn_onnx::meta::Resize;
use ndarray::{Array3, Array4, Axis};
use std::io::Cursor;
use std::path::Path;

/// The largest width or height accepted, so a hostile file cannot exhaust memory.
pub const MAX_SIDE: u32 = 16_384;
/// The most pixels an image may have (64 M, an 8192 x 8192 photo).
pub const MAX_PIXELS: u64 = 64 << 20;
/// The largest image file read.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// The most memory a decoder may allocate.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// How to turn an image into one `C x H x W` input.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// 1 (gray) or 3 (RGB).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub resize: Resize,
    /// Raw 0-255 pixel values are multiplied by this first.
    pub scale: f32,
    /// Per-channel (or one shared) mean, subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel (or one shared) standard deviation, divided after the mean.
    pub std: Vec<f32>,
}

/// Decodes an image file (PNG, JPEG, WebP, BMP, TIFF or GIF (the first frame of an animation), whatever its extension says) upright:
/// an EXIF orientation (how phones store photos) is applied. Sizes are checked from the
/// header before anything is allocated, and the decoder runs under the image crate's limits.
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let bad = |reason: String| Error::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        cause: e,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(bad(format!(
            "the file has {len} bytes, more than the {MAX_FILE_BYTES} accepted"
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    decode_bytes(&bytes, path)
}

/// [`decode`] for an image held in memory; `path` names it in messages.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    let bad = |reason: String| Error::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let reader = || -> Result<ImageReader<Cursor<&[u8]>>> {
        let mut r = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))?;
        if r.format().is_none() {
            return Err(bad(
                "unknown format (expected PNG, JPEG, WebP, BMP, TIFF or GIF)".into(),
            ));
        }
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        r.limits(limits);
        Ok(r)
    };
    // The header alone tells the size: refuse before allocating anything.
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| bad(e.to_string()))?;
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: MAX_SIDE,
        });
    }
    if width == 0 || height == 0 {
        return Err(bad(format!("the image is {width}x{height}")));
    }
    let mut decoder = reader()?.into_decoder().map_err(|e| bad(e.to_string()))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(img)
}

impl Preprocess {
    /// Checks that mean and std fit the channel count and that std has no zero.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != self.channels {
                return Err(Error::Preprocess(format!(
                    "{name} has {} values but the model takes {} channel(s)",
                    v.len(),
                    self.channels
                )));
            }
        }
        if self.std.contains(&0.0) {
            return Err(Error::Preprocess("std must not be zero".into()));
        }
        if let Resize::ShorterThenCrop(n) = self.resize {
            if (n as usize) < self.height.min(self.width) {
                return Err(Error::Preprocess(format!(
                    "resize to {n} is smaller than the {}x{} crop",
                    self.height, self.width
                )));
            }
        }
        Ok(())
    }

    /// Decodes and preprocesses one image file.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Array3<f32>> {
        Ok(self.apply(&decode(path.as_ref())?))
    }

    /// Preprocesses a decoded image into a `C x H x W` tensor.
    pub fn apply(&self, img: &DynamicImage) -> Array3<f32> {
        let (w, h) = (self.width as u32, self.height as u32);
        // An image already in the model's pixel format is resized as it is, not copied first.
        let converted;
        let img = match (self.channels, img) {
            (1, DynamicImage::ImageLuma8(_)) | (3, DynamicImage::ImageRgb8(_)) => img,
            (1, _) => {
                converted = DynamicImage::ImageLuma8(img.to_luma8());
                &converted
            }
            _ => {
                converted = DynamicImage::ImageRgb8(img.to_rgb8());
                &converted
            }
        };
        let raw = match self.resize {
            Resize::Exact => resize(
                img,
                (0.0, 0.0, img.width() as f64, img.height() as f64),
                w,
                h,
            ),
            Resize::ShorterThenCrop(n) => resize(img, shorter_then_crop(img, n, w, h), w, h),
        };
        let c = self.channels;
        let plane = self.height * self.width;
        assert_eq!(raw.len(), plane * c, "resized image has the requested size");
        // Channels apart (HWC to CHW), each pixel scaled and shifted. Written so the compiler
        // vectorizes it (a de-interleaving load of three channels on NEON): a plain loop over
        // strided reads cost 13 instructions an output value on aarch64.
        let affine: Vec<(f32, f32)> = (0..c)
            .map(|ch| {
                let mean = self.mean[ch.min(self.mean.len() - 1)];
                let std = self.std[ch.min(self.std.len() - 1)];
                (self.scale / std, -mean / std)
            })
            .collect();
        let mut out = vec![0f32; c * plane];
        if let [(ar, br), (ag, bg), (ab, bb)] = affine[..] {
            let (r, rest) = out.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for (((r, g), b), px) in r.iter_mut().zip(g).zip(b).zip(raw.chunks_exact(3)) {
                *r = px[0] as f32 * ar + br;
                *g = px[1] as f32 * ag + bg;
                *b = px[2] as f32 * ab + bb;
            }
        } else {
            for ((dst, &(a, b)), ch) in out.chunks_exact_mut(plane).zip(&affine).zip(0..) {
                for (o, &p) in dst.iter_mut().zip(raw[ch..].iter().step_by(c)) {
                    *o = p as f32 * a + b;
                }
            }
        }
        Array3::from_shape_vec((c, self.height, self.width), out)
            .expect("c x h x w values were written")
    }
}

/// The region of `img` (left, top, width, height, in source pixels, fractional) that resizing
/// the shorter side to `n` and then centre-cropping `w x h` keeps. Resizing that region
/// straight to `w x h` samples the same points as the full resize then the crop, with the
/// filter still reading the pixels around the region, at a fraction of the work.
fn shorter_then_crop(img: &DynamicImage, n: u32, w: u32, h: u32) -> (f64, f64, f64, f64) {
    let (iw, ih) = (img.width() as f64, img.height() as f64);
    let s = n as f64 / iw.min(ih);
    let nw = ((iw * s).round() as u32).max(w);
    let nh = ((ih * s).round() as u32).max(h);
    let (cx, cy) = ((nw - w) / 2, (nh - h) / 2);
    // Each axis scaled by what the full resize would have used for it.
    let (sx, sy) = (nw as f64 / iw, nh as f64 / ih);
    (cx as f64 / sx, cy as f64 / sy, w as f64 / sx, h as f64 / sy)
}

/// Resizes the `crop` region of a gray or RGB 8-bit image to `w x h` with an antialiased
/// bilinear filter (fast_image_resize: SIMD on x86-64 and aarch64, integer arithmetic), and
/// returns the pixels, channels interleaved.
fn resize(img: &DynamicImage, crop: (f64, f64, f64, f64), w: u32, h: u32) -> Vec<u8> {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let pixel = match img {
        DynamicImage::ImageLuma8(_) => PixelType::U8,
        _ => PixelType::U8x3,
    };
    let src = ImageRef::new(img.width(), img.height(), img.as_bytes(), pixel)
        .expect("a gray or RGB image holds width x height pixels");
    let mut dst = Image::new(w, h, pixel);
    let (left, top, width, height) = crop;
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, width, height);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("the crop lies inside the image and both sides are at least 1");
    dst.into_vec()
}

/// Stacks `C x H x W` images into an `N x C x H x W` batch, zero-padded up to `batch` rows.
pub fn stack(images: &[Array3<f32>], batch: usize) -> Array4<f32> {
    let (c, h, w) = images[0].dim();
    let mut out = Array4::<f32>::zeros((batch.max(images.len()), c, h, w));
    for (i, img) in images.iter().enumerate() {
        out.index_axis_mut(Axis(0), i).assign(img);
    }
    out
}

/// The file extensions read as images (compared without case).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"];

/// True for a file name with one of [`IMAGE_EXTENSIONS`].
pub fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The image files under `dir`, in subfolders too, sorted; hidden entries are skipped and
/// symbolic links to folders are not followed (a link cycle would never end). An error names
/// the path that could not be read.
pub fn images_under(
    dir: &Path,
) -> std::result::Result<Vec<std::path::PathBuf>, (std::path::PathBuf, std::io::Error)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let read = std::fs::read_dir(&d).map_err(|e| (d.clone(), e))?;
        for entry in read {
            let p = entry.map_err(|e| (d.clone(), e))?.path();
            if hidden(&p) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).map_err(|e| (p.clone(), e))?;
            if meta.is_dir() {
                stack.push(p);
            } else if is_image_file(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::imageops::FilterType;
    use image::{GrayImage, RgbImage};

    fn gray_spec(resize: Resize) -> Preprocess {
        Preprocess {
            channels: 1,
            height: 2,
            width: 2,
            resize,
            scale: 1.0 / 255.0,
            mean: vec![0.5],
            std: vec![0.5],
        }
    }

    #[test]
    fn rgb_channels_are_split_and_each_scaled_by_its_own_mean_and_std() {
        let (w, h) = (7u32, 5u32);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 37 + y) as u8, (y * 51) as u8, (x * y * 13) as u8])
        });
        let img = DynamicImage::ImageRgb8(img);
        let spec = Preprocess {
            channels: 3,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            height: h as usize,
            width: w as usize,
            ..gray_spec(Resize::Exact)
        };
        let t = spec.apply(&img);
        let raw = resize(&img, (0.0, 0.0, w as f64, h as f64), w, h);
        assert_eq!(t.shape(), [3, h as usize, w as usize]);
        for ((ch, y, x), v) in t.indexed_iter() {
            let p = raw[(y * w as usize + x) * 3 + ch] as f32;
            let want = p * (spec.scale / spec.std[ch]) + -spec.mean[ch] / spec.std[ch];
            assert_eq!(*v, want, "channel {ch} at ({y}, {x})");
        }
    }

    #[test]
    fn scale_mean_std_apply_per_pixel() {
        let img = GrayImage::from_raw(2, 2, vec![0, 255, 51, 102]).unwrap();
        let t = gray_spec(Resize::Exact).apply(&DynamicImage::ImageLuma8(img));
        let expect = [-1.0, 1.0, 0.2 * 2.0 - 1.0, 0.4 * 2.0 - 1.0];
        for (a, b) in t.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn centre_crop_keeps_the_middle_and_channels_come_first() {
        // 4x2 RGB image; shorter side 2 stays 2, so the crop takes columns 1..3.
        let mut img = RgbImage::new(4, 2);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([x as u8 * 10, 100, 200]);
        }
        let spec = Preprocess {
            channels: 3,
            resize: Resize::ShorterThenCrop(2),
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
            ..gray_spec(Resize::Exact)
        };
        let t = spec.apply(&DynamicImage::ImageRgb8(img));
        assert_eq!(t.dim(), (3, 2, 2));
        assert_eq!(t[[0, 0, 0]], 10.0);
        assert_eq!(t[[0, 1, 1]], 20.0);
        assert_eq!(t[[1, 0, 0]], 100.0);
        assert_eq!(t[[2, 1, 0]], 200.0);
    }

    /// The resize of before: image's triangle filter on the whole image, then the crop.
    fn full_resize_then_crop(img: &DynamicImage, n: u32, w: u32, h: u32) -> Vec<u8> {
        let (iw, ih) = (img.width() as f64, img.height() as f64);
        let s = n as f64 / iw.min(ih);
        let nw = ((iw * s).round() as u32).max(w);
        let nh = ((ih * s).round() as u32).max(h);
        img.resize_exact(nw, nh, FilterType::Triangle)
            .crop_imm((nw - w) / 2, (nh - h) / 2, w, h)
            .into_bytes()
    }

    #[test]
    fn resizing_the_cropped_region_matches_image_crates_full_resize_within_a_grey_level() {
        let gradient = DynamicImage::ImageRgb8(RgbImage::from_fn(300, 40, |x, y| {
            image::Rgb([(x * 255 / 299) as u8, (y * 6) as u8, ((x * y) % 251) as u8])
        }));
        let noise = DynamicImage::ImageRgb8(RgbImage::from_fn(97, 131, |x, y| {
            let v = (x * 7919 + y * 104729) ^ (x * y * 31);
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 3) as u8])
        }));
        for (img, n, w, h, most) in [(&gradient, 80, 60, 60, 1), (&noise, 64, 48, 48, 2)] {
            let want = full_resize_then_crop(img, n, w, h);
            let got = resize(img, shorter_then_crop(img, n, w, h), w, h);
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .max()
                .unwrap();
            assert!(worst <= most, "max difference {worst} grey levels");
        }
    }

    #[test]
    fn photos_resize_within_a_grey_level_of_image_crates_filter() {
        let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/photos");
        if !photos.exists() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"skipped: ../shared/data/photos is absent\n",
            );
            return;
        }
        for name in ["chelsea.png", "coffee.png"] {
            let img = DynamicImage::ImageRgb8(decode(&photos.join(name)).unwrap().to_rgb8());
            for (n, side) in [(256, 224), (32, 28)] {
                let want = full_resize_then_crop(&img, n, side, side);
                let got = resize(&img, shorter_then_crop(&img, n, side, side), side, side);
                let diffs: Vec<i32> = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (*a as i32 - *b as i32).abs())
                    .collect();
                let worst = diffs.iter().max().unwrap();
                assert!(
                    *worst <= 1,
                    "{name} at {n}/{side}: max difference {worst} grey levels"
                );
            }
        }
    }

    #[test]
    fn mean_of_the_wrong_length_is_rejected() {
        let mut spec = gray_spec(Resize::Exact);
        spec.mean = vec![0.1, 0.2, 0.3];
        assert!(spec
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mean has 3 values"));
    }
}
