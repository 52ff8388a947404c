use clap::Args;
use msn_runtime::PreprocessOverrides;

/// Preprocessing flags; each one overrides the model's metadata.
#[derive(Debug, Clone, Args, Default)]
pub struct PreprocessArgs {
    /// Resize the shorter side to N pixels (then centre-crop to the model's size or --crop)
    #[arg(long, value_name = "N")]
    pub resize: Option<u32>,
    /// Centre-crop to N x N; without --resize, a plain resize to N x N
    #[arg(long, value_name = "N")]
    pub crop: Option<u32>,
    /// Multiply raw 0-255 pixel values by S first (a number or a fraction like 1/255) [default: 1/255]
    #[arg(long, value_name = "S", value_parser = parse_scale)]
    pub scale: Option<f32>,
    /// Per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406
    #[arg(long, value_name = "A,B,C", value_parser = parse_list)]
    pub mean: Option<FloatList>,
    /// Per-channel standard deviation divided after the mean, e.g. 0.229,0.224,0.225
    #[arg(long, value_name = "A,B,C", value_parser = parse_list)]
    pub std: Option<FloatList>,
    /// Convert images to grayscale (for one-channel models)
    #[arg(long)]
    pub gray: bool,
}

fn parse_scale(s: &str) -> Result<f32, String> {
    let value = match s.split_once('/') {
        Some((a, b)) => {
            let a: f32 = a
                .trim()
                .parse()
                .map_err(|_| format!("'{a}' is not a number"))?;
            let b: f32 = b
                .trim()
                .parse()
                .map_err(|_| format!("'{b}' is not a number"))?;
            a / b
        }
        None => s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number"))?,
    };
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("scale must be a positive number, got '{s}'"))
    }
}

/// A comma-separated list of numbers given as one flag value.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatList(pub Vec<f32>);

fn parse_list(s: &str) -> Result<FloatList, String> {
    msn_onnx::meta::parse_floats(s).map(FloatList)
}

impl PreprocessArgs {
    pub fn overrides(&self) -> PreprocessOverrides {
        PreprocessOverrides {
            resize: self.resize,
            crop: self.crop,
            scale: self.scale,
            mean: self.mean.as_ref().map(|l| l.0.clone()),
            std: self.std.as_ref().map(|l| l.0.clone()),
            gray: self.gray,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_accepts_fractions() {
        assert!((parse_scale("1/255").unwrap() - 1.0 / 255.0).abs() < 1e-9);
        assert_eq!(parse_scale("0.5").unwrap(), 0.5);
        assert!(parse_scale("0").is_err());
        assert!(parse_scale("x").is_err());
    }
}
