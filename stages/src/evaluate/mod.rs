//! Evaluation helpers the kinds share: eval-mode feature and logit extraction, kNN classification
//! of encoder features, accuracy statistics from class scores, and the linear probe. The `eval`
//! kind reports with them; `pretrain` uses the kNN monitor, `distill` the teacher's logits.

mod knn;
mod probe;
mod scores;

pub use knn::{knn_scores, l2_normalize, EncoderKnn};
pub use probe::LinearProbe;
pub use scores::ClassScores;

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};

use crate::api::RunCtx;
use crate::data::loader::to_tensor;
use crate::data::Images;
use crate::model::Network;

/// Refuse images whose shape differs from the network's input.
pub fn check_images_fit(net: &Network, images: &Images) -> Result<()> {
    ensure!(
        images.c == net.in_channels()
            && images.h == net.image_size()
            && images.w == net.image_size(),
        "the model expects {}×{}×{} inputs but the dataset has {}×{}×{} images",
        net.in_channels(),
        net.image_size(),
        net.image_size(),
        images.c,
        images.h,
        images.w
    );
    Ok(())
}

/// Eval-mode outputs over all images: (features (N, D), logits (N, C) if the net classifies),
/// on the CPU.
pub fn extract(
    net: &Network,
    images: &Images,
    batch_size: usize,
    ctx: Option<&RunCtx>,
) -> Result<(Tensor, Option<Tensor>)> {
    check_images_fit(net, images)?;
    let (mut feats, mut logits) = (Vec::new(), Vec::new());
    let ids: Vec<usize> = (0..images.n).collect();
    for chunk in ids.chunks(batch_size.max(1)) {
        if let Some(ctx) = ctx {
            ctx.check_cancel()?;
        }
        let x = to_tensor(images, chunk, net.device())?;
        let (f, _, l) = net.forward_all(&x, false)?;
        feats.push(f.to_device(&Device::Cpu)?);
        if let Some(l) = l {
            logits.push(l.to_device(&Device::Cpu)?);
        }
    }
    ensure!(!feats.is_empty(), "the split holds no images");
    let logits = if logits.is_empty() {
        None
    } else {
        Some(Tensor::cat(&logits, 0)?)
    };
    Ok((Tensor::cat(&feats, 0)?, logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_tensor_is_nchw_in_unit_range() {
        let img = Images {
            n: 1,
            h: 1,
            w: 2,
            c: 3,
            pixels: vec![0, 51, 255, 102, 153, 204],
            labels: vec![0],
        };
        let t = to_tensor(&img, &[0], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [1, 3, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, [0.0, 0.4, 0.2, 0.6, 1.0, 0.8]);
    }
}
