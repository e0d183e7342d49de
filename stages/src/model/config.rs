//! The architecture description every model is built from, and its validation.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Which stem the encoder starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// CIFAR stem for inputs of at most [`CIFAR_STEM_MAX_SIZE`] pixels, ImageNet stem otherwise.
    #[default]
    Auto,
    /// 3×3 stride-1 convolution, no max-pool (SimCLR's CIFAR-10 setting).
    Cifar,
    /// 7×7 stride-2 convolution + 3×3 stride-2 max-pool (with selective kernels: the ResNet-D deep
    /// stem of three 3×3 convolutions, as the reference does).
    Imagenet,
}

/// Inputs at most this many pixels wide get the CIFAR stem under [`Stem::Auto`].
pub const CIFAR_STEM_MAX_SIZE: usize = 32;

/// Residual block family of a depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (depths 10, 18, 34).
    Basic,
    /// 1×1 → 3×3 → 1×1 with expansion 4 (depths 50, 101, 152).
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block relative to its inner width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// ResNet v1 encoder + projection head architecture (a stage's `[model]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelCfg {
    /// ResNet depth: 10, 18, 34 (basic blocks) or 50, 101, 152 (bottlenecks).
    pub depth: usize,
    /// Channel multiplier: group widths are round(64·width), round(128·width), ... (at least 4).
    pub width: f64,
    /// Selective-kernel reduction ratio (SimCLRv2 uses 0.0625); 0 turns SK off. Bottlenecks only.
    pub sk_ratio: f64,
    pub stem: Stem,
    /// Layers of the projection head (Linear + BN + ReLU; the last without β and ReLU).
    pub head_layers: usize,
    /// Output dimension of the projection head.
    pub proj_dim: usize,
    /// Width of the hidden head layers; `None` = the encoder's output dimension (SimCLRv2).
    /// Omitted rather than `null` when unset, so resolved params stay TOML-expressible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proj_hidden: Option<usize>,
    /// BatchNorm running-statistics decay, TF style: running = m·running + (1−m)·batch.
    pub bn_momentum: f64,
    pub bn_eps: f64,
}

impl Default for ModelCfg {
    fn default() -> Self {
        ModelCfg {
            depth: 18,
            width: 1.0,
            sk_ratio: 0.0,
            stem: Stem::Auto,
            head_layers: 3,
            proj_dim: 128,
            proj_hidden: None,
            bn_momentum: 0.9,
            bn_eps: 1e-5,
        }
    }
}

/// Selective kernels' lower bound on the mixing MLP's hidden width (reference `min_dim`).
pub const SK_MIN_DIM: usize = 32;

/// Base widths of the four block groups before the width multiplier.
const GROUP_BASE_WIDTHS: [usize; 4] = [64, 128, 256, 512];

impl ModelCfg {
    /// Reject configurations that cannot be built, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        if self.layout().is_none() {
            bail!(
                "model.depth: {} is not a supported ResNet depth (use 10, 18, 34, 50, 101 or 152)",
                self.depth
            );
        }
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 16.0) {
            bail!(
                "model.width: {} must be a multiplier in (0, 16]",
                self.width
            );
        }
        if !(self.sk_ratio.is_finite() && (0.0..=1.0).contains(&self.sk_ratio)) {
            bail!(
                "model.sk_ratio: {} must lie in [0, 1] (0 = off)",
                self.sk_ratio
            );
        }
        if self.sk_ratio > 0.0 && self.block_kind() == BlockKind::Basic {
            bail!(
                "model.sk_ratio: selective kernels need bottleneck blocks (depth 50, 101 or 152), \
                 but depth is {}; set sk_ratio = 0 or use a deeper network",
                self.depth
            );
        }
        if self.head_layers == 0 {
            bail!("model.head_layers: must be at least 1");
        }
        if self.proj_dim == 0 {
            bail!("model.proj_dim: must be at least 1");
        }
        if self.proj_hidden == Some(0) {
            bail!("model.proj_hidden: must be at least 1 (or omitted for the encoder width)");
        }
        if !(self.bn_momentum.is_finite() && (0.0..1.0).contains(&self.bn_momentum)) {
            bail!("model.bn_momentum: {} must lie in [0, 1)", self.bn_momentum);
        }
        if !(self.bn_eps.is_finite() && self.bn_eps > 0.0) {
            bail!("model.bn_eps: {} must be positive", self.bn_eps);
        }
        Ok(())
    }

    /// Blocks per group, or `None` for an unsupported depth.
    pub fn layout(&self) -> Option<[usize; 4]> {
        Some(match self.depth {
            10 => [1, 1, 1, 1],
            18 => [2, 2, 2, 2],
            34 | 50 => [3, 4, 6, 3],
            101 => [3, 4, 23, 3],
            152 => [3, 8, 36, 3],
            _ => return None,
        })
    }

    pub fn block_kind(&self) -> BlockKind {
        if self.depth >= 50 {
            BlockKind::Bottleneck
        } else {
            BlockKind::Basic
        }
    }

    pub fn uses_sk(&self) -> bool {
        self.sk_ratio > 0.0
    }

    /// Inner width of block group `g` (0..4).
    pub fn group_width(&self, g: usize) -> usize {
        scaled(GROUP_BASE_WIDTHS[g], self.width)
    }

    /// Output channels of the stem (= round(64·width)).
    pub fn stem_width(&self) -> usize {
        self.group_width(0)
    }

    /// Dimension of the encoder output (after global average pooling).
    pub fn num_features(&self) -> usize {
        self.group_width(3) * self.block_kind().expansion()
    }

    /// Width of the hidden projection-head layers.
    pub fn head_hidden(&self) -> usize {
        self.proj_hidden.unwrap_or_else(|| self.num_features())
    }

    /// (in, out) dimensions of head layer `i` (1-based, as `head_layer` counts).
    pub fn head_layer_dims(&self, i: usize) -> (usize, usize) {
        let input = if i == 1 {
            self.num_features()
        } else {
            self.head_hidden()
        };
        let output = if i == self.head_layers {
            self.proj_dim
        } else {
            self.head_hidden()
        };
        (input, output)
    }

    /// Whether inputs of `image_size` pixels get the CIFAR stem.
    pub fn cifar_stem(&self, image_size: usize) -> bool {
        match self.stem {
            Stem::Auto => image_size <= CIFAR_STEM_MAX_SIZE,
            Stem::Cifar => true,
            Stem::Imagenet => false,
        }
    }
}

fn scaled(base: usize, width: f64) -> usize {
    ((base as f64 * width).round() as usize).max(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_resnet18_with_simclr_head() {
        let c = ModelCfg::default();
        c.validate().unwrap();
        assert_eq!(c.num_features(), 512);
        assert_eq!(c.head_layer_dims(1), (512, 512));
        assert_eq!(c.head_layer_dims(3), (512, 128));
    }

    #[test]
    fn widths_scale_and_bottlenecks_expand() {
        let c = ModelCfg {
            depth: 50,
            width: 0.25,
            ..Default::default()
        };
        assert_eq!(c.stem_width(), 16);
        assert_eq!(c.num_features(), 512);
        let tiny = ModelCfg {
            width: 0.01,
            ..Default::default()
        };
        assert_eq!(tiny.stem_width(), 4);
    }

    #[test]
    fn validate_names_the_key() {
        let bad = |c: ModelCfg| c.validate().unwrap_err().to_string();
        let d = ModelCfg::default;
        assert!(bad(ModelCfg { depth: 20, ..d() }).starts_with("model.depth"));
        assert!(bad(ModelCfg {
            sk_ratio: 0.0625,
            ..d()
        })
        .contains("bottleneck"));
        assert!(bad(ModelCfg { width: 0.0, ..d() }).starts_with("model.width"));
        assert!(bad(ModelCfg {
            head_layers: 0,
            ..d()
        })
        .starts_with("model.head_layers"));
        assert!(bad(ModelCfg {
            bn_momentum: 1.0,
            ..d()
        })
        .starts_with("model.bn_momentum"));
        ModelCfg {
            depth: 50,
            sk_ratio: 0.0625,
            ..d()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn serde_rejects_unknown_and_fills_defaults() {
        let c: ModelCfg = serde_json::from_str(r#"{"depth": 50, "stem": "cifar"}"#).unwrap();
        assert_eq!(c.depth, 50);
        assert_eq!(c.stem, Stem::Cifar);
        assert_eq!(c.head_layers, 3);
        assert!(serde_json::from_str::<ModelCfg>(r#"{"dept": 50}"#).is_err());
        let v = serde_json::to_value(&c).unwrap();
        assert!(v.get("proj_hidden").is_none());
        assert_eq!(serde_json::from_value::<ModelCfg>(v).unwrap(), c);
    }
}
