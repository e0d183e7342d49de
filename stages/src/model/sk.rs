//! Selective-kernel convolution (Li et al. 2019) as SimCLRv2 uses it (reference `SK_Conv2D`).

use candle_core::{Result, Tensor};

use super::batchnorm::{BatchNorm, BnOpts};
use super::config::SK_MIN_DIM;
use super::layers::Conv2d;
use super::params::{join, Init, Slot, Visit};

/// Two 3×3 streams computed as one convolution to 2·C channels (+BN+ReLU) and split; their sum is
/// globally pooled and sent through 1×1 conv → BN+ReLU (width max(C·ratio, 32)) → 1×1 conv to 2·C,
/// a softmax over the two streams gives per-channel mixing weights, and the output is the
/// weighted sum of the streams.
pub struct SkConv {
    conv: Conv2d,
    bn: BatchNorm,
    fc1: Conv2d,
    fc_bn: BatchNorm,
    fc2: Conv2d,
    channels: usize,
}

impl SkConv {
    pub fn new(
        init: &Init,
        name: &str,
        cin: usize,
        channels: usize,
        stride: usize,
        sk_ratio: f64,
        bn: BnOpts,
    ) -> Result<Self> {
        let mid = ((channels as f64 * sk_ratio) as usize).max(SK_MIN_DIM);
        Ok(SkConv {
            conv: Conv2d::new(init, &join(name, "conv"), cin, 2 * channels, 3, stride)?,
            bn: BatchNorm::new(init, 2 * channels, bn)?,
            fc1: Conv2d::new(init, &join(name, "fc1"), channels, mid, 1, 1)?,
            fc_bn: BatchNorm::new(init, mid, bn)?,
            fc2: Conv2d::new(init, &join(name, "fc2"), mid, 2 * channels, 1, 1)?,
            channels,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self
            .bn
            .forward(&self.conv.forward(x, train)?, train, true)?;
        let (n, _, h, w) = y.dims4()?;
        let c = self.channels;
        let streams = y.reshape((n, 2, c, h, w))?;
        let pooled = streams.sum(1)?.mean_keepdim(3)?.mean_keepdim(2)?; // (N,C,1,1)
        let z = self
            .fc_bn
            .forward(&self.fc1.forward(&pooled, train)?, train, true)?;
        let mix = self.fc2.forward(&z, train)?.reshape((n, 2, c, 1, 1))?;
        let mix = candle_nn::ops::softmax(&mix, 1)?;
        streams.broadcast_mul(&mix)?.sum(1)
    }
}

impl Visit for SkConv {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>)) {
        self.conv.visit(&join(prefix, "conv"), f);
        self.bn.visit(&join(prefix, "bn"), f);
        self.fc1.visit(&join(prefix, "fc1"), f);
        self.fc_bn.visit(&join(prefix, "fc_bn"), f);
        self.fc2.visit(&join(prefix, "fc2"), f);
    }
}
