//! Convolution geometry and the im2col / col2im transforms between image planes and GEMM columns.
//!
//! Images are read in any *planar* layout: each (image, channel) plane is a contiguous H×W block,
//! while the image and channel strides are free. Both NCHW-contiguous tensors and channel-sliced
//! views qualify, so the kernels never force a copy of their input.
//!
//! Column matrices are row-major with row `(c, i, j)` (channel, kernel row, kernel column; channel
//! slowest) and column `oh*OW + ow`, so a group's rows are one contiguous row block and the
//! weight tensor (Cout, Cin/groups, KH, KW) is already the row-major left operand.

use super::simd::multiversion;

/// Shape parameters of one conv2d call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Validates the shapes and derives the output size; messages name what to fix.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        x_dims: &[usize],
        w_dims: &[usize],
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> candle_core::Result<Self> {
        let (&[n, cin, h, w], &[cout, cin_g, kh, kw]) = (x_dims, w_dims) else {
            candle_core::bail!(
                "conv2d expects input (N,C,H,W) and weight (Cout,Cin/groups,KH,KW), got {x_dims:?} and {w_dims:?}"
            )
        };
        if stride == 0 || groups == 0 {
            candle_core::bail!(
                "conv2d needs stride >= 1 and groups >= 1, got {stride} and {groups}"
            );
        }
        if cin != cin_g * groups || cout % groups != 0 {
            candle_core::bail!(
                "conv2d with {groups} groups: input has {cin} channels, weight {w_dims:?} expects {} and Cout divisible by groups",
                cin_g * groups
            );
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!(
                "conv2d kernel {kh}x{kw} larger than padded input {h}x{w} (+2*{pad})"
            );
        }
        Ok(Self {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            pad,
            groups,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (w + 2 * pad - kw) / stride + 1,
        })
    }

    /// Output pixels per image.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
    pub fn cin_g(&self) -> usize {
        self.cin / self.groups
    }
    pub fn cout_g(&self) -> usize {
        self.cout / self.groups
    }
    /// GEMM inner dimension of one group: Cin/groups · KH · KW.
    pub fn k_g(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    /// Rows of the full column matrix (all groups).
    pub fn k_total(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// A 1×1, stride-1, unpadded conv: the input planes already are the column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Stride 1 with output width equal to input width ('same' padding along x).
    pub fn is_same_stride1(&self) -> bool {
        self.stride == 1 && self.ow == self.w && self.oh == self.h
    }

    /// Output positions `o` in `0..out` whose input index `o*stride + k - pad` lies in `0..len`.
    fn valid(&self, k: usize, len: usize, out: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if k >= self.pad {
            0
        } else {
            (self.pad - k).div_ceil(s)
        };
        let hi = (len + self.pad).saturating_sub(k).div_ceil(s);
        let hi = hi.min(out);
        (lo.min(hi), hi)
    }
}

/// Fills the columns of one image: `x` starts at the image's first channel (channel `c` at
/// `x[c*sc..]`, `channels` of them), `cols` starts at the image's first column and has row stride
/// `ld`. Every element of the `channels·KH·KW × OH·OW` block is written (zeros for padding).
pub(crate) fn im2col(
    g: &ConvGeom,
    x: &[f32],
    sc: usize,
    channels: usize,
    cols: &mut [f32],
    ld: usize,
) {
    if g.is_same_stride1() {
        return im2col_same(g, x, sc, channels, cols, ld);
    }
    let (ow_n, p, s) = (g.ow, g.p(), g.stride);
    let mut r = 0;
    for c in 0..channels {
        let plane = &x[c * sc..c * sc + g.h * g.w];
        for i in 0..g.kh {
            let (oh_lo, oh_hi) = g.valid(i, g.h, g.oh);
            for j in 0..g.kw {
                let (ow_lo, ow_hi) = g.valid(j, g.w, ow_n);
                let row = &mut cols[r * ld..r * ld + p];
                r += 1;
                row[..oh_lo * ow_n].fill(0.0);
                row[oh_hi * ow_n..].fill(0.0);
                for oh in oh_lo..oh_hi {
                    let ih = oh * s + i - g.pad;
                    let src = &plane[ih * g.w..(ih + 1) * g.w];
                    let out = &mut row[oh * ow_n..(oh + 1) * ow_n];
                    out[..ow_lo].fill(0.0);
                    out[ow_hi..].fill(0.0);
                    if s == 1 {
                        let start = ow_lo + j - g.pad;
                        out[ow_lo..ow_hi].copy_from_slice(&src[start..start + ow_hi - ow_lo]);
                    } else {
                        gather_strided(&mut out[ow_lo..ow_hi], &src[ow_lo * s + j - g.pad..], s);
                    }
                }
            }
        }
    }
}

multiversion! {
/// `out[i] = src[i·s]`. Stride 2 (every downsampling convolution) is written as pairs so the
/// compiler turns it into vector loads and shuffles; the per-element indexed gather it replaces
/// was half of im2col's time.
fn gather_strided(out: &mut [f32], src: &[f32], s: usize) {
    if s == 2 {
        for (o, pair) in out.iter_mut().zip(src.chunks(2)) {
            *o = pair[0];
        }
    } else {
        for (o, v) in out.iter_mut().zip(src.iter().step_by(s)) {
            *o = *v;
        }
    }
}
}

multiversion! {
/// `dst[i·s] += src[i]`: the adjoint of [`gather_strided`].
fn scatter_add_strided(dst: &mut [f32], src: &[f32], s: usize) {
    if s == 2 {
        for (pair, v) in dst.chunks_mut(2).zip(src) {
            pair[0] += v;
        }
    } else {
        for (d, v) in dst.iter_mut().step_by(s).zip(src) {
            *d += v;
        }
    }
}
}

/// [`im2col`] for stride-1 convolutions whose output is as wide as the input (3×3 pad 1, ...).
///
/// Then row `(c, i, j)` is the plane shifted by `(i−pad)·W + (j−pad)` elements: one contiguous copy
/// per row instead of one per output line, followed by zeroing the few entries that wrapped
/// around from the neighbouring line. Per-line copies of 8–32 floats were dominated by their
/// bookkeeping (im2col took ~15% of a small-ResNet training step).
fn im2col_same(g: &ConvGeom, x: &[f32], sc: usize, channels: usize, cols: &mut [f32], ld: usize) {
    let (w, p) = (g.w, g.p());
    let mut r = 0;
    for c in 0..channels {
        let plane = &x[c * sc..c * sc + g.h * w];
        for i in 0..g.kh {
            let (oh_lo, oh_hi) = g.valid(i, g.h, g.oh);
            for j in 0..g.kw {
                let row = &mut cols[r * ld..r * ld + p];
                r += 1;
                let (lo, hi) = (oh_lo * w, oh_hi * w);
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
                if lo >= hi {
                    continue;
                }
                // dst index d reads plane[d + shift]; clip to the plane, the clipped ends are
                // wrap-around entries that are zeroed below anyway.
                let shift = (i * w + j) as isize - (g.pad * w + g.pad) as isize;
                let d_lo = lo.max((-shift).max(0) as usize);
                let d_hi = hi.min((plane.len() as isize - shift) as usize);
                let s_lo = (d_lo as isize + shift) as usize;
                row[d_lo..d_hi].copy_from_slice(&plane[s_lo..s_lo + (d_hi - d_lo)]);
                row[lo..d_lo].fill(0.0);
                row[d_hi..hi].fill(0.0);
                // Columns whose source x + j − pad falls outside 0..W read the neighbouring line.
                // Indexed stores, not `fill`: these runs are 0–2 floats long and a memset call
                // per line cost more than the copy.
                let (ow_lo, ow_hi) = g.valid(j, w, g.ow);
                for k in (0..ow_lo).chain(ow_hi..w) {
                    let mut idx = lo + k;
                    while idx < hi {
                        row[idx] = 0.0;
                        idx += w;
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry back onto the input position it was read
/// from. `dx` holds `channels` contiguous H×W planes and must be initialised (zeros) by the caller.
pub(crate) fn col2im(g: &ConvGeom, cols: &[f32], ld: usize, channels: usize, dx: &mut [f32]) {
    let (ow_n, p, s) = (g.ow, g.p(), g.stride);
    let mut r = 0;
    for c in 0..channels {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            let (oh_lo, oh_hi) = g.valid(i, g.h, g.oh);
            for j in 0..g.kw {
                let (ow_lo, ow_hi) = g.valid(j, g.w, ow_n);
                let row = &cols[r * ld..r * ld + p];
                r += 1;
                for oh in oh_lo..oh_hi {
                    let ih = oh * s + i - g.pad;
                    let dst = &mut plane[ih * g.w..(ih + 1) * g.w];
                    let src = &row[oh * ow_n + ow_lo..oh * ow_n + ow_hi];
                    if s == 1 {
                        let start = ow_lo + j - g.pad;
                        for (d, v) in dst[start..start + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        scatter_add_strided(&mut dst[ow_lo * s + j - g.pad..], src, s);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col by its definition, one element at a time.
    fn reference(g: &ConvGeom, x: &[f32]) -> Vec<f32> {
        let mut cols = vec![f32::NAN; g.k_total() * g.p()];
        let mut r = 0;
        for c in 0..g.cin {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    for oh in 0..g.oh {
                        for ow in 0..g.ow {
                            let ih = (oh * g.stride + i) as isize - g.pad as isize;
                            let iw = (ow * g.stride + j) as isize - g.pad as isize;
                            let inside =
                                (0..g.h as isize).contains(&ih) && (0..g.w as isize).contains(&iw);
                            cols[r * g.p() + oh * g.ow + ow] = if inside {
                                x[c * g.h * g.w + ih as usize * g.w + iw as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                    r += 1;
                }
            }
        }
        cols
    }

    #[test]
    fn im2col_matches_definition_for_same_and_general_geometries() {
        // (C, H, W, K, stride, pad): 'same' stride-1 cases take the shifted-copy path.
        let cases = [
            (2, 5, 7, 3, 1, 1),
            (3, 4, 4, 5, 1, 2),
            (1, 1, 1, 3, 1, 1),
            (2, 2, 3, 3, 1, 1),
            (2, 6, 6, 1, 1, 0),
            (2, 6, 5, 3, 2, 1),
            (1, 7, 7, 3, 1, 0),
            (2, 8, 8, 1, 2, 0),
        ];
        for (c, h, w, k, stride, pad) in cases {
            let g = ConvGeom::new(&[1, c, h, w], &[4, c, k, k], stride, pad, 1).unwrap();
            let x: Vec<f32> = (0..c * h * w).map(|v| v as f32 + 1.0).collect();
            let mut cols = vec![f32::NAN; g.k_total() * g.p()];
            im2col(&g, &x, h * w, c, &mut cols, g.p());
            assert_eq!(
                cols,
                reference(&g, &x),
                "case {:?}",
                (c, h, w, k, stride, pad)
            );
        }
    }
}
