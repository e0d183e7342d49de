//! semiflow-kernels: conv2d and BatchNorm for every model semiflow trains, as candle custom ops.
//!
//! The public functions here are THE entry points models call. On CPU with f32 tensors they
//! dispatch to fast custom ops (direct AVX2 convolutions for narrow layers, im2col/col2im +
//! multithreaded GEMM for the rest, fused BatchNorm) wired into candle's autograd; on other
//! devices (CUDA) or dtypes they fall back to candle's own ops ([`reference`]). Layout at this API
//! is candle's NCHW.
//!
//! This crate knows nothing of SimCLR, pipelines or caches; `semiflow-stages` re-exports it as
//! `semiflow_stages::kernels`. Its unit tests (`src/tests.rs`) check every custom op against
//! [`reference`] for values and gradients, and the direct kernels against the GEMM route bit for
//! bit; `cargo bench -p semiflow-kernels --bench speed` times them (`benches/speed.rs`).
//!
//! Any change here that alters results (even in the last bits) changes what every model in
//! `semiflow-stages` computes: bump `NUMERICS_VERSION` (`stages/src/numerics.rs`) with it, or
//! stale cache entries would be reused. `tests/numerics_threads.rs` (workspace root) pins whole
//! pipelines' output hashes and fails if the sums move.

mod batchnorm;
mod conv;
mod direct;
mod direct_dx_s2;
mod gemm;
mod im2col;
mod scratch;
mod simd;
mod storage;
#[cfg(test)]
mod tests;

use candle_core::{DType, Result, Tensor};

/// Whether the fast CPU kernels handle these tensors.
fn fast_path(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// 2-D convolution, NCHW input `x` (N,Cin,H,W), weight `w` (Cout, Cin/groups, KH, KW), no bias.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    if fast_path(&[x, w]) {
        conv::conv2d(x, w, stride, padding, groups)
    } else {
        reference::conv2d(x, w, stride, padding, groups)
    }
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
    if fast_path(&[x, gamma]) && beta.is_none_or(|b| fast_path(&[b])) {
        batchnorm::train(x, gamma, beta, eps, relu)
    } else {
        reference::batch_norm_train(x, gamma, beta, eps, relu)
    }
}

/// Training-mode `relu(batch_norm(x) + residual)`: the end of a residual block in one pass
/// (forward and backward). `residual` has `x`'s shape. Returns `(y, batch_mean, batch_var)` as
/// [`batch_norm_train`] does.
pub fn batch_norm_add_relu_train(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    if fast_path(&[x, residual, gamma]) && beta.is_none_or(|b| fast_path(&[b])) {
        batchnorm::train_add_relu(x, residual, gamma, beta, eps)
    } else {
        reference::batch_norm_add_relu_train(x, residual, gamma, beta, eps)
    }
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
    let mut all = vec![x, gamma, running_mean, running_var];
    all.extend(beta);
    if eval_fast_path(&all) {
        batchnorm::eval(x, None, gamma, beta, running_mean, running_var, eps, relu)
    } else {
        reference::batch_norm_eval(x, gamma, beta, running_mean, running_var, eps, relu)
    }
}

/// Eval-mode `relu(batch_norm(x) + residual)` with running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_add_relu_eval(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mut all = vec![x, residual, gamma, running_mean, running_var];
    all.extend(beta);
    if eval_fast_path(&all) {
        batchnorm::eval(
            x,
            Some(residual),
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
            true,
        )
    } else {
        reference::batch_norm_add_relu_eval(
            x,
            residual,
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
        )
    }
}

/// The eval kernel is forward-only: anything that needs gradients goes through candle's ops.
fn eval_fast_path(ts: &[&Tensor]) -> bool {
    fast_path(ts) && ts.iter().all(|t| !t.track_op())
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

    pub fn batch_norm_add_relu_train(
        x: &Tensor,
        residual: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (y, mean, var) = batch_norm_train(x, gamma, beta, eps, false)?;
        Ok(((y + residual)?.relu()?, mean, var))
    }

    pub fn batch_norm_add_relu_eval(
        x: &Tensor,
        residual: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let y = batch_norm_eval(x, gamma, beta, running_mean, running_var, eps, false)?;
        (y + residual)?.relu()
    }
}
