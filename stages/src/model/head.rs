//! SimCLRv2 projection head (reference tf2/model.py `ProjectionHead`).

use candle_core::{Result, Tensor};

use super::batchnorm::{BatchNorm, BnOpts};
use super::config::ModelCfg;
use super::layers::Linear;
use super::params::{join, Init, Slot, Visit};

/// Std of the head's linear weights (the reference's `RandomNormal(stddev=0.01)`; BN follows).
const HEAD_INIT_STD: f64 = 0.01;

/// One head layer: Linear (no bias) → BN → ReLU; the head's last layer has BN without β and no ReLU.
struct HeadLayer {
    linear: Linear,
    bn: BatchNorm,
    relu: bool,
}

/// The first `len()` layers of a `cfg.head_layers`-layer projection head. Fine-tuned and
/// classifier networks keep only the layers below their classifier (SimCLRv2 fine-tunes from
/// layer 1); pretraining keeps all of them.
pub struct Head {
    layers: Vec<HeadLayer>,
}

impl Head {
    /// Head layers 1..=kept of the head `cfg` describes (kept ≤ cfg.head_layers).
    pub fn new(init: &Init, cfg: &ModelCfg, kept: usize) -> Result<Self> {
        let layers = (1..=kept)
            .map(|i| {
                let (din, dout) = cfg.head_layer_dims(i);
                let last = i == cfg.head_layers;
                let name = format!("head.{i}.linear");
                let bn = BnOpts {
                    zero_gamma: false,
                    with_beta: !last,
                    momentum: cfg.bn_momentum,
                    eps: cfg.bn_eps,
                };
                Ok(HeadLayer {
                    linear: Linear::normal(init, &name, din, dout, HEAD_INIT_STD)?,
                    bn: BatchNorm::new(init, dout, bn)?,
                    relu: !last,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Head { layers })
    }

    /// Number of kept layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Drop the layers above `kept`.
    pub fn truncate(&mut self, kept: usize) {
        self.layers.truncate(kept);
    }

    /// Output width of layer `i` (0 = the input width is not known here, so `i ≥ 1`).
    pub fn layer_out_dim(&self, i: usize) -> Option<usize> {
        self.layers
            .get(i.checked_sub(1)?)
            .map(|l| l.linear.out_dim())
    }

    /// `[features, after layer 1, ..., after layer upto]` (upto ≤ len()).
    pub fn forward(&self, features: &Tensor, train: bool, upto: usize) -> Result<Vec<Tensor>> {
        let mut hiddens = Vec::with_capacity(upto + 1);
        hiddens.push(features.clone());
        for layer in &self.layers[..upto] {
            let h = layer
                .linear
                .forward(hiddens.last().expect("non-empty"), train)?;
            hiddens.push(layer.bn.forward(&h, train, layer.relu)?);
        }
        Ok(hiddens)
    }
}

impl Visit for Head {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>)) {
        for (i, layer) in self.layers.iter().enumerate() {
            let p = join(prefix, &(i + 1).to_string());
            layer.linear.visit(&join(&p, "linear"), f);
            layer.bn.visit(&join(&p, "bn"), f);
        }
    }
}
