//! The photo folder: `DIR/train/<class>/*` and optionally `DIR/test/<class>/*`; without
//! `test/`, a seeded share of each class is held out.

use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// File name extensions read as images (case-insensitive); other files are ignored.
pub use msn_runtime::preprocess::IMAGE_EXTENSIONS;

/// One image and its class index.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub path: PathBuf,
    pub class: usize,
}

/// The classes (sorted folder names) and the images of each split.
#[derive(Debug, Clone)]
pub struct Folders {
    pub classes: Vec<String>,
    pub train: Vec<Example>,
    pub test: Vec<Example>,
    /// The test images were held out of `train/` (there is no `test/` folder).
    pub held_out: bool,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The entries of `dir` but hidden ones, sorted.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).map_err(|e| bad(dir, e.to_string()))?;
    let mut out = Vec::new();
    for entry in read {
        let p = entry.map_err(|e| bad(dir, e.to_string()))?.path();
        if !p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The image files under `dir`, in subfolders too, sorted.
fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    msn_runtime::preprocess::images_under(dir).map_err(|(p, e)| bad(&p, e.to_string()))
}

/// The class folders of a split, sorted by name.
fn class_dirs(split: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for p in entries(split)? {
        if p.is_dir() {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| bad(&p, "the class folder's name is not UTF-8"))?
                .to_string();
            out.push((name, p));
        }
    }
    Ok(out)
}

/// Reads `dir`. Without `test/`, `test_fraction` of each class (rounded, none from a class
/// of one image) is held out, chosen by `seed`.
pub fn scan(dir: &Path, test_fraction: f64, seed: u64) -> Result<Folders> {
    if !dir.is_dir() {
        return Err(bad(dir, "not a folder"));
    }
    let train_dir = dir.join("train");
    if !train_dir.is_dir() {
        return Err(bad(
            dir,
            "no train/ folder: expected train/<class>/<images> (and optionally test/<class>/...)",
        ));
    }
    let dirs = class_dirs(&train_dir)?;
    match dirs.len() {
        0 => return Err(bad(&train_dir, "no class folders")),
        1 => {
            return Err(bad(
                &train_dir,
                format!(
                    "only one class ('{}'): a classifier needs at least two",
                    dirs[0].0
                ),
            ))
        }
        _ => {}
    }
    let classes: Vec<String> = dirs.iter().map(|(n, _)| n.clone()).collect();
    let mut train = Vec::new();
    for (class, (_, d)) in dirs.iter().enumerate() {
        let files = images_under(d)?;
        if files.is_empty() {
            return Err(bad(
                d,
                format!(
                    "the class folder has no images ({})",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        train.extend(files.into_iter().map(|path| Example { path, class }));
    }

    let test_dir = dir.join("test");
    if test_dir.is_dir() {
        let mut test = Vec::new();
        for (name, d) in class_dirs(&test_dir)? {
            let class = classes.iter().position(|c| *c == name).ok_or_else(|| {
                bad(
                    &d,
                    format!(
                        "'{name}' is not a class of train/ (classes: {})",
                        classes.join(", ")
                    ),
                )
            })?;
            test.extend(
                images_under(&d)?
                    .into_iter()
                    .map(|path| Example { path, class }),
            );
        }
        if test.is_empty() {
            return Err(bad(&test_dir, "the test folder has no images"));
        }
        return Ok(Folders {
            classes,
            train,
            test,
            held_out: false,
        });
    }

    if !(0.0..1.0).contains(&test_fraction) {
        return Err(bad(
            dir,
            format!("test fraction {test_fraction} is not in [0, 1)"),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut kept, mut test) = (Vec::new(), Vec::new());
    for class in 0..classes.len() {
        let mut mine: Vec<Example> = train.iter().filter(|e| e.class == class).cloned().collect();
        mine.shuffle(&mut rng);
        let n = mine.len();
        let held = if n < 2 {
            0
        } else {
            ((n as f64 * test_fraction).round() as usize).min(n - 1)
        };
        test.extend(mine.drain(..held));
        kept.extend(mine);
    }
    kept.sort_by(|a, b| a.path.cmp(&b.path));
    test.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Folders {
        classes,
        train: kept,
        test,
        held_out: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn classes_are_sorted_folders_and_test_classes_must_exist() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for f in [
            "train/b/1.png",
            "train/a/1.JPG",
            "train/a/sub/2.png",
            "train/a/notes.txt",
        ] {
            touch(&d.join(f));
        }
        touch(&d.join("test/b/9.png"));
        let f = scan(d, 0.2, 1).unwrap();
        assert_eq!(f.classes, ["a", "b"]);
        assert_eq!(f.train.len(), 3);
        assert_eq!(f.train.iter().filter(|e| e.class == 0).count(), 2);
        assert_eq!(
            f.test,
            [Example {
                path: d.join("test/b/9.png"),
                class: 1
            }]
        );
        assert!(!f.held_out);

        touch(&d.join("test/c/1.png"));
        let e = scan(d, 0.2, 1).unwrap_err().to_string();
        assert!(e.contains("'c' is not a class of train/"), "{e}");
    }

    #[test]
    fn a_share_of_each_class_is_held_out_without_a_test_folder() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..10 {
            touch(&t.path().join(format!("train/a/{i}.png")));
        }
        touch(&t.path().join("train/b/only.png"));
        let f = scan(t.path(), 0.2, 7).unwrap();
        assert!(f.held_out);
        assert_eq!(f.test.len(), 2);
        assert!(f.test.iter().all(|e| e.class == 0));
        assert_eq!(f.train.len(), 9);
        // The same seed holds out the same images.
        assert_eq!(scan(t.path(), 0.2, 7).unwrap().test, f.test);
    }

    #[test]
    fn empty_single_and_missing_classes_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let e = scan(t.path(), 0.2, 1).unwrap_err().to_string();
        assert!(e.contains("no train/ folder"), "{e}");
        touch(&t.path().join("train/a/1.png"));
        let e = scan(t.path(), 0.2, 1).unwrap_err().to_string();
        assert!(e.contains("only one class ('a')"), "{e}");
        std::fs::create_dir_all(t.path().join("train/b")).unwrap();
        touch(&t.path().join("train/b/readme.txt"));
        let e = scan(t.path(), 0.2, 1).unwrap_err().to_string();
        assert!(e.contains("train/b") && e.contains("has no images"), "{e}");
    }
}
