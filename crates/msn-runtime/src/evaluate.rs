//! Accuracy on a folder laid out one subfolder per class (`DIR/<class>/*.png`, the layout of
//! torchvision's `ImageFolder`, `msn teach` and `msn quantize --calibration`): which images
//! have which true class, and the confusion matrix of a classifier's answers.

use crate::preprocess::images_under;
use std::path::{Path, PathBuf};

/// The images of a class-folder layout, each with its true class.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub images: Vec<(PathBuf, usize)>,
    /// Images directly in the folder, outside any class folder: not counted.
    pub loose: usize,
}

/// The class a folder name stands for: the label itself, the label in another case, or the
/// class index (for models without labels, and labels no folder can be named, like
/// `T-shirt/top`).
fn class_of(name: &str, labels: &[String], classes: usize) -> Option<usize> {
    labels
        .iter()
        .position(|l| l == name)
        .or_else(|| labels.iter().position(|l| l.eq_ignore_ascii_case(name)))
        .or_else(|| name.parse().ok().filter(|&i: &usize| i < classes))
}

/// Reads `dir` as one subfolder per class, each named for one of the model's `labels` or by
/// class index (`0` .. `classes - 1`); images in sub-subfolders count for their class folder. The error is one line saying which folder names are no class.
pub fn class_folders(dir: &Path, labels: &[String], classes: usize) -> Result<Labelled, String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    let (mut images, mut loose, mut unknown) = (Vec::new(), 0usize, Vec::new());
    let mut folders = 0;
    for p in entries {
        let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
        if !is_dir {
            loose += usize::from(crate::preprocess::is_image_file(&p));
            continue;
        }
        folders += 1;
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match class_of(name, labels, classes) {
            Some(class) => {
                let found = images_under(&p).map_err(|(p, e)| format!("{}: {e}", p.display()))?;
                images.extend(found.into_iter().map(|f| (f, class)));
            }
            None => unknown.push(name.to_string()),
        }
    }
    let indices = format!("class indices 0-{}", classes.saturating_sub(1));
    let known = if labels.is_empty() {
        indices
    } else {
        let shown: Vec<&str> = labels.iter().take(12).map(String::as_str).collect();
        let more = if labels.len() > 12 { ", ..." } else { "" };
        format!("labels: {}{more}; or {indices}", shown.join(", "))
    };
    if folders == 0 {
        return Err(format!(
            "{}: no class folders to evaluate on (expected one subfolder per class, named by the \
             model's {known})",
            dir.display()
        ));
    }
    if !unknown.is_empty() {
        unknown.truncate(5);
        return Err(format!(
            "{}: subfolder(s) {} name no class of the model ({known})",
            dir.display(),
            unknown
                .iter()
                .map(|u| format!("'{u}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if images.is_empty() {
        return Err(format!(
            "{}: the class folders hold no images",
            dir.display()
        ));
    }
    Ok(Labelled { images, loose })
}

/// Counts of (true class, predicted class) pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    classes: usize,
    counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Records one image of class `truth` classified as `predicted`.
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth * self.classes + predicted] += 1;
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Images recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Images classified as their true class.
    pub fn correct(&self) -> u64 {
        (0..self.classes).map(|c| self.count(c, c)).sum()
    }

    /// Images of class `truth` classified as `predicted`.
    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }

    /// Share of the images classified correctly (0 when there are none).
    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.total().max(1) as f64
    }

    /// Images of class `c`.
    pub fn support(&self, c: usize) -> u64 {
        (0..self.classes).map(|p| self.count(c, p)).sum()
    }

    /// Share of class `c`'s images classified as `c`; `None` when the class has no image.
    pub fn recall(&self, c: usize) -> Option<f64> {
        let n = self.support(c);
        (n > 0).then(|| self.count(c, c) as f64 / n as f64)
    }

    /// Rows: true class; columns: predicted class.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks(self.classes)
            .map(<[u64]>::to_vec)
            .collect()
    }

    /// Accuracy, per-class recall and the matrix as text, classes named by `label`. Classes
    /// that neither occur nor are predicted are left out of the matrix when there are more
    /// than 20 classes (an ImageNet model on a few folders).
    pub fn render(&self, label: impl Fn(usize) -> String) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "accuracy {:.4} ({} of {} images)",
            self.accuracy(),
            self.correct(),
            self.total()
        );
        let shown: Vec<usize> = (0..self.classes)
            .filter(|&c| {
                self.classes <= 20
                    || self.support(c) > 0
                    || (0..self.classes).any(|t| self.count(t, c) > 0)
            })
            .collect();
        let names: Vec<String> = shown.iter().map(|&c| label(c)).collect();
        let width = names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(s, "\n{:>5}  {:<width$}  recall  images", "class", "label");
        for (&c, name) in shown.iter().zip(&names) {
            if let Some(r) = self.recall(c) {
                let _ = writeln!(s, "{c:>5}  {name:<width$}  {r:6.3}  {:>6}", self.support(c));
            }
        }
        let cell = self
            .counts
            .iter()
            .max()
            .map_or(1, |m| m.to_string().len())
            .max(shown.iter().map(|c| c.to_string().len()).max().unwrap_or(1))
            + 1;
        let _ = writeln!(
            s,
            "\nconfusion matrix (rows: true class, columns: predicted class)"
        );
        let _ = write!(s, "{:>5}  {:<width$} ", "", "");
        for &c in &shown {
            let _ = write!(s, "{c:>cell$}");
        }
        s.push('\n');
        for (&t, name) in shown.iter().zip(&names) {
            if self.classes > 20 && self.support(t) == 0 {
                continue;
            }
            let _ = write!(s, "{t:>5}  {name:<width$} ");
            for &p in &shown {
                let _ = write!(s, "{:>cell$}", self.count(t, p));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_recall_and_the_matrix_count_each_answer_once() {
        let mut m = Confusion::new(3);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (2, 0), (2, 2)] {
            m.add(t, p);
        }
        assert_eq!(m.total(), 6);
        assert_eq!(m.correct(), 4);
        assert!((m.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.recall(0), Some(2.0 / 3.0));
        assert_eq!(m.recall(1), Some(1.0));
        assert_eq!(m.rows(), vec![vec![2, 1, 0], vec![0, 1, 0], vec![1, 0, 1]]);
        let text = m.render(|c| ["cat", "dog", "bird"][c].to_string());
        assert!(
            text.starts_with("accuracy 0.6667 (4 of 6 images)"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("bird") && l.ends_with('1'))
            .unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["2", "bird", "1", "0", "1"]
        );
        assert_eq!(Confusion::new(2).recall(0), None);
    }

    #[test]
    fn class_folders_are_matched_to_labels_and_strangers_named() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |p: &str| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        for f in [
            "Cat/1.png",
            "cat/2.jpg",
            "dog/sub/3.png",
            "dog/notes.txt",
            "loose.png",
        ] {
            touch(f);
        }
        let labels = vec!["cat".to_string(), "dog".to_string()];
        let l = class_folders(dir.path(), &labels, 2).unwrap();
        let classes: Vec<usize> = l.images.iter().map(|(_, c)| *c).collect();
        assert_eq!(classes, [0, 0, 1]);
        assert_eq!(l.loose, 1);
        // Without labels, folders named by index.
        let err = class_folders(dir.path(), &[], 2).unwrap_err();
        assert!(
            err.contains("'Cat'") && err.contains("class indices 0-1"),
            "{err}"
        );
        touch("1/5.png");
        let l = class_folders(dir.path(), &labels, 2).unwrap();
        assert_eq!(l.images[0], (dir.path().join("1/5.png"), 1));
        touch("bird/4.png");
        touch("2/6.png");
        let err = class_folders(dir.path(), &labels, 2).unwrap_err();
        assert!(
            err.contains("'2', 'bird'") && err.contains("labels: cat, dog; or class indices 0-1"),
            "{err}"
        );
    }
}
