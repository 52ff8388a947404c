//! Data sets: MNIST and Fashion-MNIST (IDX, gzipped or not), CIFAR-10 (binary batches, any
//! subset present) and image folders (one sub-folder per class). Images stay `u8` in memory;
//! batches are normalised (and, for CIFAR, augmented) when they are made.

use crate::{Error, Result};
use flate2::read::GzDecoder;
use ndarray::{Array4, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Images `[N, C, H, W]` as bytes, with their labels and class names.
pub struct Dataset {
    pub images: Array4<u8>,
    pub labels: Vec<u8>,
    pub classes: Vec<String>,
    /// Per-channel mean and std of the pixel values scaled to `[0, 1]`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Which split of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
pub const CIFAR_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The data sets `msn train --dataset` accepts.
pub const DATASETS: [&str; 4] = ["mnist", "fashion-mnist", "cifar10", "folder"];

/// Loads a data set by name from `dir`.
pub fn load(name: &str, dir: &Path, split: Split) -> Result<Dataset> {
    match name {
        "mnist" => idx_dataset(
            dir,
            split,
            (0..10).map(|d| d.to_string()).collect(),
            "https://yann.lecun.com/exdb/mnist/ (or any MNIST mirror)",
        ),
        "fashion-mnist" => idx_dataset(
            dir,
            split,
            FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
            "https://github.com/zalandoresearch/fashion-mnist",
        ),
        "cifar10" => cifar10(dir, split),
        "folder" => image_folder(&dir.join(if split == Split::Train {
            "train"
        } else {
            "test"
        })),
        other => Err(Error::Data(format!(
            "unknown data set '{other}' (expected one of {})",
            DATASETS.join(", ")
        ))),
    }
}

/// The most bytes a gzipped data file may unpack to (a data set of this toolkit is far smaller).
const MAX_DECOMPRESSED: u64 = 2 << 30;

fn read_maybe_gz(dir: &Path, stem: &str, published: &str, expected: &[&str]) -> Result<Vec<u8>> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let path = dir.join(&name);
        if path.exists() {
            let raw = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            if name.ends_with(".gz") {
                let mut out = Vec::new();
                // Decompress no more than the limit, whatever the file claims.
                GzDecoder::new(&raw[..])
                    .take(MAX_DECOMPRESSED + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| {
                        Error::Data(format!("{}: not a valid gzip file: {e}", path.display()))
                    })?;
                if out.len() as u64 > MAX_DECOMPRESSED {
                    return Err(Error::Data(format!(
                        "{}: unpacks to more than {MAX_DECOMPRESSED} bytes",
                        path.display()
                    )));
                }
                return Ok(out);
            }
            return Ok(raw);
        }
    }
    Err(Error::Data(format!(
        "{}: missing {stem}[.gz]; the data set needs {} (published at {published})",
        dir.display(),
        expected.join(", ")
    )))
}

fn be_u32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize
}

fn idx_dataset(dir: &Path, split: Split, classes: Vec<String>, published: &str) -> Result<Dataset> {
    let prefix = if split == Split::Train {
        "train"
    } else {
        "t10k"
    };
    let (img_name, lbl_name) = (
        format!("{prefix}-images-idx3-ubyte"),
        format!("{prefix}-labels-idx1-ubyte"),
    );
    let expected = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    let images = read_maybe_gz(dir, &img_name, published, &expected)?;
    let labels = read_maybe_gz(dir, &lbl_name, published, &expected)?;
    parse_idx(
        &images,
        &labels,
        classes,
        &dir.join(&img_name),
        &dir.join(&lbl_name),
    )
}

/// An IDX image file and its IDX label file (as MNIST ships them) held in memory; the paths
/// name them in messages. Header sizes are checked against the data before anything is copied.
pub fn parse_idx(
    images: &[u8],
    labels: &[u8],
    classes: Vec<String>,
    img_path: &Path,
    lbl_path: &Path,
) -> Result<Dataset> {
    let bad = |what: &str| Error::Data(format!("{}: {what}", img_path.display()));
    if images.len() < 16 || be_u32(images, 0) != 0x0803 {
        return Err(bad("not an IDX image file (magic 0x00000803 expected)"));
    }
    if labels.len() < 8 || be_u32(labels, 0) != 0x0801 {
        return Err(Error::Data(format!(
            "{}: not an IDX label file",
            lbl_path.display()
        )));
    }
    let (n, h, w) = (be_u32(images, 4), be_u32(images, 8), be_u32(images, 12));
    let pixels = n
        .checked_mul(h)
        .and_then(|v| v.checked_mul(w))
        .and_then(|v| v.checked_add(16));
    if pixels != Some(images.len()) || labels.len() != 8 + n || be_u32(labels, 4) != n {
        return Err(bad(
            "sizes in the headers do not match the files (truncated?)",
        ));
    }
    let images = Array4::from_shape_vec((n, 1, h, w), images[16..].to_vec()).expect("size checked");
    finish(images, labels[8..].to_vec(), classes)
}

fn cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .filter(|p| p.exists())
            .collect(),
        Split::Test => vec![dir.join("test_batch.bin")]
            .into_iter()
            .filter(|p| p.exists())
            .collect(),
    };
    if files.is_empty() {
        return Err(Error::Data(format!(
            "{}: no CIFAR-10 {} files; expected data_batch_1.bin .. data_batch_5.bin (any subset) and test_batch.bin from cifar-10-binary.tar.gz (published at https://www.cs.toronto.edu/~kriz/cifar.html)",
            dir.display(),
            if split == Split::Train { "training" } else { "test" }
        )));
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        let raw = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        if raw.len() % 3073 != 0 {
            return Err(Error::Data(format!(
                "{}: size {} is not a multiple of 3073-byte records",
                f.display(),
                raw.len()
            )));
        }
        for rec in raw.chunks_exact(3073) {
            labels.push(rec[0]);
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    let n = labels.len();
    let images = Array4::from_shape_vec((n, 3, 32, 32), pixels).expect("records are 3x32x32");
    let classes = match std::fs::read_to_string(dir.join("batches.meta.txt")) {
        Ok(t) => t
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect(),
        Err(_) => CIFAR_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    finish(images, labels, classes)
}

/// One sub-folder per class (sorted by name); every PNG or JPEG inside, resized to the size of
/// the first image; colour if any image is colour.
fn image_folder(dir: &Path) -> Result<Dataset> {
    let read_dir = |d: &Path| std::fs::read_dir(d).map_err(|e| Error::io(d, e));
    let mut classes: Vec<PathBuf> = read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.len() > 256 {
        return Err(Error::Data(format!(
            "{}: {} class sub-folders; at most 256 are supported",
            dir.display(),
            classes.len()
        )));
    }
    if classes.is_empty() {
        return Err(Error::Data(format!(
            "{}: no class sub-folders (expected {}/<class>/<image>.png)",
            dir.display(),
            dir.display()
        )));
    }
    let mut imgs = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = read_dir(class)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files.into_iter().filter(|f| {
            f.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        }) {
            let img = image::open(&f).map_err(|e| Error::Data(format!("{}: {e}", f.display())))?;
            imgs.push(img);
            labels.push(label as u8);
        }
    }
    let Some(first) = imgs.first() else {
        return Err(Error::Data(format!(
            "{}: the class folders hold no PNG or JPEG files",
            dir.display()
        )));
    };
    let (w, h) = (first.width(), first.height());
    let color = imgs.iter().any(|i| i.color().has_color());
    let c = if color { 3 } else { 1 };
    let mut data = Vec::with_capacity(imgs.len() * c * (w * h) as usize);
    for img in &imgs {
        let img = img.resize_exact(w, h, image::imageops::FilterType::Triangle);
        let hwc = if color {
            img.to_rgb8().into_raw()
        } else {
            img.to_luma8().into_raw()
        };
        for ch in 0..c {
            data.extend(hwc.iter().skip(ch).step_by(c));
        }
    }
    let n = labels.len();
    let images = Array4::from_shape_vec((n, c, h as usize, w as usize), data).expect("sizes match");
    let names = classes
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    finish(images, labels, names)
}

fn finish(images: Array4<u8>, labels: Vec<u8>, classes: Vec<String>) -> Result<Dataset> {
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
        return Err(Error::Data(format!(
            "label {bad} out of range for {} classes",
            classes.len()
        )));
    }
    let c = images.shape()[1];
    let mut mean = vec![0.0; c];
    let mut std = vec![0.0; c];
    for ch in 0..c {
        let plane = images.index_axis(Axis(1), ch);
        let n = plane.len() as f64;
        let s: f64 = plane.iter().map(|&v| v as f64 / 255.0).sum();
        let m = s / n;
        let v: f64 = plane
            .iter()
            .map(|&v| (v as f64 / 255.0 - m).powi(2))
            .sum::<f64>()
            / n;
        mean[ch] = m as f32;
        std[ch] = v.sqrt().max(1e-6) as f32;
    }
    Ok(Dataset {
        images,
        labels,
        classes,
        mean,
        std,
    })
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Channels, height, width.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.images.shape();
        [s[1], s[2], s[3]]
    }

    /// Keeps the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.images = self.images.slice(ndarray::s![..n, .., .., ..]).to_owned();
            self.labels.truncate(n);
        }
    }
}

/// How batches are made from a data set.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub batch: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Random crop with this much zero padding, and a random horizontal flip.
    pub augment: Option<usize>,
}

/// The sample order of one epoch: a shuffle drawn from `(seed, epoch)` alone, so a resumed run
/// sees the same order as an uninterrupted one.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    order
}

/// Normalises (and maybe augments) the samples at `indices` into an `[n, C, H, W]` batch.
pub fn make_batch(
    data: &Dataset,
    indices: &[usize],
    spec: &BatchSpec,
    rng: &mut ChaCha8Rng,
) -> (Array4<f32>, Vec<usize>) {
    let [c, h, w] = data.shape();
    let mut x = Array4::<f32>::zeros((indices.len(), c, h, w));
    for (i, &idx) in indices.iter().enumerate() {
        let src = data.images.index_axis(Axis(0), idx);
        let (dy, dx, flip) = match spec.augment {
            Some(pad) => (
                rng.random_range(0..=2 * pad) as isize - pad as isize,
                rng.random_range(0..=2 * pad) as isize - pad as isize,
                rng.random_bool(0.5),
            ),
            None => (0, 0, false),
        };
        for ch in 0..c {
            let (a, b) = (1.0 / (255.0 * spec.std[ch]), -spec.mean[ch] / spec.std[ch]);
            for y in 0..h {
                let sy = y as isize + dy;
                for xx in 0..w {
                    let sx0 = if flip { w - 1 - xx } else { xx } as isize + dx;
                    let v = if sy >= 0 && sy < h as isize && sx0 >= 0 && sx0 < w as isize {
                        src[[ch, sy as usize, sx0 as usize]] as f32 * a + b
                    } else {
                        b // zero padding in pixel space
                    };
                    x[[i, ch, y, xx]] = v;
                }
            }
        }
    }
    (
        x,
        indices.iter().map(|&i| data.labels[i] as usize).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_idx(dir: &Path, prefix: &str, n: usize) {
        let mut img = vec![0, 0, 8, 3];
        for v in [n as u32, 2, 3] {
            img.extend(v.to_be_bytes());
        }
        img.extend((0..n * 6).map(|i| (i * 10) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
        let mut lbl = vec![0, 0, 8, 1];
        lbl.extend((n as u32).to_be_bytes());
        lbl.extend((0..n).map(|i| (i % 10) as u8));
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lbl).unwrap();
    }

    #[test]
    fn reads_uncompressed_idx_and_normalises_batches() {
        let dir = tempfile::tempdir().unwrap();
        write_idx(dir.path(), "t10k", 3);
        let d = load("mnist", dir.path(), Split::Test).unwrap();
        assert_eq!(d.shape(), [1, 2, 3]);
        assert_eq!(d.labels, vec![0, 1, 2]);
        let spec = BatchSpec {
            batch: 2,
            mean: vec![0.0],
            std: vec![1.0],
            augment: None,
        };
        let (x, y) = make_batch(&d, &[1, 0], &spec, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(y, vec![1, 0]);
        assert!((x[[0, 0, 0, 0]] - 60.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn missing_files_name_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let err = load("fashion-mnist", dir.path(), Split::Train)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("train-images-idx3-ubyte") && err.contains("zalandoresearch"),
            "{err}"
        );
        let err = load("cifar10", dir.path(), Split::Train)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("data_batch_1.bin"), "{err}");
    }

    #[test]
    fn epoch_orders_are_permutations_that_depend_on_seed_and_epoch() {
        let a = epoch_order(100, 1, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 1, 0));
        assert_ne!(a, epoch_order(100, 1, 1));
        assert_ne!(a, epoch_order(100, 2, 0));
    }
}
