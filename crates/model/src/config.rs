//! The model configuration: sizes and ablation switches, loadable from TOML.

use std::path::Path;

use fer_attention::PositionAttentionConfig;
use fer_birnn::BiRnnConfig;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The stages of a torchvision ResNet that can be tapped, shallow to deep.
pub const STAGES: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];

/// The first convolution of the backbone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// torchvision's 7x7 stride-2 conv followed by a 3x3 stride-2 max-pool (inputs of ~224 px).
    #[default]
    Imagenet,
    /// A 3x3 conv of stride `stem_stride`, no max-pool: keeps resolution for inputs <= 64 px.
    Small,
}

/// The ResNet backbone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackboneConfig {
    /// 18, 34 or 50.
    pub depth: usize,
    /// Channel multiplier: each stage has `round(base * width)` channels (base 64/128/256/512).
    pub width: f64,
    pub stem: Stem,
    /// Stride of the `small` stem's conv (ignored by the `imagenet` stem).
    pub stem_stride: usize,
    /// Names of the stages whose output maps feed the attention, shallow to deep.
    pub taps: Vec<String>,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self {
            depth: 18,
            width: 1.0,
            stem: Stem::Imagenet,
            stem_stride: 1,
            taps: vec!["layer2".into(), "layer3".into(), "layer4".into()],
        }
    }
}

impl BackboneConfig {
    /// Channels of `base` after the width factor; never below one.
    pub fn channels(&self, base: usize) -> usize {
        ((base as f64 * self.width).round() as usize).max(1)
    }

    /// Zero-based stage indices of the taps (validated config assumed).
    pub fn tap_stages(&self) -> Vec<usize> {
        self.taps
            .iter()
            .filter_map(|t| STAGES.iter().position(|s| s == t))
            .collect()
    }

    /// Checks the fields; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        if ![18, 34, 50].contains(&self.depth) {
            return Err(cfg_err(format!(
                "backbone.depth = {} (expected 18, 34 or 50)",
                self.depth
            )));
        }
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(cfg_err(format!(
                "backbone.width = {} (must be a positive number)",
                self.width
            )));
        }
        if (64.0 * self.width).round() < 1.0 {
            return Err(cfg_err(format!(
                "backbone.width = {} leaves the stem with no channels",
                self.width
            )));
        }
        if self.stem_stride == 0 {
            return Err(cfg_err("backbone.stem_stride must be >= 1".into()));
        }
        if self.taps.is_empty() {
            return Err(cfg_err(
                "backbone.taps is empty (tap at least one stage)".into(),
            ));
        }
        let mut prev: Option<usize> = None;
        for t in &self.taps {
            let Some(i) = STAGES.iter().position(|s| s == t) else {
                return Err(cfg_err(format!(
                    "backbone.taps: unknown stage {t:?} (expected one of {STAGES:?})"
                )));
            };
            if prev.is_some_and(|p| i <= p) {
                return Err(cfg_err(format!(
                    "backbone.taps: {t:?} is out of order or repeated (list stages shallow to deep, once each)"
                )));
            }
            prev = Some(i);
        }
        Ok(())
    }
}

/// The whole 2Att-2Mt model (`docs/ARCHITECTURE.md`). `Default` gives the paper-sized model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: BackboneConfig,
    /// First-level (position) attention sizes: d (layer feature) and a (score width).
    pub attention: PositionAttentionConfig,
    /// The Bi-RNN over the layer features.
    pub rnn: BiRnnConfig,
    /// Width of the layer self-attention's score MLP.
    pub att2_width: usize,
    /// Size of the categorical representation `c`.
    pub cat_hidden: usize,
    /// Hidden size of the valence/arousal MLP.
    pub va_hidden: usize,
    /// Expression classes: 8 (AffectNet) or 7.
    pub num_classes: usize,
    /// Ablation: global average pooling instead of position attention.
    pub no_att1: bool,
    /// Ablation: mean over layers instead of the Bi-RNN + layer self-attention.
    pub no_att2: bool,
    /// `false` for the va-only mode: no categorical head, the VA head sees `z` alone.
    pub categorical: bool,
    /// Auxiliary categorical head on the pooled last tap (a training aid). On by default: a
    /// backbone trained from scratch stalls at the class prior without it (the trainer turns it
    /// off for pretrained weights unless a config sets it).
    pub aux_head: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: BackboneConfig::default(),
            attention: PositionAttentionConfig::default(),
            rnn: BiRnnConfig::default(),
            att2_width: 64,
            cat_hidden: 128,
            va_hidden: 128,
            num_classes: 8,
            no_att1: false,
            no_att2: false,
            categorical: true,
            aux_head: true,
        }
    }
}

impl ModelConfig {
    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        self.backbone.validate()?;
        if !matches!(self.num_classes, 7 | 8) {
            return Err(cfg_err(format!(
                "num_classes = {} (expected 7 or 8)",
                self.num_classes
            )));
        }
        for (name, v) in [
            ("attention.d", self.attention.d),
            ("attention.a", self.attention.a),
            ("rnn.hidden", self.rnn.hidden),
            ("att2_width", self.att2_width),
            ("cat_hidden", self.cat_hidden),
            ("va_hidden", self.va_hidden),
        ] {
            if v == 0 {
                return Err(cfg_err(format!("{name} must be >= 1")));
            }
        }
        if self.aux_head && !self.categorical {
            return Err(cfg_err(
                "aux_head = true needs categorical = true (the auxiliary head is categorical)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Number of tapped layers L.
    pub fn num_layers(&self) -> usize {
        self.backbone.taps.len()
    }

    /// Dimension of `z`: 2h with the Bi-RNN, d without (`no_att2`).
    pub fn z_dim(&self) -> usize {
        if self.no_att2 {
            self.attention.d
        } else {
            2 * self.rnn.hidden
        }
    }

    /// Parses and validates a TOML document.
    pub fn from_toml_str(s: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(s).map_err(|e| cfg_err(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| Error::ConfigParse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        cfg.validate().map_err(|e| Error::ConfigParse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// The TOML form (what `from_toml_str` reads back).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| cfg_err(e.to_string()))
    }
}

fn cfg_err(msg: String) -> Error {
    Error::Config(msg)
}
