//! conv2d as a candle custom op: forward, input gradient and weight gradient are each
//! im2col/col2im plus one f32 GEMM per group over a chunk of images, or, where `direct.rs`
//! applies (narrow layers), the direct kernels that compute the same sums without the column
//! matrix.
//!
//! Parallelism is coarse: the batch is cut into chunks of images, chunks run on rayon's threads,
//! and each chunk's GEMMs run single-threaded. That keeps im2col/col2im parallel too and avoids the
//! per-GEMM thread synchronisation that dominated small layers. Only when there are fewer images
//! than threads do the GEMMs themselves go multithreaded.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::direct;
use super::direct_dx_s2;
use super::gemm::{k_block, matmul, MatMut, MatRef};
use super::im2col::{col2im, im2col, ConvGeom};
use super::scratch::{sized, with_scratch, Scratch};
use super::storage::{uninit_vec, with_f32, PlanarView, SendPtr};

/// Columns (output pixels) a chunk aims for. Small chunks keep the column matrix cache-resident
/// between im2col and GEMM: 256 trained ~15-30% faster than 1024 or 4096 in interleaved runs
/// (small ResNet b256, ResNet-18 b64); 128 was no better than 256.
const TARGET_COLS: usize = 256;
/// Upper bound on one chunk's column matrix, in floats (16 MiB): bounds scratch memory per thread.
const MAX_COL_FLOATS: usize = 4 << 20;

/// The split of a batch that fixes the sums, whatever the thread count: chunk boundaries, and the
/// weight gradient summed per group of consecutive chunks, groups added in order. It is the split
/// two threads made before the numerics were pinned (the committed results come from 2-thread
/// runs), now applied at any thread count; threads only decide what runs at once.
const SPLIT_WORKERS: usize = 2;

/// How a call splits its batch into chunks of images, and how those run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Images per chunk (the last chunk may hold fewer).
    per_chunk: usize,
    chunks: usize,
    /// Weight-gradient groups: `SPLIT_WORKERS` runs of consecutive chunks, or one.
    groups: usize,
    /// Threads available (execution only: no sum depends on it).
    threads: usize,
}

impl Plan {
    fn new(g: &ConvGeom) -> Self {
        let threads = rayon::current_num_threads().max(1);
        let w = SPLIT_WORKERS;
        let p = g.p().max(1);
        let cap_images = (MAX_COL_FLOATS / (g.k_total() * p).max(1)).max(1);
        let mut per_chunk = TARGET_COLS.div_ceil(p).min(cap_images).clamp(1, g.n.max(1));
        let mut chunks = g.n.div_ceil(per_chunk);
        if g.n >= w {
            // A multiple of SPLIT_WORKERS chunks, so the groups are the same size.
            let balanced = chunks.div_ceil(w) * w;
            per_chunk = g.n.div_ceil(balanced);
            chunks = g.n.div_ceil(per_chunk);
        }
        let groups = if chunks >= w { w } else { 1 };
        Self {
            per_chunk,
            chunks,
            groups,
            threads,
        }
    }

    /// (first image, image count) of chunk `c`.
    fn chunk(&self, c: usize, n: usize) -> (usize, usize) {
        let b0 = c * self.per_chunk;
        (b0, self.per_chunk.min(n - b0))
    }

    /// Run independent chunks in parallel (single-threaded GEMMs) rather than one after another.
    fn outer(&self) -> bool {
        self.threads > 1 && self.chunks >= self.threads
    }

    /// Threads each chunk's GEMMs may use when chunks run one after another.
    fn gemm_threads(&self) -> usize {
        if self.outer() {
            1
        } else {
            self.threads
        }
    }
}

/// The custom op; the weight must be contiguous, the input planar (see `PlanarView`).
pub(crate) struct Conv2dOp {
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "semiflow-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad, self.groups)?;
        let xv = PlanarView::new(l1)?;
        let Some((w0, w1)) = l2.contiguous_offsets() else {
            candle_core::bail!("semiflow-conv2d: weight must be contiguous")
        };
        let out = forward(
            &g,
            s1.as_slice::<f32>()?,
            &xv,
            &s2.as_slice::<f32>()?[w0..w1],
        );
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.cout, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeom::new(x.dims(), w.dims(), self.stride, self.pad, self.groups)?;
        let grad = if PlanarView::new(grad.layout()).is_ok() {
            grad.clone()
        } else {
            grad.contiguous()?
        };
        // Frozen weights (a distillation teacher) and inputs that need no gradient (the images)
        // skip their GEMMs; candle calls this whenever either operand tracks.
        let want_dx = x.track_op();
        let want_dw = w.track_op();
        let dx_route = want_dx.then(|| DxRoute::of(&g));
        let (dx, dw) = with_f32(x, |xs, xl| {
            let xv = PlanarView::new(xl)?;
            with_f32(w, |ws, wl| {
                let Some((w0, w1)) = wl.contiguous_offsets() else {
                    candle_core::bail!("semiflow-conv2d: weight must be contiguous")
                };
                let ws = &ws[w0..w1];
                with_f32(&grad, |gs, gl| {
                    let gv = PlanarView::new(gl)?;
                    let (dx, dw) = backward_routes(
                        &g,
                        xs,
                        &xv,
                        ws,
                        gs,
                        &gv,
                        matches!(dx_route, Some(DxRoute::Gemm)),
                        want_dw,
                        true,
                    );
                    let dx = match &dx_route {
                        Some(r @ (DxRoute::AsForward(_) | DxRoute::Strided)) => {
                            Some(r.input_grad(&g, gs, &gv, ws))
                        }
                        _ => dx,
                    };
                    Ok((dx, dw))
                })
            })
        })?;
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.dims(), x.device()))
            .transpose()?;
        let dw = dw
            .map(|v| Tensor::from_vec(v, w.dims(), w.device()))
            .transpose()?;
        Ok((dx, dw))
    }
}

pub(super) fn forward(g: &ConvGeom, x: &[f32], xv: &PlanarView, w: &[f32]) -> Vec<f32> {
    if direct::applies(g) {
        forward_direct(g, x, xv, w)
    } else {
        forward_gemm(g, x, xv, w)
    }
}

/// [`forward`] through the direct 3×3 kernel, one image per task (bit-identical to
/// [`forward_gemm`], see `direct.rs`).
pub(super) fn forward_direct(g: &ConvGeom, x: &[f32], xv: &PlanarView, w: &[f32]) -> Vec<f32> {
    let packed = direct::pack_weights(g, w);
    // gemm's K blocking depends on the GEMM's width, i.e. on the image's chunk.
    let plan = Plan::new(g);
    let kc = |b: usize| {
        let (_, nb) = plan.chunk(b / plan.per_chunk, g.n);
        k_block(g.cout, nb * g.p(), g.k_g())
    };
    let mut out = uninit_vec(g.n * g.cout * g.p());
    out.par_chunks_mut(g.cout * g.p())
        .enumerate()
        .for_each(|(b, o)| {
            with_scratch(|s| {
                let pad = sized(&mut s.cols, direct::padded_len(g));
                direct::conv_image(g, &x[xv.image(b)..], xv.sc, &packed, o, pad, kc(b));
            })
        });
    out
}

/// [`forward`] through im2col + GEMM: any geometry.
pub(super) fn forward_gemm(g: &ConvGeom, x: &[f32], xv: &PlanarView, w: &[f32]) -> Vec<f32> {
    let plan = Plan::new(g);
    let mut out = uninit_vec(g.n * g.cout * g.p());
    let out_ptr = SendPtr(out.as_mut_ptr());
    let run = |c: usize| {
        let (b0, nb) = plan.chunk(c, g.n);
        with_scratch(|s| forward_chunk(g, x, xv, w, out_ptr, b0, nb, plan.gemm_threads(), s));
    };
    if plan.outer() {
        (0..plan.chunks).into_par_iter().for_each(run);
    } else {
        (0..plan.chunks).for_each(run);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn forward_chunk(
    g: &ConvGeom,
    x: &[f32],
    xv: &PlanarView,
    w: &[f32],
    out: SendPtr,
    b0: usize,
    nb: usize,
    threads: usize,
    s: &mut Scratch,
) {
    let (p, cout_g, k_g) = (g.p(), g.cout_g(), g.k_g());
    let out_b0 = unsafe { out.0.add(b0 * g.cout * p) };
    let weights = |grp: usize| MatRef::row_major(w[grp * cout_g * k_g..].as_ptr(), k_g);
    if nb == 1 && g.is_pointwise() {
        // The input planes are the column matrix and the output planes the result: no copies.
        let xb = &x[xv.image(b0)..];
        for grp in 0..g.groups {
            let rhs = MatRef {
                ptr: xb[grp * g.cin_g() * xv.sc..].as_ptr(),
                rs: xv.sc as isize,
                cs: 1,
            };
            let dst = MatMut::row_major(unsafe { out_b0.add(grp * cout_g * p) }, p);
            unsafe { matmul(cout_g, p, k_g, dst, false, weights(grp), rhs, threads) };
        }
        return;
    }
    let ld = nb * p;
    let Scratch { cols, stage, .. } = s;
    let cols = sized(cols, g.k_total() * ld);
    for i in 0..nb {
        im2col(
            g,
            &x[xv.image(b0 + i)..],
            xv.sc,
            g.cin,
            &mut cols[i * p..],
            ld,
        );
    }
    // With one image the GEMM writes the output planes directly; with several, its (Cout, nb·P)
    // result is staged and scattered to the images' planes.
    let (dst_base, dst_ld) = if nb == 1 {
        (out_b0, p)
    } else {
        (sized(stage, g.cout * ld).as_mut_ptr(), ld)
    };
    for grp in 0..g.groups {
        let rhs = MatRef::row_major(cols[grp * k_g * ld..].as_ptr(), ld);
        let dst = MatMut::row_major(unsafe { dst_base.add(grp * cout_g * dst_ld) }, dst_ld);
        unsafe { matmul(cout_g, ld, k_g, dst, false, weights(grp), rhs, threads) };
    }
    if nb > 1 {
        for i in 0..nb {
            for co in 0..g.cout {
                // SAFETY: chunk images are disjoint, so this output plane is ours alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        dst_base.add(co * ld + i * p),
                        out_b0.add((i * g.cout + co) * p),
                        p,
                    )
                };
            }
        }
    }
}

/// The geometry of the input gradient as a forward convolution, where that is the faster route.
///
/// With stride 1, dX is the stride-1 convolution of dY, padded by K−1−pad, with the weights
/// transposed (Cin ↔ Cout within each group) and flipped in both spatial axes. Through the
/// forward kernel the GEMM's inner dimension is Cout·KH·KW and it writes only the Cin·H·W result;
/// the GEMM + col2im route has an inner dimension of only Cout (16 in narrow layers) and writes,
/// then scatters back, a column matrix KH·KW times the input's size. 1×1 convolutions gain
/// nothing (no column matrix either way) and keep the direct route.
fn input_grad_geom(g: &ConvGeom) -> Option<ConvGeom> {
    if g.stride != 1 || g.kh != g.kw || g.kh == 1 || g.pad >= g.kh {
        return None;
    }
    let dg = ConvGeom::new(
        &[g.n, g.cout, g.oh, g.ow],
        &[g.cin, g.cout_g(), g.kh, g.kw],
        1,
        g.kh - 1 - g.pad,
        g.groups,
    )
    .ok()?;
    debug_assert_eq!((dg.oh, dg.ow), (g.h, g.w));
    Some(dg)
}

/// How a convolution's input gradient is computed.
enum DxRoute {
    /// As the forward convolution `dg` of the output gradient (see [`input_grad_geom`]).
    AsForward(ConvGeom),
    /// Stride-2 3×3 through `direct_dx_s2`.
    Strided,
    /// GEMM + col2im in [`backward_routes`].
    Gemm,
}

impl DxRoute {
    fn of(g: &ConvGeom) -> Self {
        if let Some(dg) = input_grad_geom(g) {
            return Self::AsForward(dg);
        }
        if !direct_dx_s2::applies(g) {
            return Self::Gemm;
        }
        // The direct kernel runs each tap's chain over all output channels at once: it matches
        // the GEMM only while the GEMM's K blocks hold all of them, for every chunk size.
        // Only the first and the last chunk can differ in size (an empty batch has neither).
        let plan = Plan::new(g);
        let one_block = [0, plan.chunks.saturating_sub(1)]
            .into_iter()
            .filter(|&c| c < plan.chunks)
            .all(|c| k_block(g.k_g(), plan.chunk(c, g.n).1 * g.p(), g.cout) >= g.cout);
        if one_block {
            Self::Strided
        } else {
            Self::Gemm
        }
    }

    /// The input gradient by the `AsForward` or `Strided` route.
    fn input_grad(&self, g: &ConvGeom, dy: &[f32], dyv: &PlanarView, w: &[f32]) -> Vec<f32> {
        match self {
            Self::AsForward(dg) => forward(dg, dy, dyv, &transpose_flip(g, w)),
            Self::Strided => {
                let packed = direct_dx_s2::pack_weights(g, w);
                let mut dx = uninit_vec(g.n * g.cin * g.h * g.w);
                dx.par_chunks_mut(g.cin * g.h * g.w)
                    .enumerate()
                    .for_each(|(b, d)| {
                        with_scratch(|s| {
                            let pad = sized(&mut s.cols, direct_dx_s2::padded_len(g));
                            let dyb = &dy[dyv.image(b)..];
                            direct_dx_s2::input_grad_image(g, dyb, dyv.sc, &packed, d, pad);
                        })
                    });
                dx
            }
            Self::Gemm => unreachable!("the GEMM route runs in backward_routes"),
        }
    }
}

/// Weights (Cout, Cin/groups, KH, KW) → (Cin, Cout/groups, KH, KW), transposed within each group
/// and flipped spatially: the weights of the input gradient's convolution (see
/// [`input_grad_geom`]).
fn transpose_flip(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (cin_g, cout_g, kk) = (g.cin_g(), g.cout_g(), g.kh * g.kw);
    let mut out = vec![0.0f32; w.len()];
    for grp in 0..g.groups {
        for co in 0..cout_g {
            for ci in 0..cin_g {
                let src = &w[((grp * cout_g + co) * cin_g + ci) * kk..][..kk];
                let dst = &mut out[((grp * cin_g + ci) * cout_g + co) * kk..][..kk];
                // Reversing ky·KW + kx flips both axes at once.
                dst.iter_mut()
                    .zip(src.iter().rev())
                    .for_each(|(d, s)| *d = *s);
            }
        }
    }
    out
}

/// Returns (input gradient if `want_dx`, weight gradient if `want_dw`). `direct_dw` allows the
/// direct weight-gradient kernel where it applies (tests compare both routes).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_routes(
    g: &ConvGeom,
    x: &[f32],
    xv: &PlanarView,
    w: &[f32],
    dy: &[f32],
    dyv: &PlanarView,
    want_dx: bool,
    want_dw: bool,
    direct_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let plan = Plan::new(g);
    let mut dx = want_dx.then(|| uninit_vec(g.n * g.cin * g.h * g.w));
    let dx_ptr = dx.as_mut().map(|v| SendPtr(v.as_mut_ptr()));
    let w_len = w.len();
    // Each group accumulates the weight gradient of a contiguous run of chunks, in chunk order;
    // the groups' sums are added in group order (see SPLIT_WORKERS). Groups run at once when
    // there are threads for them, each chunk's GEMMs sharing the rest.
    let groups = plan.groups;
    let parallel_groups = groups > 1 && plan.threads > 1;
    let gemm_threads = if parallel_groups {
        (plan.threads / groups).max(1)
    } else {
        plan.gemm_threads()
    };
    let run = |group: usize| {
        let mut dw = want_dw.then(|| vec![0.0f32; w_len]);
        let (c0, c1) = (
            group * plan.chunks / groups,
            (group + 1) * plan.chunks / groups,
        );
        for c in c0..c1 {
            let (b0, nb) = plan.chunk(c, g.n);
            with_scratch(|s| {
                backward_chunk(
                    g,
                    x,
                    xv,
                    w,
                    dy,
                    dyv,
                    dx_ptr,
                    dw.as_deref_mut(),
                    b0,
                    nb,
                    gemm_threads,
                    direct_dw,
                    s,
                )
            });
        }
        dw
    };
    let partial: Vec<Option<Vec<f32>>> = if parallel_groups {
        (0..groups).into_par_iter().map(run).collect()
    } else {
        (0..groups).map(run).collect()
    };
    let dw = partial
        .into_iter()
        .reduce(|a, b| {
            a.zip(b).map(|(mut a, b)| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            })
        })
        .expect("at least one group");
    (dx, dw)
}

#[allow(clippy::too_many_arguments)]
fn backward_chunk(
    g: &ConvGeom,
    x: &[f32],
    xv: &PlanarView,
    w: &[f32],
    dy: &[f32],
    dyv: &PlanarView,
    dx: Option<SendPtr>,
    dw: Option<&mut [f32]>,
    b0: usize,
    nb: usize,
    threads: usize,
    direct_dw: bool,
    s: &mut Scratch,
) {
    let (p, cout_g, cin_g, k_g) = (g.p(), g.cout_g(), g.cin_g(), g.k_g());
    let ld = nb * p;
    let direct = nb == 1;
    let dw = match dw {
        Some(dw) if direct_dw && direct::weight_grad_applies(g) => {
            // Same chunk, same sums as the GEMM below, without the column matrix (direct.rs).
            direct::weight_grad_chunk(
                g,
                x,
                |b| xv.image(b),
                xv.sc,
                dy,
                |b| dyv.image(b),
                dyv.sc,
                b0,
                nb,
                dw,
                &mut s.cols,
                &mut s.aux,
            );
            None
        }
        dw => dw,
    };
    if dw.is_none() && dx.is_none() {
        return;
    }
    let Scratch { cols, stage, .. } = s;

    // Output gradient as a (Cout, nb·P) matrix: the image's planes themselves, or gathered.
    let (dy_ptr, dy_rs) = if direct {
        (dy[dyv.image(b0)..].as_ptr(), dyv.sc)
    } else {
        let staged = sized(stage, g.cout * ld);
        for i in 0..nb {
            let img = dyv.image(b0 + i);
            for co in 0..g.cout {
                staged[co * ld + i * p..co * ld + (i + 1) * p]
                    .copy_from_slice(&dy[img + co * dyv.sc..img + co * dyv.sc + p]);
            }
        }
        (staged.as_ptr(), ld)
    };
    let dy_g = |grp: usize| MatRef {
        ptr: unsafe { dy_ptr.add(grp * cout_g * dy_rs) },
        rs: dy_rs as isize,
        cs: 1,
    };

    // Weight gradient: dW_g (Cout_g, K_g) += dY_g (Cout_g, nb·P) · cols_gᵀ (nb·P, K_g).
    let pointwise_direct = direct && g.is_pointwise();
    if let Some(dw) = dw {
        let (col_ptr, col_rs) = if pointwise_direct {
            (x[xv.image(b0)..].as_ptr(), xv.sc)
        } else {
            let c = sized(cols, g.k_total() * ld);
            for i in 0..nb {
                im2col(g, &x[xv.image(b0 + i)..], xv.sc, g.cin, &mut c[i * p..], ld);
            }
            (c.as_ptr(), ld)
        };
        for grp in 0..g.groups {
            let cols_t = MatRef::transposed(unsafe { col_ptr.add(grp * k_g * col_rs) }, col_rs);
            let dst = MatMut::row_major(dw[grp * cout_g * k_g..].as_mut_ptr(), k_g);
            unsafe { matmul(cout_g, k_g, ld, dst, true, dy_g(grp), cols_t, threads) };
        }
    }

    // Input gradient: dcols_g (K_g, nb·P) = W_gᵀ (K_g, Cout_g) · dY_g, then col2im.
    let Some(dx) = dx else { return };
    let w_t = |grp: usize| MatRef::transposed(w[grp * cout_g * k_g..].as_ptr(), k_g);
    let plane = g.h * g.w;
    let dx_b0 = unsafe { dx.0.add(b0 * g.cin * plane) };
    if pointwise_direct {
        for grp in 0..g.groups {
            let dst = MatMut::row_major(unsafe { dx_b0.add(grp * cin_g * plane) }, plane);
            unsafe { matmul(cin_g, p, cout_g, dst, false, w_t(grp), dy_g(grp), threads) };
        }
        return;
    }
    let dcols = sized(cols, g.k_total() * ld);
    for grp in 0..g.groups {
        let dst = MatMut::row_major(dcols[grp * k_g * ld..].as_mut_ptr(), ld);
        unsafe { matmul(k_g, ld, cout_g, dst, false, w_t(grp), dy_g(grp), threads) };
    }
    // SAFETY: this chunk's images are disjoint from every other chunk's.
    let dx_chunk = unsafe { std::slice::from_raw_parts_mut(dx_b0, nb * g.cin * plane) };
    dx_chunk.fill(0.0);
    for i in 0..nb {
        col2im(
            g,
            &dcols[i * p..],
            ld,
            g.cin,
            &mut dx_chunk[i * g.cin * plane..(i + 1) * g.cin * plane],
        );
    }
}

/// conv2d through the custom op (CPU, f32).
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    ConvGeom::new(x.dims(), w.dims(), stride, padding, groups)?;
    let x = if PlanarView::new(x.layout()).is_ok() {
        x.clone()
    } else {
        x.contiguous()?
    };
    let w = w.contiguous()?;
    x.apply_op2(
        &w,
        Conv2dOp {
            stride,
            pad: padding,
            groups,
        },
    )
}

/// The input gradient by the route [`Conv2dOp::bwd`] takes, for the kernel tests.
#[cfg(test)]
pub(super) fn input_grad_pub(
    g: &ConvGeom,
    x: &[f32],
    xv: &PlanarView,
    w: &[f32],
    dy: &[f32],
    dyv: &PlanarView,
) -> Vec<f32> {
    match DxRoute::of(g) {
        DxRoute::Gemm => backward_routes(g, x, xv, w, dy, dyv, true, false, true)
            .0
            .expect("input gradient requested"),
        r => r.input_grad(g, dy, dyv, w),
    }
}

/// Whether the input gradient takes the direct stride-2 route, for the kernel tests.
#[cfg(test)]
pub(super) fn strided_dx_route(g: &ConvGeom) -> bool {
    matches!(DxRoute::of(g), DxRoute::Strided)
}
