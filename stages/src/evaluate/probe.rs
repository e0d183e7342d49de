//! The linear probe: a linear classifier on frozen features, the standard measure of how much a
//! self-supervised encoder's features hold.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Multinomial logistic regression on frozen features: standardized with the train-split mean and
/// standard deviation, zero-initialized, SGD with momentum 0.9 and a cosine-decayed learning rate,
/// no weight decay, samples shuffled per epoch from `seed`.
#[derive(Debug, Clone)]
pub struct LinearProbe {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub seed: u64,
}

impl Default for LinearProbe {
    fn default() -> Self {
        LinearProbe {
            epochs: 10,
            batch_size: 256,
            lr: 0.1,
            momentum: 0.9,
            seed: 0,
        }
    }
}

impl LinearProbe {
    /// Train on (`train`, `labels`) and return row-major class scores for `test`.
    pub fn fit_predict(
        &self,
        train: &Tensor,
        labels: &[u32],
        test: &Tensor,
        num_classes: usize,
    ) -> Result<Vec<f32>> {
        let (n, d) = train.dims2()?;
        ensure!(
            labels.len() == n && n > 0,
            "linear probe: {n} features, {} labels",
            labels.len()
        );
        let dev = train.device().clone();
        let train = train.to_dtype(DType::F32)?.detach();
        let mean = train.mean_keepdim(0)?;
        let std = (train.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
        let standardize = |x: &Tensor| -> Result<Tensor> {
            Ok(x.to_dtype(DType::F32)?
                .broadcast_sub(&mean)?
                .broadcast_div(&std)?)
        };
        let train = standardize(&train)?;
        let w = candle_core::Var::zeros((d, num_classes), DType::F32, &dev)?;
        let b = candle_core::Var::zeros(num_classes, DType::F32, &dev)?;
        let mut vel = [w.zeros_like()?, b.zeros_like()?];
        let labels_t = Tensor::new(labels, &dev)?;
        let steps_per_epoch = n.div_ceil(self.batch_size.max(1));
        let total = (self.epochs * steps_per_epoch).max(1);
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut step = 0;
        for epoch in 0..self.epochs {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            order.shuffle(&mut rng);
            for ids in order.chunks(self.batch_size.max(1)) {
                let ids = Tensor::new(ids, &dev)?;
                let x = train.index_select(&ids, 0)?;
                let y = labels_t.index_select(&ids, 0)?;
                let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                let grads = loss.backward()?;
                let lr = self.lr
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
                for (var, v) in [&w, &b].into_iter().zip(vel.iter_mut()) {
                    let g = grads
                        .get(var.as_tensor())
                        .context("linear probe: missing gradient")?;
                    *v = ((&*v * self.momentum)? + g)?;
                    var.set(&(var.as_tensor() - (&*v * lr)?)?)?;
                }
                step += 1;
            }
        }
        let logits = standardize(test)?
            .matmul(&w.as_detached_tensor())?
            .broadcast_add(&b.as_detached_tensor())?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::ClassScores;
    use candle_core::Device;
    use rand::Rng;

    #[test]
    fn linear_probe_separates_separable_features() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (n, d, c) = (60, 5, 3);
        let labels: Vec<u32> = (0..n).map(|i| (i % c) as u32).collect();
        let feats: Vec<f32> = (0..n * d)
            .map(|j| {
                let (i, k) = (j / d, j % d);
                (if k == labels[i] as usize { 3.0 } else { 0.0 }) + rng.gen::<f32>()
            })
            .collect();
        let x = Tensor::from_vec(feats, (n, d), &Device::Cpu).unwrap();
        let probe = LinearProbe {
            epochs: 20,
            batch_size: 16,
            ..Default::default()
        };
        let scores = probe.fit_predict(&x, &labels, &x, c).unwrap();
        assert_eq!(
            ClassScores::new(&scores, &labels, c)
                .unwrap()
                .topk_accuracy(1),
            1.0
        );
        assert_eq!(scores, probe.fit_predict(&x, &labels, &x, c).unwrap());
    }
}
