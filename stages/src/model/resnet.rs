//! ResNet v1 encoder: stem, four groups of basic or bottleneck blocks, global average pooling.
//!
//! Follows the SimCLRv2 reference (tf2/resnet.py): stride on the 3×3 convolution of bottlenecks,
//! BN after every convolution, projection shortcuts (1×1 conv + BN) where the shape changes, and
//! each block's last BN γ initialized to zero. With selective kernels the reference also switches
//! to ResNet-D (deep 3×3 stem; average-pool-then-1×1 shortcuts); so does this code.

use candle_core::{Result, Tensor};

use super::batchnorm::{BatchNorm, BnOpts};
use super::config::{BlockKind, ModelCfg};
use super::layers::Conv2d;
use super::params::{join, Init, Slot, Visit};
use super::sk::SkConv;

fn bn_opts(cfg: &ModelCfg, zero_gamma: bool) -> BnOpts {
    BnOpts {
        zero_gamma,
        with_beta: true,
        momentum: cfg.bn_momentum,
        eps: cfg.bn_eps,
    }
}

/// A convolution followed by its BatchNorm.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        init: &Init,
        cfg: &ModelCfg,
        conv_name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        zero_gamma: bool,
    ) -> Result<Self> {
        Ok(ConvBn {
            conv: Conv2d::new(init, conv_name, cin, cout, k, stride)?,
            bn: BatchNorm::new(init, cout, bn_opts(cfg, zero_gamma))?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x, train)?, train, relu)
    }

    fn visit<'a>(&'a self, prefix: &str, names: (&str, &str), f: &mut dyn FnMut(String, Slot<'a>)) {
        self.conv.visit(&join(prefix, names.0), f);
        self.bn.visit(&join(prefix, names.1), f);
    }
}

/// Max-pool 3×3 stride 2 with TF "SAME" padding (extra padding at the end). Built from narrow +
/// maximum because candle's max_pool2d has no backward for kernel ≠ stride. Inputs are post-ReLU
/// (≥ 0) and every window holds a real element, so zero padding equals −∞ padding.
fn max_pool_3x3_s2_same(x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    for dim in [2, 3] {
        let size = y.dim(dim)?;
        let out = size.div_ceil(2);
        let pad_total = 2 * out + 1 - size; // = (out−1)·2 + 3 − size
        let padded = y.pad_with_zeros(dim, pad_total / 2, pad_total - pad_total / 2)?;
        // Window i covers padded rows 2i, 2i+1, 2i+2.
        let mut shape = padded.dims().to_vec();
        shape[dim] = out;
        shape.insert(dim + 1, 2);
        let even_odd = padded.narrow(dim, 0, 2 * out)?.reshape(shape.as_slice())?;
        let next = padded.narrow(dim, 1, 2 * out)?.reshape(shape.as_slice())?;
        let a = even_odd.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?;
        let b = even_odd.narrow(dim + 1, 1, 1)?.squeeze(dim + 1)?;
        let c = next.narrow(dim + 1, 1, 1)?.squeeze(dim + 1)?;
        y = a.maximum(&b)?.maximum(&c)?;
    }
    Ok(y)
}

/// 2×2 stride-1 "SAME" average pool. TF pads (0, 1) and leaves the padding out of each average,
/// which is exactly what replicating the last row/column does. Built from narrow + add because
/// candle's avg_pool2d has no backward for kernel ≠ stride.
fn avg_pool_2x2_s1_same(x: &Tensor) -> Result<Tensor> {
    let p = x.pad_with_same(2, 0, 1)?.pad_with_same(3, 0, 1)?;
    let (h, w) = (x.dim(2)?, x.dim(3)?);
    let q = |dy: usize, dx: usize| p.narrow(2, dy, h)?.narrow(3, dx, w);
    ((q(0, 0)? + q(0, 1)?)? + (q(1, 0)? + q(1, 1)?)?)? * 0.25
}

/// The encoder's first layers.
struct Stem {
    convs: Vec<ConvBn>,
    max_pool: bool,
}

impl Stem {
    fn new(init: &Init, cfg: &ModelCfg, cin: usize, cifar: bool) -> Result<Self> {
        let c = cfg.stem_width();
        // (cin, cout, kernel, stride) of each conv.
        let plan: Vec<(usize, usize, usize, usize)> = if cifar {
            vec![(cin, c, 3, 1)]
        } else if cfg.uses_sk() {
            let half = (c / 2).max(1);
            vec![(cin, half, 3, 2), (half, half, 3, 1), (half, c, 3, 1)]
        } else {
            vec![(cin, c, 7, 2)]
        };
        let convs = plan
            .into_iter()
            .enumerate()
            .map(|(i, (a, b, k, s))| {
                let conv = format!("encoder.stem.conv{}", i + 1);
                ConvBn::new(init, cfg, &conv, a, b, k, s, false)
            })
            .collect::<Result<_>>()?;
        Ok(Stem {
            convs,
            max_pool: !cifar,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for cb in &self.convs {
            y = cb.forward(&y, train, true)?;
        }
        if self.max_pool {
            y = max_pool_3x3_s2_same(&y)?;
        }
        Ok(y)
    }

    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>)) {
        for (i, cb) in self.convs.iter().enumerate() {
            let (c, b) = (format!("conv{}", i + 1), format!("bn{}", i + 1));
            cb.visit(prefix, (&c, &b), f);
        }
    }
}

/// Projection shortcut: 1×1 conv (stride s) + BN, or under ResNet-D a 2×2 average pool (stride s)
/// followed by a stride-1 1×1 conv + BN.
struct Shortcut {
    resnet_d: bool,
    stride: usize,
    proj: ConvBn,
}

impl Shortcut {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = if !self.resnet_d {
            x.clone()
        } else if self.stride > 1 {
            // Reference: pad (0, 1) with zeros, then 2×2 VALID average pool with stride s.
            let p = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            p.avg_pool2d_with_stride((2, 2), (self.stride, self.stride))?
        } else {
            avg_pool_2x2_s1_same(x)?
        };
        self.proj.forward(&x, train, false)
    }
}

/// The 3×3 convolution inside a bottleneck: plain conv + BN + ReLU, or selective kernels.
enum Mid {
    Plain(ConvBn),
    Sk(SkConv),
}

struct Block {
    kind: BlockKind,
    conv1: ConvBn,
    mid: Option<Mid>,
    last: ConvBn,
    shortcut: Option<Shortcut>,
}

impl Block {
    fn new(
        init: &Init,
        cfg: &ModelCfg,
        name: &str,
        cin: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let kind = cfg.block_kind();
        let cout = width * kind.expansion();
        let n = |s: &str| join(name, s);
        let shortcut = if stride != 1 || cin != cout {
            let resnet_d = cfg.uses_sk();
            let conv_stride = if resnet_d { 1 } else { stride };
            Some(Shortcut {
                resnet_d,
                stride,
                proj: ConvBn::new(
                    init,
                    cfg,
                    &n("shortcut.conv"),
                    cin,
                    cout,
                    1,
                    conv_stride,
                    false,
                )?,
            })
        } else {
            None
        };
        let block = match kind {
            BlockKind::Basic => Block {
                kind,
                conv1: ConvBn::new(init, cfg, &n("conv1"), cin, width, 3, stride, false)?,
                mid: None,
                last: ConvBn::new(init, cfg, &n("conv2"), width, width, 3, 1, true)?,
                shortcut,
            },
            BlockKind::Bottleneck => {
                let mid = if cfg.uses_sk() {
                    let o = bn_opts(cfg, false);
                    Mid::Sk(SkConv::new(
                        init,
                        &n("sk"),
                        width,
                        width,
                        stride,
                        cfg.sk_ratio,
                        o,
                    )?)
                } else {
                    Mid::Plain(ConvBn::new(
                        init,
                        cfg,
                        &n("conv2"),
                        width,
                        width,
                        3,
                        stride,
                        false,
                    )?)
                };
                Block {
                    kind,
                    conv1: ConvBn::new(init, cfg, &n("conv1"), cin, width, 1, 1, false)?,
                    mid: Some(mid),
                    last: ConvBn::new(init, cfg, &n("conv3"), width, cout, 1, 1, true)?,
                    shortcut,
                }
            }
        };
        Ok(block)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            Some(s) => s.forward(x, train)?,
            None => x.clone(),
        };
        let mut y = self.conv1.forward(x, train, true)?;
        match &self.mid {
            Some(Mid::Plain(cb)) => y = cb.forward(&y, train, true)?,
            Some(Mid::Sk(sk)) => y = sk.forward(&y, train)?,
            None => {}
        }
        let y = self.last.conv.forward(&y, train)?;
        self.last.bn.forward_add_relu(&y, &shortcut, train)
    }

    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>)) {
        self.conv1.visit(prefix, ("conv1", "bn1"), f);
        match &self.mid {
            Some(Mid::Plain(cb)) => cb.visit(prefix, ("conv2", "bn2"), f),
            Some(Mid::Sk(sk)) => sk.visit(&join(prefix, "sk"), f),
            None => {}
        }
        match self.kind {
            BlockKind::Basic => self.last.visit(prefix, ("conv2", "bn2"), f),
            BlockKind::Bottleneck => self.last.visit(prefix, ("conv3", "bn3"), f),
        }
        if let Some(s) = &self.shortcut {
            s.proj.visit(&join(prefix, "shortcut"), ("conv", "bn"), f);
        }
    }
}

/// ResNet v1 encoder; output (N, num_features) after global average pooling.
pub struct Encoder {
    stem: Stem,
    groups: Vec<Vec<Block>>,
    num_features: usize,
}

impl Encoder {
    pub fn new(init: &Init, cfg: &ModelCfg, in_channels: usize, cifar_stem: bool) -> Result<Self> {
        let layout = cfg
            .layout()
            .ok_or_else(|| candle_core::Error::Msg(format!("unsupported depth {}", cfg.depth)))?;
        let stem = Stem::new(init, cfg, in_channels, cifar_stem)?;
        let mut cin = cfg.stem_width();
        let mut groups = Vec::with_capacity(4);
        for (g, &blocks) in layout.iter().enumerate() {
            let width = cfg.group_width(g);
            let mut group = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let stride = if g > 0 && b == 0 { 2 } else { 1 };
                let name = format!("encoder.layer{}.{b}", g + 1);
                group.push(Block::new(init, cfg, &name, cin, width, stride)?);
                cin = width * cfg.block_kind().expansion();
            }
            groups.push(group);
        }
        Ok(Encoder {
            stem,
            groups,
            num_features: cin,
        })
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.stem.forward(x, train)?;
        for block in self.groups.iter().flatten() {
            y = block.forward(&y, train)?;
        }
        y.mean(3)?.mean(2)
    }
}

impl Visit for Encoder {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>)) {
        self.stem.visit(&join(prefix, "stem"), f);
        for (g, group) in self.groups.iter().enumerate() {
            for (b, block) in group.iter().enumerate() {
                block.visit(&join(prefix, &format!("layer{}.{b}", g + 1)), f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn stride1_avg_pool_excludes_padding_like_tf() {
        let x = Tensor::new(&[[[[0f32, 1.], [2., 3.]]]], &Device::Cpu).unwrap();
        let y = avg_pool_2x2_s1_same(&x).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1.5, 2.0, 2.5, 3.0]
        );
    }

    #[test]
    fn max_pool_matches_tf_same_and_has_gradients() {
        let d = Device::Cpu;
        // 1×1×4×4 input 0..16: TF SAME 3×3/2 pads (0, 1), windows rows/cols {0,1,2} and {2,3}
        // → [[10, 11], [14, 15]].
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 16., &d)
                .unwrap()
                .reshape((1, 1, 4, 4))
                .unwrap(),
        )
        .unwrap();
        let y = max_pool_3x3_s2_same(x.as_tensor()).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [10., 11., 14., 15.]
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let hit: Vec<usize> = g
            .iter()
            .enumerate()
            .filter(|(_, &v)| v > 0.0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(hit, [10, 11, 14, 15]);
        // Odd size: 5 → 3 outputs, padding (1, 1): windows [-1..2), [1..4), [3..6).
        let x = Tensor::arange(0f32, 25., &d)
            .unwrap()
            .reshape((1, 1, 5, 5))
            .unwrap();
        let y = max_pool_3x3_s2_same(&x).unwrap();
        assert_eq!(y.dims(), [1, 1, 3, 3]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..3],
            [6., 8., 9.]
        );
    }
}
