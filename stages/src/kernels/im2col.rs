//! Convolution geometry and the im2col / col2im transforms between image planes and GEMM columns.
//!
//! Images are read in any *planar* layout: each (image, channel) plane is a contiguous H×W block,
//! while the image and channel strides are free. Both NCHW-contiguous tensors and channel-sliced
//! views qualify, so the kernels never force a copy of their input.
//!
//! Column matrices are row-major with row `(c, i, j)` (channel, kernel row, kernel column; channel
//! slowest) and column `oh*OW + ow`, so a group's rows are one contiguous row block and the
//! weight tensor (Cout, Cin/groups, KH, KW) is already the row-major left operand.

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
                        for (ow, o) in out[ow_lo..ow_hi].iter_mut().enumerate() {
                            *o = src[(ow + ow_lo) * s + j - g.pad];
                        }
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
                        for (ow, v) in src.iter().enumerate() {
                            dst[(ow + ow_lo) * s + j - g.pad] += v;
                        }
                    }
                }
            }
        }
    }
}
