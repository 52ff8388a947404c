//! The metadata keys that make an ONNX file a self-describing image classifier.
//!
//! ONNX `metadata_props` is a string-to-string map. Models exported by `msn-export` carry these
//! keys; for any other model, the runtime takes the same settings from command-line flags.
//!
//! | key | example | meaning |
//! |---|---|---|
//! | `msn.input_layout` | `NCHW` | tensor layout of the image input (only NCHW is produced or read) |
//! | `msn.input_shape` | `1,28,28` | channels, height, width of one image |
//! | `msn.color` | `gray` or `rgb` | colour mode the image is converted to before anything else |
//! | `msn.resize` | `exact` or `shorter:256` | plain resize to height x width; or resize the shorter side to 256, then centre-crop |
//! | `msn.scale` | `0.00392157` | raw 0-255 pixel values are multiplied by this first |
//! | `msn.mean` | `0.2860` or `0.485,0.456,0.406` | subtracted per channel after scaling |
//! | `msn.std` | `0.3530` | divided per channel after subtracting the mean |
//! | `msn.labels` | `T-shirt/top\nTrouser\n...` | class names, one per line, line i = class i |
//!
//! Training provenance keys (written by the exporter, read by people): `msn.architecture`,
//! `msn.norm`, `msn.dataset`, `msn.test_accuracy`; `msn.folded` is added by `msn-fold`.

use crate::proto::StringStringEntryProto;
use crate::{Error, ModelProto, Result};

pub const INPUT_LAYOUT: &str = "msn.input_layout";
pub const INPUT_SHAPE: &str = "msn.input_shape";
pub const COLOR: &str = "msn.color";
pub const RESIZE: &str = "msn.resize";
pub const SCALE: &str = "msn.scale";
pub const MEAN: &str = "msn.mean";
pub const STD: &str = "msn.std";
pub const LABELS: &str = "msn.labels";
pub const ARCHITECTURE: &str = "msn.architecture";
pub const NORM: &str = "msn.norm";
pub const DATASET: &str = "msn.dataset";
pub const TEST_ACCURACY: &str = "msn.test_accuracy";
pub const FOLDED: &str = "msn.folded";

/// How an image is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Resize to exactly height x width, ignoring the aspect ratio.
    Exact,
    /// Resize so the shorter side is this long (keeping the aspect ratio), then centre-crop.
    ShorterThenCrop(u32),
}

impl std::fmt::Display for Resize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resize::Exact => write!(f, "exact"),
            Resize::ShorterThenCrop(n) => write!(f, "shorter:{n}"),
        }
    }
}

impl std::str::FromStr for Resize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "exact" {
            return Ok(Resize::Exact);
        }
        s.strip_prefix("shorter:")
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .map(Resize::ShorterThenCrop)
            .ok_or_else(|| format!("expected 'exact' or 'shorter:N', got '{s}'"))
    }
}

/// Colour mode of the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Gray,
    Rgb,
}

/// The image-model settings found in (or destined for) a model's metadata. Every field is
/// optional: a model from another tool may carry none of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageMeta {
    /// Channels, height, width.
    pub input_shape: Option<[usize; 3]>,
    pub color: Option<Color>,
    pub resize: Option<Resize>,
    pub scale: Option<f32>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub labels: Option<Vec<String>>,
}

fn get<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    crate::graph::metadata(model, key)
}

fn bad(key: &str, reason: impl Into<String>) -> Error {
    Error::BadMetadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parses a comma-separated list of floats (`"0.5,0.5,0.5"`).
pub fn parse_floats(s: &str) -> std::result::Result<Vec<f32>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|_| format!("'{}' is not a number", p.trim()))
        })
        .collect()
}

fn floats_to_string(v: &[f32]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ImageMeta {
    /// Reads the `msn.*` keys from a model. Absent keys stay `None`; malformed ones are errors.
    pub fn from_model(model: &ModelProto) -> Result<Self> {
        let mut m = ImageMeta::default();
        if let Some(layout) = get(model, INPUT_LAYOUT) {
            if layout != "NCHW" {
                return Err(bad(
                    INPUT_LAYOUT,
                    format!("only NCHW is supported, got '{layout}'"),
                ));
            }
        }
        if let Some(s) = get(model, INPUT_SHAPE) {
            let dims: Vec<usize> = s
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad(INPUT_SHAPE, format!("expected C,H,W, got '{s}'")))?;
            let shape: [usize; 3] = dims
                .try_into()
                .map_err(|_| bad(INPUT_SHAPE, format!("expected C,H,W, got '{s}'")))?;
            let [c, h, w] = shape;
            if !(1..=4).contains(&c) || !(1..=16_384).contains(&h) || !(1..=16_384).contains(&w) {
                return Err(bad(
                    INPUT_SHAPE,
                    format!("'{s}' is out of range (1 to 4 channels, 1 to 16384 pixels a side)"),
                ));
            }
            m.input_shape = Some(shape);
        }
        m.color = match get(model, COLOR) {
            None => None,
            Some("gray") => Some(Color::Gray),
            Some("rgb") => Some(Color::Rgb),
            Some(other) => return Err(bad(COLOR, format!("expected gray or rgb, got '{other}'"))),
        };
        if let Some(s) = get(model, RESIZE) {
            m.resize = Some(s.parse().map_err(|e: String| bad(RESIZE, e))?);
        }
        if let Some(s) = get(model, SCALE) {
            m.scale = Some(
                s.parse()
                    .map_err(|_| bad(SCALE, format!("'{s}' is not a number")))?,
            );
        }
        if let Some(s) = get(model, MEAN) {
            m.mean = Some(parse_floats(s).map_err(|e| bad(MEAN, e))?);
        }
        if let Some(s) = get(model, STD) {
            m.std = Some(parse_floats(s).map_err(|e| bad(STD, e))?);
        }
        if let Some(s) = get(model, LABELS) {
            m.labels = Some(s.lines().map(str::to_string).collect());
        }
        Ok(m)
    }

    /// The key-value pairs for the fields that are set, in a stable order.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some([c, h, w]) = self.input_shape {
            out.push((INPUT_LAYOUT, "NCHW".to_string()));
            out.push((INPUT_SHAPE, format!("{c},{h},{w}")));
        }
        if let Some(c) = self.color {
            out.push((
                COLOR,
                if c == Color::Gray { "gray" } else { "rgb" }.to_string(),
            ));
        }
        if let Some(r) = self.resize {
            out.push((RESIZE, r.to_string()));
        }
        if let Some(s) = self.scale {
            out.push((SCALE, s.to_string()));
        }
        if let Some(m) = &self.mean {
            out.push((MEAN, floats_to_string(m)));
        }
        if let Some(s) = &self.std {
            out.push((STD, floats_to_string(s)));
        }
        if let Some(l) = &self.labels {
            out.push((LABELS, l.join("\n")));
        }
        out
    }
}

/// Sets (or replaces) a metadata entry on a model.
pub fn set(model: &mut ModelProto, key: &str, value: impl Into<String>) {
    let value = value.into();
    match model.metadata_props.iter_mut().find(|p| p.key() == key) {
        Some(p) => p.value = Some(value),
        None => model.metadata_props.push(StringStringEntryProto {
            key: Some(key.to_string()),
            value: Some(value),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_meta_round_trips_through_model_metadata() {
        let meta = ImageMeta {
            input_shape: Some([1, 28, 28]),
            color: Some(Color::Gray),
            resize: Some(Resize::ShorterThenCrop(32)),
            scale: Some(1.0 / 255.0),
            mean: Some(vec![0.286]),
            std: Some(vec![0.353]),
            labels: Some(vec!["T-shirt/top".into(), "Trouser".into()]),
        };
        let mut model = ModelProto::default();
        for (k, v) in meta.to_pairs() {
            set(&mut model, k, v);
        }
        assert_eq!(ImageMeta::from_model(&model).unwrap(), meta);
    }

    #[test]
    fn malformed_keys_are_named() {
        let mut model = ModelProto::default();
        set(&mut model, RESIZE, "shorter:abc");
        let err = ImageMeta::from_model(&model).unwrap_err().to_string();
        assert!(err.contains("msn.resize"), "{err}");
    }
}
