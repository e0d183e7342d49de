//! Input gradient of 3×3, stride-2, pad-1 convolutions (the downsampling layers) without the
//! column matrix.
//!
//! The im2col route computes a column-matrix gradient `Wᵀ·dY` (one row per `(ci, tap)`, nine
//! times the input's size) and scatters it back with col2im, strided by 2: ~2× the time of the
//! layer's forward. Here each input pixel's gradient is summed straight from a zero-bordered copy
//! of dY. By the parities of its row and column, an input pixel receives 1, 2 or 4 taps (rows:
//! even y ← tap row 1 from output row y/2; odd y ← tap row 0 from (y+1)/2 and tap row 2 from
//! (y−1)/2; columns alike), so a register tile computes 8 even and 8 odd columns of one input row
//! for 6 input channels and interleaves them when storing.
//!
//! **Bit-identical to the im2col + `gemm` + col2im route**: there, each tap's contribution is one
//! `gemm` chain of fused multiply-adds over the output channels in order (one K block: checked
//! by the caller), stored, and col2im adds the taps to a zeroed gradient in `(ky, kx)` order.
//! The tiles run the same chains and add them in the same order. A tap that falls outside dY
//! (the last odd row or column) reads the zero border: its chain is exactly +0, and adding +0
//! to a sum that started at +0 changes nothing, as col2im's skipping it does.

use super::direct::{cpu_has_avx2_fma, fill_padded};
use super::im2col::ConvGeom;

/// Input channels per register tile.
const MR: usize = 6;

/// Whether [`input_grad_image`] handles this convolution (given one K block; see the module doc).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 2
        && g.pad == 1
        && g.groups == 1
        && g.h == 2 * g.oh
        && g.w == 2 * g.ow
        && g.ow.is_multiple_of(8)
        && cpu_has_avx2_fma()
}

/// Weights (Cout, Cin, 3, 3) regrouped per tile of input channels: block `c0` (channels
/// `c0..c0+mr`) starts at `c0·9·Cout` and holds, for each tap and output channel, its `mr`
/// channels' weights side by side.
pub(crate) fn pack_weights(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let mut out = vec![0.0f32; cout * cin * 9];
    let mut c0 = 0;
    while c0 < cin {
        let mr = MR.min(cin - c0);
        let block = &mut out[c0 * 9 * cout..(c0 + mr) * 9 * cout];
        for t in 0..9 {
            for co in 0..cout {
                for m in 0..mr {
                    block[(t * cout + co) * mr + m] = w[(co * cin + c0 + m) * 9 + t];
                }
            }
        }
        c0 += mr;
    }
    out
}

/// Scratch floats for one image's zero-bordered dY: Cout planes of (OH+2)·(OW+2).
pub(crate) fn padded_len(g: &ConvGeom) -> usize {
    g.cout * (g.oh + 2) * (g.ow + 2)
}

/// One image: `dy` holds its `Cout` planes at stride `sc`, `dx` receives `Cin` contiguous H×W
/// planes, `packed` comes from [`pack_weights`], `pad` is scratch of [`padded_len`] floats.
pub(crate) fn input_grad_image(
    g: &ConvGeom,
    dy: &[f32],
    sc: usize,
    packed: &[f32],
    dx: &mut [f32],
    pad: &mut [f32],
) {
    assert!(
        applies(g),
        "direct stride-2 input gradient called for {g:?}"
    );
    assert!(pad.len() >= padded_len(g) && dx.len() >= g.cin * g.h * g.w);
    assert!(packed.len() >= g.cout * g.cin * 9);
    fill_padded((g.oh, g.ow), dy, sc, g.cout, 1, pad);
    // SAFETY: `applies` checked AVX2 + FMA; the asserts bound every pointer: a tile reads padded
    // rows oy + 1 ≤ OH + 1 and 8 floats from padded column m0 + 2 ≤ OW − 6, and writes 16
    // floats of an input row from column 2·m0 ≤ W − 16.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        input_grad_avx2(g, packed, dx, pad)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_grad_avx2(g: &ConvGeom, packed: &[f32], dx: &mut [f32], pad: &[f32]) {
    let (h, w, cin, cout) = (g.h, g.w, g.cin, g.cout);
    let wp = g.ow + 2;
    let mut c0 = 0;
    while c0 < cin {
        let mr = MR.min(cin - c0);
        for y in 0..h {
            // (tap row, output row) pairs in tap order; the last odd row's tap 0 is outside dY.
            let rows: &[(usize, usize)] = if y % 2 == 0 {
                &[(1, y / 2)]
            } else if y.div_ceil(2) < g.oh {
                &[(0, y.div_ceil(2)), (2, (y - 1) / 2)]
            } else {
                &[(2, (y - 1) / 2)]
            };
            for m0 in (0..g.ow).step_by(8) {
                let t = Tile {
                    pad: pad.as_ptr(),
                    wp,
                    plane_p: (g.oh + 2) * wp,
                    cout,
                    w: packed.as_ptr().add(c0 * 9 * cout),
                    rows,
                    m0,
                    dx: dx.as_mut_ptr().add(c0 * h * w + y * w + 2 * m0),
                    dx_plane: h * w,
                };
                match mr {
                    6 => t.run::<6>(),
                    5 => t.run::<5>(),
                    4 => t.run::<4>(),
                    3 => t.run::<3>(),
                    2 => t.run::<2>(),
                    _ => t.run::<1>(),
                }
            }
        }
        c0 += mr;
    }
}

/// `M` input channels × 16 consecutive columns of one input row (8 dY columns from `m0`).
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    pad: *const f32,
    /// Padded dY row length and plane size.
    wp: usize,
    plane_p: usize,
    cout: usize,
    /// This channel block's packed weights.
    w: *const f32,
    rows: &'a [(usize, usize)],
    m0: usize,
    /// Input gradient at (first channel of the block, row, column 2·m0).
    dx: *mut f32,
    dx_plane: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile<'_> {
    #[inline(always)]
    unsafe fn run<const M: usize>(&self) {
        use std::arch::x86_64::*;
        // Even columns 2m take tap column 1 from dY column m; odd columns 2m + 1 take tap
        // column 0 from m + 1, then tap column 2 from m.
        let even = self.sum::<M>(&[(1, 0)]);
        let odd = self.sum::<M>(&[(0, 1), (2, 0)]);
        for m in 0..M {
            let lo = _mm256_unpacklo_ps(even[m], odd[m]);
            let hi = _mm256_unpackhi_ps(even[m], odd[m]);
            let d = self.dx.add(m * self.dx_plane);
            _mm256_storeu_ps(d, _mm256_permute2f128_ps::<0x20>(lo, hi));
            _mm256_storeu_ps(d.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
        }
    }

    /// The gradient of 8 input columns of one parity: from +0, each tap's chain over the
    /// output channels (fresh accumulators, in order) added in `(ky, kx)` order. `cols` holds
    /// (tap column, dY column offset from m) pairs.
    #[inline(always)]
    unsafe fn sum<const M: usize>(
        &self,
        cols: &[(usize, usize)],
    ) -> [std::arch::x86_64::__m256; M] {
        use std::arch::x86_64::*;
        let mut s = [_mm256_setzero_ps(); M];
        for &(ky, oy) in self.rows {
            for &(kx, dc) in cols {
                let tap = ky * 3 + kx;
                let x = self.pad.add((oy + 1) * self.wp + self.m0 + dc + 1);
                let wt = self.w.add(tap * self.cout * M);
                let mut acc = [_mm256_setzero_ps(); M];
                for co in 0..self.cout {
                    let v = _mm256_loadu_ps(x.add(co * self.plane_p));
                    let wc = wt.add(co * M);
                    for (m, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*wc.add(m)), v, *a);
                    }
                }
                for (s, a) in s.iter_mut().zip(&acc) {
                    *s = _mm256_add_ps(*s, *a);
                }
            }
        }
        s
    }
}
