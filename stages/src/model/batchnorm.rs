//! BatchNorm with trainable γ/β and running statistics kept outside autograd.

use std::sync::Mutex;

use candle_core::{Result, Tensor, Var};

use super::params::{join, lock, use_var, Init, Slot, Visit};
use crate::kernels;

/// Batch normalization over axis 1 of (N,C) or (N,C,H,W) inputs, optionally fused with ReLU.
///
/// Training mode normalizes with the batch statistics and folds them into the running statistics
/// TF-style: `running = m·running + (1−m)·batch` with the biased batch variance (as Keras does).
/// Eval mode normalizes with the running statistics. The running statistics are plain tensors
/// behind a mutex so `forward(&self)` can update them; optimizers never see them.
pub struct BatchNorm {
    pub gamma: Var,
    /// `None` for the projection head's last BN (the reference's `center=False`).
    pub beta: Option<Var>,
    pub running_mean: Mutex<Tensor>,
    pub running_var: Mutex<Tensor>,
    pub momentum: f64,
    pub eps: f64,
}

/// How a [`BatchNorm`] is created.
#[derive(Debug, Clone, Copy)]
pub struct BnOpts {
    /// γ starts at 0 (the last BN of each residual block) instead of 1.
    pub zero_gamma: bool,
    pub with_beta: bool,
    pub momentum: f64,
    pub eps: f64,
}

impl BatchNorm {
    pub fn new(init: &Init, channels: usize, o: BnOpts) -> Result<Self> {
        Ok(BatchNorm {
            gamma: init.constant(channels, if o.zero_gamma { 0.0 } else { 1.0 })?,
            beta: if o.with_beta {
                Some(init.constant(channels, 0.0)?)
            } else {
                None
            },
            running_mean: init.stat(channels, 0.0)?,
            running_var: init.stat(channels, 1.0)?,
            momentum: o.momentum,
            eps: o.eps,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        self.forward_with(x, None, train, relu)
    }

    /// `relu(bn(x) + residual)` in one kernel pass: the end of a residual block. Fusing saves
    /// two full-size activations and their backward passes per block.
    pub fn forward_add_relu(&self, x: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, Some(residual), train, true)
    }

    fn forward_with(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        let gamma = use_var(&self.gamma, train);
        let beta = self.beta.as_ref().map(|b| use_var(b, train));
        let beta = beta.as_ref();
        if train {
            let (y, mean, var) = match residual {
                Some(r) => kernels::batch_norm_add_relu_train(x, r, &gamma, beta, self.eps)?,
                None => kernels::batch_norm_train(x, &gamma, beta, self.eps, relu)?,
            };
            let m = self.momentum;
            for (slot, batch) in [(&self.running_mean, mean), (&self.running_var, var)] {
                let mut r = lock(slot);
                *r = ((&*r * m)? + (batch.detach() * (1.0 - m))?)?;
            }
            Ok(y)
        } else {
            let mean = lock(&self.running_mean).clone();
            let var = lock(&self.running_var).clone();
            match residual {
                Some(r) => {
                    kernels::batch_norm_add_relu_eval(x, r, &gamma, beta, &mean, &var, self.eps)
                }
                None => kernels::batch_norm_eval(x, &gamma, beta, &mean, &var, self.eps, relu),
            }
        }
    }
}

impl Visit for BatchNorm {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>)) {
        f(join(prefix, "weight"), Slot::Param(&self.gamma, true));
        if let Some(b) = &self.beta {
            f(join(prefix, "bias"), Slot::Param(b, true));
        }
        f(join(prefix, "running_mean"), Slot::Stat(&self.running_mean));
        f(join(prefix, "running_var"), Slot::Stat(&self.running_var));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn bn(d: &Device) -> BatchNorm {
        let o = BnOpts {
            zero_gamma: false,
            with_beta: true,
            momentum: 0.9,
            eps: 1e-5,
        };
        BatchNorm::new(&Init::new(0, d), 3, o).unwrap()
    }

    #[test]
    fn train_updates_running_stats_tf_style() {
        let d = Device::Cpu;
        let b = bn(&d);
        // Channel c holds values {c, c+2}: mean c+1, biased variance 1.
        let x = Tensor::new(&[[0f32, 1., 2.], [2., 3., 4.]], &d).unwrap();
        let y = b.forward(&x, true, false).unwrap();
        let mean = b.running_mean.lock().unwrap().to_vec1::<f32>().unwrap();
        let var = b.running_var.lock().unwrap().to_vec1::<f32>().unwrap();
        for c in 0..3 {
            assert!((mean[c] - 0.1 * (c as f32 + 1.0)).abs() < 1e-6);
            assert!((var[c] - 1.0).abs() < 1e-6); // 0.9·1 + 0.1·1
        }
        let y = y.to_vec2::<f32>().unwrap();
        assert!((y[0][0] + 1.0).abs() < 1e-4 && (y[1][0] - 1.0).abs() < 1e-4);
        // Eval mode uses the running stats and leaves them alone.
        let e = b
            .forward(&x, false, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!((e[0][0] - (0.0 - 0.1) / (1.0f32 + 1e-5).sqrt()).abs() < 1e-5);
        assert_eq!(
            b.running_mean.lock().unwrap().to_vec1::<f32>().unwrap(),
            mean
        );
    }

    #[test]
    fn eval_forward_records_no_graph() {
        let d = Device::Cpu;
        let b = bn(&d);
        let x = Tensor::ones((2, 3), DType::F32, &d).unwrap();
        let y = b.forward(&x, false, true).unwrap().sum_all().unwrap();
        let grads = y.backward().unwrap();
        assert!(grads.get(b.gamma.as_tensor()).is_none());
        let y = b.forward(&x, true, true).unwrap().sum_all().unwrap();
        assert!(y.backward().unwrap().get(b.gamma.as_tensor()).is_some());
    }
}
