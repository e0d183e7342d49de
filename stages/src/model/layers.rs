//! Bias-free convolution and linear layers (the only weight layers a ResNet + head needs).

use candle_core::{Result, Tensor, Var};

use super::params::{join, use_var, Init, Slot, Visit};
use crate::kernels;

/// A bias-free 2-D convolution with symmetric "same"-style padding (k/2), computed by
/// [`kernels::conv2d`]. For odd kernels this equals the reference's fixed padding at any stride.
pub struct Conv2d {
    pub weight: Var,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// He (Kaiming) normal init, fan_out mode: std = sqrt(2 / (cout·k·k)).
    pub fn new(
        init: &Init,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> Result<Self> {
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        Ok(Conv2d {
            weight: init.normal(&join(name, "weight"), (cout, cin, k, k), std)?,
            stride,
            padding: k / 2,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        kernels::conv2d(
            x,
            &use_var(&self.weight, train),
            self.stride,
            self.padding,
            1,
        )
    }
}

impl Visit for Conv2d {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>)) {
        f(join(prefix, "weight"), Slot::Param(&self.weight, false));
    }
}

/// A fully connected layer, weight (out, in), optional bias.
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    /// Normal(0, std²) weights, no bias (projection-head layers; the reference uses std 0.01).
    pub fn normal(init: &Init, name: &str, din: usize, dout: usize, std: f64) -> Result<Self> {
        Ok(Linear {
            weight: init.normal(&join(name, "weight"), (dout, din), std)?,
            bias: None,
        })
    }

    /// All-zero weight and bias (the classifier: its first logits are exactly zero).
    pub fn zeros_with_bias(init: &Init, din: usize, dout: usize) -> Result<Self> {
        Ok(Linear {
            weight: init.constant((dout, din), 0.0)?,
            bias: Some(init.constant(dout, 0.0)?),
        })
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x.matmul(&use_var(&self.weight, train).t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&use_var(b, train)),
            None => Ok(y),
        }
    }
}

impl Visit for Linear {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>)) {
        f(join(prefix, "weight"), Slot::Param(&self.weight, false));
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), Slot::Param(b, true));
        }
    }
}
