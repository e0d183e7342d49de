//! BatchNorm kernels: a training-mode custom op with the closed-form backward, an optional fused
//! ReLU and an optional fused residual add, plus an eval-mode per-channel scale/shift.
//!
//! Tensors are contiguous (N,C) or (N,C,H,W); a channel's elements are N runs of H·W contiguous
//! floats. Work is split across images (see `per_run`). Per-channel sums accumulate in f32 lanes within a run and
//! in f64 across runs, after shifting by the channel's first element, so the variance stays
//! accurate for large batches and offset data.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::simd::multiversion;
use super::storage::{with_contiguous_f32, SendPtr};

/// (N, C, H·W) of a contiguous (N,C) or (N,C,H,W) tensor.
pub(crate) fn channel_dims(dims: &[usize]) -> Result<(usize, usize, usize)> {
    match *dims {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => candle_core::bail!("batch norm expects (N,C) or (N,C,H,W), got {dims:?}"),
    }
}

/// Batch statistics from a training forward, kept by the op for its backward pass.
#[derive(Debug)]
pub(crate) struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased variance, as reported to the caller for the running-statistics update.
    pub var: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// Sum of `xs - shift` and sum of its squares, with 8 independent f32 lanes (see
/// [`shifted_lanes`]) and the tail and the lanes' total in f64.
fn shifted_sums(xs: &[f32], shift: f32) -> (f64, f64) {
    let body = xs.len() / 8 * 8;
    let (s, q) = shifted_lanes(&xs[..body], shift);
    let (mut s1, mut q1) = (0f64, 0f64);
    for &v in &xs[body..] {
        let d = (v - shift) as f64;
        s1 += d;
        q1 += d * d;
    }
    (s1 + lanes_total(&s), q1 + lanes_total(&q))
}

fn lanes_total(l: &[f32; 8]) -> f64 {
    l.iter().map(|&v| v as f64).sum()
}

/// Lane `l` of the result sums `xs[8i + l] - shift` (and its square) over `i` in order; `xs`
/// holds whole vectors. The compiler left the portable loop scalar (one insert per lane), so
/// AVX2 CPUs run the same sums with explicit vectors: identical bits, ~4× fewer instructions.
fn shifted_lanes(xs: &[f32], shift: f32) -> ([f32; 8], [f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2.
        return unsafe { shifted_lanes_avx2(xs, shift) };
    }
    shifted_lanes_portable(xs, shift)
}

fn shifted_lanes_portable(xs: &[f32], shift: f32) -> ([f32; 8], [f32; 8]) {
    let (mut s, mut q) = ([0f32; 8], [0f32; 8]);
    for ch in xs.chunks_exact(8) {
        for l in 0..8 {
            let d = ch[l] - shift;
            s[l] += d;
            q[l] += d * d;
        }
    }
    (s, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn shifted_lanes_avx2(xs: &[f32], shift: f32) -> ([f32; 8], [f32; 8]) {
    use std::arch::x86_64::*;
    let (mut s, mut q) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let sh = _mm256_set1_ps(shift);
    for ch in xs.chunks_exact(8) {
        let d = _mm256_sub_ps(_mm256_loadu_ps(ch.as_ptr()), sh);
        s = _mm256_add_ps(s, d);
        q = _mm256_add_ps(q, _mm256_mul_ps(d, d));
    }
    (to_lanes(s), to_lanes(q))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_lanes(v: std::arch::x86_64::__m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    std::arch::x86_64::_mm256_storeu_ps(out.as_mut_ptr(), v);
    out
}

multiversion! {
/// `out = xs·a + b (+ residual)`, then ReLU if `relu`.
fn affine(out: &mut [f32], xs: &[f32], residual: Option<&[f32]>, a: f32, b: f32, relu: bool) {
    match (residual, relu) {
        (None, false) => out.iter_mut().zip(xs).for_each(|(o, &v)| *o = v * a + b),
        (None, true) => out
            .iter_mut()
            .zip(xs)
            .for_each(|(o, &v)| *o = (v * a + b).max(0.0)),
        (Some(r), false) => out
            .iter_mut()
            .zip(xs)
            .zip(r)
            .for_each(|((o, &v), &rv)| *o = v * a + b + rv),
        (Some(r), true) => out
            .iter_mut()
            .zip(xs)
            .zip(r)
            .for_each(|((o, &v), &rv)| *o = (v * a + b + rv).max(0.0)),
    }
}
}

multiversion! {
/// BatchNorm's input gradient over one run: `out = k1·g − k2 − k3·(x − mean)`, g being `dy`
/// masked by `y > 0` if `relu`; the masked g also goes to `dres` (the fused residual's gradient).
#[allow(clippy::too_many_arguments)]
fn input_grad(
    out: &mut [f32],
    dres: Option<&mut [f32]>,
    dys: &[f32],
    ys: &[f32],
    xs: &[f32],
    k: [f32; 4],
    relu: bool,
) {
    let [k1, k2, k3, mean] = k;
    let masked = |v: f32, yv: f32| if relu && yv <= 0.0 { 0.0 } else { v };
    let n = out.len();
    let (dys, ys, xs) = (&dys[..n], &ys[..n], &xs[..n]);
    for i in 0..n {
        let g = masked(dys[i], ys[i]);
        out[i] = k1 * g - k2 - k3 * (xs[i] - mean);
    }
    if let Some(r) = dres {
        let r = &mut r[..n];
        for i in 0..n {
            r[i] = masked(dys[i], ys[i]);
        }
    }
}
}

/// Per-(image, channel) partial results of `f(image, channel, run offset)`, computed with the work
/// split across images: each worker streams through whole images (C·H·W contiguous floats)
/// instead of hopping between N runs of one channel, which at 4×4 or 8×8 planes are one or four
/// cache lines each. Returned image-major: entry `b*c + ch`.
fn per_run<T: Send + Default + Clone>(
    (n, c, hw): (usize, usize, usize),
    f: impl Fn(usize, usize) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); n * c];
    out.par_chunks_mut(c.max(1))
        .enumerate()
        .with_min_len(images_per_task(c * hw))
        .for_each(|(b, row)| {
            for (ch, r) in row.iter_mut().enumerate() {
                *r = f(ch, (b * c + ch) * hw);
            }
        });
    out
}

/// Images per rayon task so that a task covers at least ~16k floats (rayon's per-task cost is
/// then negligible).
fn images_per_task(image_floats: usize) -> usize {
    (16_384 / image_floats.max(1)).max(1)
}

/// Per-channel sums of per-run f64 pairs, adding runs in image order: the order the statistics
/// have always been accumulated in, so results do not depend on how the runs were scheduled.
fn channel_totals(parts: &[(f64, f64)], n: usize, c: usize) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ch| {
            (0..n).fold((0f64, 0f64), |(a, b), img| {
                let (da, db) = parts[img * c + ch];
                (a + da, b + db)
            })
        })
        .collect()
}

/// Training forward over contiguous data. `residual` (same shape as `x`) is added before the
/// optional ReLU. Returns y and the batch statistics.
#[allow(clippy::too_many_arguments)]
fn train_forward(
    x: &[f32],
    residual: Option<&[f32]>,
    (n, c, hw): (usize, usize, usize),
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    relu: bool,
) -> (Vec<f32>, BatchStats) {
    let m = (n * hw) as f64;
    // Sums are taken after shifting by the channel's first element (see the module comment).
    let shift: Vec<f32> = (0..c).map(|ch| x[ch * hw]).collect();
    let parts = per_run((n, c, hw), |ch, o| shifted_sums(&x[o..o + hw], shift[ch]));
    let mut stats = BatchStats {
        mean: Vec::with_capacity(c),
        var: Vec::with_capacity(c),
        invstd: Vec::with_capacity(c),
    };
    let mut scale_shift = Vec::with_capacity(c);
    for (ch, (s, q)) in channel_totals(&parts, n, c).into_iter().enumerate() {
        let mean_d = s / m;
        let var = (q / m - mean_d * mean_d).max(0.0);
        let mean = (shift[ch] as f64 + mean_d) as f32;
        let invstd = (1.0 / (var + eps).sqrt()) as f32;
        let a = gamma[ch] * invstd;
        scale_shift.push((a, beta[ch] - mean * a));
        stats.mean.push(mean);
        stats.var.push(var as f32);
        stats.invstd.push(invstd);
    }
    let mut y = super::storage::uninit_vec(x.len());
    y.par_chunks_mut((c * hw).max(1))
        .enumerate()
        .with_min_len(images_per_task(c * hw))
        .for_each(|(b, yb)| {
            for (ch, &(a, sh)) in scale_shift.iter().enumerate() {
                let o = (b * c + ch) * hw;
                let rs = residual.map(|r| &r[o..o + hw]);
                affine(
                    &mut yb[ch * hw..(ch + 1) * hw],
                    &x[o..o + hw],
                    rs,
                    a,
                    sh,
                    relu,
                );
            }
        });
    (y, stats)
}

/// Σg and Σg·(x − mean) over one run, g being the output gradient masked by `y > 0` if `relu`;
/// 8 independent f32 lanes (see [`grad_lanes`]), the tail and the lanes' total in f64.
fn grad_sums(dy: &[f32], y: &[f32], x: &[f32], mean: f32, relu: bool) -> (f64, f64) {
    let n = dy.len();
    let (y, x) = (&y[..n], &x[..n]);
    let body = n / 8 * 8;
    let (a, b) = grad_lanes(&dy[..body], &y[..body], &x[..body], mean, relu);
    let (mut sa, mut sb) = (0f64, 0f64);
    for i in body..n {
        let g = mask(dy[i], y[i], relu) as f64;
        sa += g;
        sb += g * (x[i] - mean) as f64;
    }
    (sa + lanes_total(&a), sb + lanes_total(&b))
}

#[inline(always)]
fn mask(d: f32, y: f32, relu: bool) -> f32 {
    if relu && y <= 0.0 {
        0.0
    } else {
        d
    }
}

/// Lane `l` sums g and g·(x − mean) over elements `8i + l` in order (see [`shifted_lanes`] for
/// why AVX2 gets explicit vectors).
fn grad_lanes(dy: &[f32], y: &[f32], x: &[f32], mean: f32, relu: bool) -> ([f32; 8], [f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2.
        return unsafe { grad_lanes_avx2(dy, y, x, mean, relu) };
    }
    grad_lanes_portable(dy, y, x, mean, relu)
}

fn grad_lanes_portable(
    dy: &[f32],
    y: &[f32],
    x: &[f32],
    mean: f32,
    relu: bool,
) -> ([f32; 8], [f32; 8]) {
    let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
    let (dc, yc, xc) = (dy.chunks_exact(8), y.chunks_exact(8), x.chunks_exact(8));
    for ((d, yv), xv) in dc.zip(yc).zip(xc) {
        for l in 0..8 {
            let g = mask(d[l], yv[l], relu);
            a[l] += g;
            b[l] += g * (xv[l] - mean);
        }
    }
    (a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn grad_lanes_avx2(
    dy: &[f32],
    y: &[f32],
    x: &[f32],
    mean: f32,
    relu: bool,
) -> ([f32; 8], [f32; 8]) {
    use std::arch::x86_64::*;
    let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (m, zero) = (_mm256_set1_ps(mean), _mm256_setzero_ps());
    let (dc, yc, xc) = (dy.chunks_exact(8), y.chunks_exact(8), x.chunks_exact(8));
    for ((d, yv), xv) in dc.zip(yc).zip(xc) {
        let mut g = _mm256_loadu_ps(d.as_ptr());
        if relu {
            // y ≤ 0 → +0.0, as `mask`; a NaN y compares false and keeps d, as `mask`.
            let off = _mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_loadu_ps(yv.as_ptr()), zero);
            g = _mm256_andnot_ps(off, g);
        }
        a = _mm256_add_ps(a, g);
        let xm = _mm256_sub_ps(_mm256_loadu_ps(xv.as_ptr()), m);
        b = _mm256_add_ps(b, _mm256_mul_ps(g, xm));
    }
    (to_lanes(a), to_lanes(b))
}

/// Gradients of a training forward.
struct TrainGrads {
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
    /// Gradient w.r.t. the fused residual: the (ReLU-masked) output gradient.
    dresidual: Option<Vec<f32>>,
}

/// Closed-form backward. With `relu`, the output gradient is masked by `y > 0`.
#[allow(clippy::too_many_arguments)]
fn train_backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    (n, c, hw): (usize, usize, usize),
    gamma: &[f32],
    stats: &BatchStats,
    relu: bool,
    want_dresidual: bool,
) -> TrainGrads {
    let m = (n * hw) as f32;
    // Pass 1: Σg and Σg·(x−mean) per channel, g being the masked output gradient.
    let parts = per_run((n, c, hw), |ch, o| {
        let r = o..o + hw;
        grad_sums(&dy[r.clone()], &y[r.clone()], &x[r], stats.mean[ch], relu)
    });
    let (mut dgamma, mut dbeta, mut k) = (Vec::with_capacity(c), Vec::with_capacity(c), vec![]);
    for (ch, (sg, sgx)) in channel_totals(&parts, n, c).into_iter().enumerate() {
        let invstd = stats.invstd[ch];
        let db = sg as f32;
        let dg = (sgx as f32) * invstd;
        // Pass 2: dx = γ·σ⁻¹·(g − Σg/M − x̂·Σ(g·x̂)/M).
        let k1 = gamma[ch] * invstd;
        k.push([k1, k1 * db / m, k1 * invstd * dg / m, stats.mean[ch]]);
        dgamma.push(dg);
        dbeta.push(db);
    }
    let mut dx = super::storage::uninit_vec(x.len());
    let mut dres = want_dresidual.then(|| super::storage::uninit_vec(x.len()));
    let drp = dres.as_mut().map(|v| SendPtr(v.as_mut_ptr()));
    let image = (c * hw).max(1);
    dx.par_chunks_mut(image)
        .enumerate()
        .with_min_len(images_per_task(c * hw))
        .for_each(|(b, dxb)| {
            for (ch, &kc) in k.iter().enumerate() {
                let o = (b * c + ch) * hw;
                // SAFETY: image `b`'s elements are written by this task only.
                let rout =
                    drp.map(|p| unsafe { std::slice::from_raw_parts_mut(p.get().add(o), hw) });
                let (dys, ys, xs) = (&dy[o..o + hw], &y[o..o + hw], &x[o..o + hw]);
                input_grad(
                    &mut dxb[ch * hw..(ch + 1) * hw],
                    rout,
                    dys,
                    ys,
                    xs,
                    kc,
                    relu,
                );
            }
        });
    TrainGrads {
        dx,
        dgamma,
        dbeta,
        dresidual: dres,
    }
}

/// Training BatchNorm (+ReLU) as a custom op over (x, gamma, beta).
struct BnTrainOp {
    eps: f64,
    relu: bool,
    stats: Arc<OnceLock<BatchStats>>,
}

impl CustomOp3 for BnTrainOp {
    fn name(&self) -> &'static str {
        "semiflow-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1)?;
        let dims = channel_dims(l1.dims())?;
        let (y, stats) = train_forward(
            x,
            None,
            dims,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
            self.eps,
            self.relu,
        );
        self.stats.set(stats).map_err(|_| {
            candle_core::Error::Msg("semiflow-batch-norm-train: op applied twice".into())
        })?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = backward_common(x, gamma, res, grad, &self.stats, self.relu, false)?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(grads.dx, x.dims(), dev)?),
            Some(Tensor::from_vec(grads.dgamma, gamma.dims(), dev)?),
            Some(Tensor::from_vec(grads.dbeta, beta.dims(), dev)?),
        ))
    }
}

/// Training `relu(bn(x) + residual)` as a custom op over (x, residual, [gamma; beta]) — the
/// (2, C) stack keeps the op ternary; candle routes its gradient back to gamma and beta.
struct BnAddReluTrainOp {
    eps: f64,
    stats: Arc<OnceLock<BatchStats>>,
}

impl CustomOp3 for BnAddReluTrainOp {
    fn name(&self) -> &'static str {
        "semiflow-batch-norm-add-relu-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1)?;
        let r = contiguous(s2, l2)?;
        let gb = contiguous(s3, l3)?;
        let dims = channel_dims(l1.dims())?;
        let (y, stats) = train_forward(
            x,
            Some(r),
            dims,
            &gb[..dims.1],
            &gb[dims.1..],
            self.eps,
            true,
        );
        self.stats.set(stats).map_err(|_| {
            candle_core::Error::Msg("semiflow-batch-norm-add-relu-train: op applied twice".into())
        })?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        gb: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(1)?;
        let gamma = gb.narrow(0, 0, 1)?.reshape(c)?;
        let grads = backward_common(x, &gamma, res, grad, &self.stats, true, true)?;
        let dev = x.device();
        let mut dgb = grads.dgamma;
        dgb.extend_from_slice(&grads.dbeta);
        let dres = grads.dresidual.expect("requested");
        Ok((
            Some(Tensor::from_vec(grads.dx, x.dims(), dev)?),
            Some(Tensor::from_vec(dres, residual.dims(), dev)?),
            Some(Tensor::from_vec(dgb, gb.dims(), dev)?),
        ))
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("semiflow batch norm: expected contiguous inputs"),
    }
}

fn backward_common(
    x: &Tensor,
    gamma: &Tensor,
    res: &Tensor,
    grad: &Tensor,
    stats: &OnceLock<BatchStats>,
    relu: bool,
    want_dresidual: bool,
) -> Result<TrainGrads> {
    let stats = stats.get().ok_or_else(|| {
        candle_core::Error::Msg("semiflow batch norm: backward before forward".into())
    })?;
    let dims = channel_dims(x.dims())?;
    let grad = grad.contiguous()?;
    let gamma = gamma.contiguous()?;
    with_contiguous_f32(x, |xs| {
        with_contiguous_f32(res, |ys| {
            with_contiguous_f32(&grad, |gs| {
                with_contiguous_f32(&gamma, |gm| {
                    Ok(train_backward(
                        xs,
                        ys,
                        gs,
                        dims,
                        gm,
                        stats,
                        relu,
                        want_dresidual,
                    ))
                })
            })
        })
    })
}

/// Detached (C,) tensors of the batch mean and biased variance.
fn stats_tensors(stats: &OnceLock<BatchStats>, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = stats
        .get()
        .ok_or_else(|| candle_core::Error::Msg("semiflow batch norm: statistics missing".into()))?;
    Ok((
        Tensor::from_slice(&s.mean, s.mean.len(), x.device())?,
        Tensor::from_slice(&s.var, s.var.len(), x.device())?,
    ))
}

/// Training BatchNorm (+ReLU) through the custom op (CPU, f32).
pub(crate) fn train(
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, c, _) = channel_dims(x.dims())?;
    check_vec("gamma", gamma, c)?;
    let beta = match beta {
        Some(b) => {
            check_vec("beta", b, c)?;
            b.clone()
        }
        // A zero shift: its gradient is computed and dropped, the others are unaffected.
        None => Tensor::zeros(c, gamma.dtype(), gamma.device())?,
    };
    let stats = Arc::new(OnceLock::new());
    let y = x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BnTrainOp {
            eps,
            relu,
            stats: stats.clone(),
        },
    )?;
    let (mean, var) = stats_tensors(&stats, x)?;
    Ok((y, mean, var))
}

/// Training `relu(bn(x) + residual)` through the custom op (CPU, f32).
pub(crate) fn train_add_relu(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, c, _) = channel_dims(x.dims())?;
    if residual.dims() != x.dims() {
        candle_core::bail!(
            "batch norm residual shape {:?} differs from input {:?}",
            residual.dims(),
            x.dims()
        );
    }
    check_vec("gamma", gamma, c)?;
    let beta = match beta {
        Some(b) => {
            check_vec("beta", b, c)?;
            b.clone()
        }
        None => Tensor::zeros(c, gamma.dtype(), gamma.device())?,
    };
    let gb = Tensor::stack(&[gamma, &beta], 0)?;
    let stats = Arc::new(OnceLock::new());
    let y = x.contiguous()?.apply_op3(
        &residual.contiguous()?,
        &gb,
        BnAddReluTrainOp {
            eps,
            stats: stats.clone(),
        },
    )?;
    let (mean, var) = stats_tensors(&stats, x)?;
    Ok((y, mean, var))
}

fn check_vec(name: &str, t: &Tensor, c: usize) -> Result<()> {
    if t.dims() != [c] {
        candle_core::bail!(
            "batch norm {name} must have shape ({c},), got {:?}",
            t.dims()
        );
    }
    Ok(())
}

/// Eval BatchNorm: `y = x·scale + shift [+ residual]`, then ReLU if `relu`, with per-channel
/// scale/shift folded from the running statistics. Forward only: callers use it when nothing
/// needs gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn eval(
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let (n, c, hw) = channel_dims(x.dims())?;
    let gamma = gamma.to_vec1::<f32>()?;
    let rm = running_mean.to_vec1::<f32>()?;
    let rv = running_var.to_vec1::<f32>()?;
    let beta = beta.map(|b| b.to_vec1::<f32>()).transpose()?;
    for (name, len) in [
        ("gamma", gamma.len()),
        ("running_mean", rm.len()),
        ("running_var", rv.len()),
    ] {
        if len != c {
            candle_core::bail!("batch norm {name} has {len} entries, input has {c} channels");
        }
    }
    let scale: Vec<f32> = (0..c)
        .map(|i| gamma[i] / ((rv[i] as f64 + eps).sqrt() as f32))
        .collect();
    let shift: Vec<f32> = (0..c)
        .map(|i| beta.as_ref().map_or(0.0, |b| b[i]) - rm[i] * scale[i])
        .collect();
    let x = x.contiguous()?;
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    let mut y = super::storage::uninit_vec(n * c * hw);
    with_contiguous_f32(&x, |xs| {
        let mut apply = |r: Option<&[f32]>| {
            y.par_chunks_mut(hw.max(1))
                .enumerate()
                .for_each(|(plane, out)| {
                    let ch = plane % c;
                    let (a, b) = (scale[ch], shift[ch]);
                    let o = plane * hw;
                    affine(out, &xs[o..o + hw], r.map(|r| &r[o..o + hw]), a, b, relu);
                });
            Ok(())
        };
        match &residual {
            None => apply(None),
            Some(r) => with_contiguous_f32(r, |rs| apply(Some(rs))),
        }
    })?;
    Tensor::from_vec(y, x.dims(), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with both signs, zeros of both signs and a NaN, so the ReLU mask's edge cases run.
    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                match i % 37 {
                    5 => 0.0,
                    11 => -0.0,
                    23 => f32::NAN,
                    _ => (s as f32 / u32::MAX as f32 - 0.5) * 7.0,
                }
            })
            .collect()
    }

    #[test]
    fn vector_lanes_match_the_portable_loops_bit_for_bit() {
        if !super::super::simd::has_avx2() {
            return; // only the portable loops run on this CPU
        }
        for n in [8, 64, 1000, 4096] {
            let (dy, y, x) = (data(n, 1), data(n, 2), data(n, 3));
            let x: Vec<f32> = x
                .iter()
                .map(|v| if v.is_nan() { 1.5 } else { *v })
                .collect();
            let bits = |(a, b): ([f32; 8], [f32; 8])| (a.map(f32::to_bits), b.map(f32::to_bits));
            // SAFETY: has_avx2 checked above.
            let fast = unsafe { shifted_lanes_avx2(&x, 0.25) };
            assert_eq!(bits(fast), bits(shifted_lanes_portable(&x, 0.25)), "n={n}");
            for relu in [false, true] {
                let fast = unsafe { grad_lanes_avx2(&dy, &y, &x, -0.5, relu) };
                let slow = grad_lanes_portable(&dy, &y, &x, -0.5, relu);
                assert_eq!(bits(fast), bits(slow), "n={n} relu={relu}");
            }
        }
    }
}
