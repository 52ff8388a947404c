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
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader};
use msn_onnx::meta::Resize;
use ndarray::{Array3, Array4, ArrayView3, Axis};
use std::io::Cursor;
use std::path::Path;

/// The largest width or height accepted, so a hostile file cannot exhaust memory.
pub const MAX_SIDE: u32 = 16_384;
/// The most pixels an image may have (64 M, an 8192 x 8192 photo).
pub const MAX_PIXELS: u64 = 64 << 20;
/// The largest image file read.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Above this many pixels, a shorter-side resize works on the cropped region only.
pub const MAX_RESIZED_PIXELS: u64 = 4 << 20;
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
        let img = if self.channels == 1 {
            DynamicImage::ImageLuma8(img.to_luma8())
        } else {
            DynamicImage::ImageRgb8(img.to_rgb8())
        };
        let resized = match self.resize {
            Resize::Exact => img.resize_exact(w, h, FilterType::Triangle),
            Resize::ShorterThenCrop(n) => shorter_then_crop(&img, n, w, h, MAX_RESIZED_PIXELS),
        };
        let raw = resized.into_bytes();
        let c = self.channels;
        let hwc = ArrayView3::from_shape((self.height, self.width, c), &raw)
            .expect("resized image has the requested size");
        let mut out = Array3::<f32>::zeros((c, self.height, self.width));
        for ch in 0..c {
            let mean = self.mean[ch.min(self.mean.len() - 1)];
            let std = self.std[ch.min(self.std.len() - 1)];
            let (a, b) = (self.scale / std, -mean / std);
            out.index_axis_mut(Axis(0), ch)
                .zip_mut_with(&hwc.index_axis(Axis(2), ch), |o, &p| {
                    *o = p as f32 * a + b;
                });
        }
        out
    }
}

/// Resizes the shorter side to `n`, then centre-crops `w x h`. When the full resize would
/// exceed `budget` pixels (a long strip), only the part of the source that the crop keeps is
/// resized (with a margin for the filter's support), so memory follows the output size.
fn shorter_then_crop(img: &DynamicImage, n: u32, w: u32, h: u32, budget: u64) -> DynamicImage {
    let (iw, ih) = (img.width() as f64, img.height() as f64);
    let s = n as f64 / iw.min(ih);
    let nw = ((iw * s).round() as u32).max(w);
    let nh = ((ih * s).round() as u32).max(h);
    let (cx, cy) = ((nw - w) / 2, (nh - h) / 2);
    if u64::from(nw) * u64::from(nh) <= budget {
        return img
            .resize_exact(nw, nh, FilterType::Triangle)
            .crop_imm(cx, cy, w, h);
    }
    let margin = (1.0 / s).ceil().max(1.0) * 2.0;
    let span = |c: u32, out: u32, size: f64| {
        let lo = (c as f64 / s - margin).floor().clamp(0.0, size - 1.0);
        let hi = ((c + out) as f64 / s + margin).ceil().clamp(lo + 1.0, size);
        (lo as u32, hi as u32)
    };
    let (x0, x1) = span(cx, w, iw);
    let (y0, y1) = span(cy, h, ih);
    let ox = (cx as f64 - x0 as f64 * s).round().max(0.0) as u32;
    let oy = (cy as f64 - y0 as f64 * s).round().max(0.0) as u32;
    let rw = (((x1 - x0) as f64 * s).round() as u32).max(ox + w);
    let rh = (((y1 - y0) as f64 * s).round() as u32).max(oy + h);
    img.crop_imm(x0, y0, x1 - x0, y1 - y0)
        .resize_exact(rw, rh, FilterType::Triangle)
        .crop_imm(ox, oy, w, h)
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

    #[test]
    fn resizing_only_the_cropped_region_matches_the_full_resize() {
        // A smooth 300x40 gradient, shorter side to 80 then a 60x60 crop: with a budget
        // below the full resize (600x80), only the kept region is resized.
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(300, 40, |x, y| {
            image::Rgb([(x * 255 / 299) as u8, (y * 6) as u8, 100])
        }));
        let full = shorter_then_crop(&img, 80, 60, 60, u64::MAX).into_bytes();
        let part = shorter_then_crop(&img, 80, 60, 60, 1000).into_bytes();
        let worst = full
            .iter()
            .zip(&part)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 2, "max difference {worst} grey levels");
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
