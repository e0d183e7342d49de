//! Direct convolutions for narrow layers (≤ 64 channels), without a column matrix.
//!
//! In the small ResNet's 16- to 64-channel stages the im2col route copies every input value nine
//! times into the column matrix and `gemm` then copies it again into its packed panels: those
//! copies cost about as much as the arithmetic. Here each image is copied once into a zero-bordered
//! buffer and AVX2/FMA register tiles read the shifted input rows straight from it:
//! - forward of 3×3 pad-1 convolutions at stride 1 or 2 (stride 2 through an even/odd column
//!   split), and through the transposed-weight formulation in `conv.rs` the input gradient of the
//!   stride-1 ones: up to 6 output channels × 16 pixels per tile;
//! - weight gradient of any kernel size, stride and padding: 8–16 output channels × 1–12
//!   `(ci, tap)` columns per tile, summed over the chunk's pixels, with the output gradient
//!   transposed so 8 channels are one vector load.
//!
//! **Bit-identical to the im2col + `gemm` route.** `gemm` computes every output element as chains
//! of fused multiply-adds over the inner index in order, one chain per K block (its `kc`, see
//! [`super::gemm::k_block`]), each starting from zero and then added to the destination; padding
//! taps are multiplied as zeros. The tiles run the same chains in the same order over the same
//! blocks (zeros included), and the weight gradient uses the same chunks of images, so results do
//! not change and cached artifacts stay valid. The unit tests compare both routes bit for bit.

use super::im2col::ConvGeom;

/// Output channels per register tile.
const MR: usize = 6;
/// Wider layers stay on the im2col + gemm route: with thousands of inner indices a tile's weights
/// and input rows no longer stay in L1/L2, and `gemm`'s cache blocking wins (ResNet-18 trained
/// ~15% slower with every 3×3 layer direct).
const MAX_K: usize = 64 * 9;
const MAX_COUT: usize = 64;

/// Whether the direct kernel handles this convolution (and the CPU has AVX2 + FMA).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && (g.stride == 1 || (g.stride == 2 && g.w.is_multiple_of(2)))
        && g.pad == 1
        && g.groups == 1
        && g.ow.is_multiple_of(8)
        && g.k_g() <= MAX_K
        && g.cout <= MAX_COUT
        && cpu_has_avx2_fma()
}

pub(super) fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Weights (Cout, Cin, 3, 3) regrouped per tile of output channels: block `c0` (channels
/// `c0..c0+mr`) starts at `c0·Cin·9` and holds, for each `(ci, tap)`, its `mr` channels' weights
/// side by side, so a tile broadcasts consecutive floats.
pub(crate) fn pack_weights(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let k = g.cin * 9;
    let mut out = vec![0.0f32; g.cout * k];
    let mut c0 = 0;
    while c0 < g.cout {
        let mr = MR.min(g.cout - c0);
        let block = &mut out[c0 * k..(c0 + mr) * k];
        for m in 0..mr {
            for (kk, v) in w[(c0 + m) * k..(c0 + m + 1) * k].iter().enumerate() {
                block[kk * mr + m] = *v;
            }
        }
        c0 += mr;
    }
    out
}

/// Size of the zero-bordered copy of one image: (H+2)·(W+2) floats per channel.
pub(crate) fn padded_len(g: &ConvGeom) -> usize {
    g.cin * (g.h + 2) * (g.w + 2)
}

/// Where the forward tiles find their inputs in the padded copy of an image.
///
/// Stride 1: plain zero-bordered planes. Stride 2: each padded plane split into its even and its
/// odd columns (two sub-planes of (W+2)/2 columns), so the 8 input columns a tap reads for 8
/// consecutive outputs (columns 2x + kx) are again 8 consecutive floats.
struct InputMap {
    /// Floats per input channel.
    plane_p: usize,
    /// Offset of tap `ky·3 + kx` for the output pixel (0, 0).
    taps: [usize; 9],
    /// Offset between output rows `oy` and `oy + 1` (between columns it is always 1).
    row: usize,
}

impl InputMap {
    fn new(g: &ConvGeom) -> Self {
        let wp = g.w + 2;
        let hp = g.h + 2;
        if g.stride == 1 {
            Self {
                plane_p: hp * wp,
                taps: std::array::from_fn(|t| (t / 3) * wp + t % 3),
                row: wp,
            }
        } else {
            let half = wp / 2;
            // Column 2x + kx: kx = 0 → even column x, 1 → odd column x, 2 → even column x + 1.
            let col = [0, hp * half, 1];
            Self {
                plane_p: 2 * hp * half,
                taps: std::array::from_fn(|t| (t / 3) * half + col[t % 3]),
                row: 2 * half,
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for rows of a few dozen floats: fixed 8-float moves the compiler
/// inlines, where `copy_from_slice` calls `memcpy` (a function call per 4–32-float row showed as
/// several percent of a training step).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// Writes the padded copy [`InputMap`] describes: the zero-bordered planes, split into even and
/// odd columns for stride 2.
fn fill_input(g: &ConvGeom, x: &[f32], sc: usize, pad: &mut [f32]) {
    if g.stride == 1 {
        return fill_padded((g.h, g.w), x, sc, g.cin, 1, pad);
    }
    let (h, w) = (g.h, g.w);
    let half = (w + 2) / 2;
    let sub = (h + 2) * half;
    for c in 0..g.cin {
        let src = &x[c * sc..c * sc + h * w];
        let (even, odd) = pad[c * 2 * sub..(c + 1) * 2 * sub].split_at_mut(sub);
        even[..half].fill(0.0);
        odd[..half].fill(0.0);
        even[(h + 1) * half..].fill(0.0);
        odd[(h + 1) * half..].fill(0.0);
        for y in 0..h {
            // Padded column j holds input column j − 1: even j ↔ odd input columns, and back.
            let s = &src[y * w..(y + 1) * w];
            let (e, o) = (
                &mut even[(y + 1) * half..(y + 2) * half],
                &mut odd[(y + 1) * half..(y + 2) * half],
            );
            e[0] = 0.0;
            o[half - 1] = 0.0;
            for (j, pair) in s.chunks_exact(2).enumerate() {
                o[j] = pair[0];
                e[j + 1] = pair[1];
            }
        }
    }
}

/// Copies `channels` H×W planes of one image (plane stride `sc`) into `pad` with a zero border
/// `b` wide: planes of (H+2b)·(W+2b) floats.
pub(super) fn fill_padded(
    (h, w): (usize, usize),
    x: &[f32],
    sc: usize,
    channels: usize,
    b: usize,
    pad: &mut [f32],
) {
    let wp = w + 2 * b;
    let plane_p = (h + 2 * b) * wp;
    for c in 0..channels {
        let src = &x[c * sc..c * sc + h * w];
        let dst = &mut pad[c * plane_p..(c + 1) * plane_p];
        dst[..b * wp].fill(0.0);
        dst[(h + b) * wp..].fill(0.0);
        for y in 0..h {
            let row = &mut dst[(y + b) * wp..(y + b + 1) * wp];
            if b == 1 {
                // Two stores: `fill` (or a loop, which the compiler turns back into `fill`) made
                // these 1-float borders two `memset` calls per row.
                row[0] = 0.0;
                row[w + 1] = 0.0;
            } else {
                row[..b].fill(0.0);
                row[b + w..].fill(0.0);
            }
            copy_short(&mut row[b..b + w], &src[y * w..(y + 1) * w]);
        }
    }
}

/// One image: `x` holds its `Cin` planes at stride `sc`, `out` receives `Cout` contiguous
/// H×W planes, `packed` comes from [`pack_weights`], `pad` is scratch of [`padded_len`] floats.
/// `kc` is the K block `gemm` would use for this image's chunk (see [`super::gemm::k_block`]):
/// each block's sum starts from zero and is then added to the output, as in `gemm`.
pub(crate) fn conv_image(
    g: &ConvGeom,
    x: &[f32],
    sc: usize,
    packed: &[f32],
    out: &mut [f32],
    pad: &mut [f32],
    kc: usize,
) {
    assert!(
        applies(g),
        "direct conv called for an unsupported geometry {g:?}"
    );
    assert!(pad.len() >= padded_len(g) && out.len() >= g.cout * g.p());
    assert!(packed.len() >= g.cout * g.cin * 9 && kc > 0);
    fill_input(g, x, sc, pad);
    // SAFETY: `applies` checked AVX2 + FMA; the asserts above bound every pointer the tiles form:
    // a tile reads, per channel, the rows of its outputs' taps and 16 + 2 columns from its first
    // output's, all inside the padded copy `InputMap` describes.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        conv_image_avx2(g, packed, out, pad, kc)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_image_avx2(g: &ConvGeom, packed: &[f32], out: &mut [f32], pad: &[f32], kc: usize) {
    let (h, w, cin) = (g.oh, g.ow, g.cin);
    let k = cin * 9;
    let map = InputMap::new(g);
    let plane = h * w;
    // Rows of 16k pixels: tiles of two vectors side by side; otherwise (W = 8, 24, ...) tiles of
    // one vector on two consecutive rows, and a one-vector tile for an odd last row.
    let along_row = w.is_multiple_of(16);
    let (xs, os) = if along_row { (8, 8) } else { (map.row, w) };
    let x_step = if along_row { 16 } else { 8 };
    let mut c0 = 0;
    while c0 < g.cout {
        let mr = MR.min(g.cout - c0);
        let wk = packed.as_ptr().add(c0 * k);
        let mut y = 0;
        while y < h {
            let nv = if along_row || y + 1 < h { 2 } else { 1 };
            for x0 in (0..w).step_by(x_step) {
                let t = Tile {
                    x: pad.as_ptr().add(y * map.row + x0),
                    xs,
                    plane_p: map.plane_p,
                    taps: map.taps,
                    w: wk,
                    out: out.as_mut_ptr().add(c0 * plane + y * w + x0),
                    os,
                    out_plane: plane,
                };
                let mut k_lo = 0;
                while k_lo < k {
                    let k_hi = (k_lo + kc).min(k);
                    let first = k_lo == 0;
                    match (mr, nv) {
                        (6, 2) => t.run::<6, 2>(k_lo, k_hi, first),
                        (5, 2) => t.run::<5, 2>(k_lo, k_hi, first),
                        (4, 2) => t.run::<4, 2>(k_lo, k_hi, first),
                        (3, 2) => t.run::<3, 2>(k_lo, k_hi, first),
                        (2, 2) => t.run::<2, 2>(k_lo, k_hi, first),
                        (1, 2) => t.run::<1, 2>(k_lo, k_hi, first),
                        (6, _) => t.run::<6, 1>(k_lo, k_hi, first),
                        (5, _) => t.run::<5, 1>(k_lo, k_hi, first),
                        (4, _) => t.run::<4, 1>(k_lo, k_hi, first),
                        (3, _) => t.run::<3, 1>(k_lo, k_hi, first),
                        (2, _) => t.run::<2, 1>(k_lo, k_hi, first),
                        _ => t.run::<1, 1>(k_lo, k_hi, first),
                    }
                    k_lo = k_hi;
                }
            }
            y += if along_row { 1 } else { nv };
        }
        c0 += mr;
    }
}

/// One register tile: `M` output channels × `V` vectors of 8 pixels, the vectors `xs` floats
/// apart in the padded input and `os` apart in the output (side by side on a row, or on
/// consecutive rows).
#[cfg(target_arch = "x86_64")]
struct Tile {
    /// Padded input at (channel 0, tile row, tile column): the top-left tap of the first pixel.
    x: *const f32,
    xs: usize,
    plane_p: usize,
    /// Offsets of the nine taps (see [`InputMap`]).
    taps: [usize; 9],
    /// This channel block's packed weights.
    w: *const f32,
    /// Output at (first channel of the block, row, first pixel).
    out: *mut f32,
    os: usize,
    out_plane: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// Sums the products of inner indices `k_lo..k_hi` (index `ci·9 + ky·3 + kx`) in order into
    /// fresh accumulators, then stores them (`first`) or adds them to the output.
    #[inline(always)]
    unsafe fn run<const M: usize, const V: usize>(&self, k_lo: usize, k_hi: usize, first: bool) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm256_setzero_ps(); V]; M];
        let step = |acc: &mut [[__m256; V]; M], kk: usize| {
            let (ci, t) = (kk / 9, kk % 9);
            let row = self.x.add(ci * self.plane_p + self.taps[t]);
            let wt = self.w.add(kk * M);
            let xv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(row.add(v * self.xs)));
            for (m, acc) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*wt.add(m));
                for (a, xv) in acc.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(b, *xv, *a);
                }
            }
        };
        // Partial channels at either end of the block one tap at a time; whole channels with
        // their nine taps unrolled.
        let (ci_lo, ci_hi) = (k_lo.div_ceil(9), k_hi / 9);
        if ci_lo > ci_hi {
            (k_lo..k_hi).for_each(|kk| step(&mut acc, kk));
        } else {
            (k_lo..ci_lo * 9).for_each(|kk| step(&mut acc, kk));
            for ci in ci_lo..ci_hi {
                let base = self.x.add(ci * self.plane_p);
                let wci = self.w.add(ci * 9 * M);
                for (t, &tap) in self.taps.iter().enumerate() {
                    let row = base.add(tap);
                    let xv: [__m256; V] =
                        std::array::from_fn(|v| _mm256_loadu_ps(row.add(v * self.xs)));
                    let wt = wci.add(t * M);
                    for (m, acc) in acc.iter_mut().enumerate() {
                        let b = _mm256_broadcast_ss(&*wt.add(m));
                        for (a, xv) in acc.iter_mut().zip(&xv) {
                            *a = _mm256_fmadd_ps(b, *xv, *a);
                        }
                    }
                }
            }
            (ci_hi * 9..k_hi).for_each(|kk| step(&mut acc, kk));
        }
        for (m, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                let o = self.out.add(m * self.out_plane + v * self.os);
                let sum = if first {
                    *a
                } else {
                    _mm256_add_ps(*a, _mm256_loadu_ps(o))
                };
                _mm256_storeu_ps(o, sum);
            }
        }
    }
}

/// Whether [`weight_grad_chunk`] handles this convolution's weight gradient.
///
/// Any kernel size, stride and padding; one group; output channels in whole AVX2 vectors; and
/// products large enough that `gemm` runs its general kernels (it hands `m·n ≤ 256` to a
/// horizontal kernel and inner dimensions ≤ 2 to another, with other summation orders).
pub(crate) fn weight_grad_applies(g: &ConvGeom) -> bool {
    g.groups == 1
        && g.cout.is_multiple_of(8)
        && g.cout * g.k_g() > 256
        && g.k_g() <= MAX_K
        && g.cout <= MAX_COUT
        && g.p() >= 8
        && cpu_has_avx2_fma()
}

/// Adds the weight gradient of images `b0..b0+nb` to `dw` (Cout × Cin·KH·KW, row-major) exactly as
/// the im2col + `gemm` route does: `dW += dY (Cout × nb·P) · colsᵀ`, each K block of columns
/// summed in column order into a fresh register and then added to `dw`.
///
/// `x`/`xv_sc` and `dy`/`dy_sc` are the images' planes (image starts at `x_img(b)`/`dy_img(b)`,
/// channel stride `*_sc`); `pad` and `dyt` are scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grad_chunk(
    g: &ConvGeom,
    x: &[f32],
    x_img: impl Fn(usize) -> usize,
    x_sc: usize,
    dy: &[f32],
    dy_img: impl Fn(usize) -> usize,
    dy_sc: usize,
    b0: usize,
    nb: usize,
    dw: &mut [f32],
    pad: &mut Vec<f32>,
    dyt: &mut Vec<f32>,
) {
    assert!(
        weight_grad_applies(g),
        "direct weight gradient called for {g:?}"
    );
    let (cin, cout, taps) = (g.cin, g.cout, g.kh * g.kw);
    let (p, k) = (g.p(), g.k_g());
    let wp = g.w + 2 * g.pad;
    let plane_p = (g.h + 2 * g.pad) * wp;
    let img_p = cin * plane_p;
    let ld = nb * p;
    assert!(dw.len() >= cout * k);
    assert!(
        nb * img_p <= u32::MAX as usize,
        "padded chunk too large for 32-bit offsets"
    );
    // Zero-bordered copies of the chunk's images, and dY transposed to (column, Cout) so one
    // column's output gradients are one contiguous vector load per 8 channels.
    let pad = super::scratch::sized(pad, nb * img_p);
    for i in 0..nb {
        let dst = &mut pad[i * img_p..(i + 1) * img_p];
        fill_padded((g.h, g.w), &x[x_img(b0 + i)..], x_sc, cin, g.pad, dst);
    }
    let dyt = super::scratch::sized(dyt, ld * cout);
    for i in 0..nb {
        let di = &dy[dy_img(b0 + i)..];
        let dst = &mut dyt[i * p * cout..(i + 1) * p * cout];
        // SAFETY: `weight_grad_applies` checked AVX2.
        unsafe { transpose_planes(di, dy_sc, cout, p, dst) };
    }
    // Column c (image i, output pixel oy·OW + ox) reads tap (ci, ky, kx), inner index
    // ci·KH·KW + ky·KW + kx, at col_off[c] + k_off[that index] in the padded chunk.
    let col_off: Vec<u32> = (0..ld)
        .map(|c| {
            let (i, j) = (c / p, c % p);
            let (oy, ox) = (j / g.ow, j % g.ow);
            (i * img_p + oy * g.stride * wp + ox * g.stride) as u32
        })
        .collect();
    let k_off: Vec<u32> = (0..k)
        .map(|kk| {
            let (ci, t) = (kk / taps, kk % taps);
            (ci * plane_p + (t / g.kw) * wp + t % g.kw) as u32
        })
        .collect();
    let kc = super::gemm::k_block(cout, k, ld);
    let mut c_lo = 0;
    while c_lo < ld {
        let c_hi = (c_lo + kc).min(ld);
        let mut co0 = 0;
        while co0 < cout {
            // 16 channels × 6 columns (2 vector loads + 6 broadcasts per 12 FMAs) ran stages of
            // 32 and 64 channels ~1.5× faster than 32 × 3 (4 + 3), whose wider output-gradient
            // rows fell out of L1.
            let v = [2, 1]
                .into_iter()
                .find(|v| co0 + 8 * v <= cout)
                .expect("cout is a multiple of 8");
            let t = WgTile {
                pad: pad.as_ptr(),
                dyt: dyt.as_ptr(),
                cout,
                co0,
                col_off: &col_off[c_lo..c_hi],
                c_lo,
                dw: dw.as_mut_ptr(),
                k,
            };
            let mut k0 = 0;
            while k0 < k {
                let left = k - k0;
                // SAFETY: `weight_grad_applies` checked AVX2 + FMA; offsets index the padded
                // chunk (col_off + k_off < nb·img_p), dyt (c·cout + co0 + 8·V ≤ ld·cout) and dw
                // (co < cout, k0 + T ≤ k).
                k0 += unsafe {
                    match (v, left) {
                        (2, 6..) => t.run::<2, 6>(&k_off[k0..]),
                        (2, 3..) => t.run::<2, 3>(&k_off[k0..]),
                        (2, 2) => t.run::<2, 2>(&k_off[k0..]),
                        (2, _) => t.run::<2, 1>(&k_off[k0..]),
                        (_, 12..) => t.run::<1, 12>(&k_off[k0..]),
                        (_, 9..) => t.run::<1, 9>(&k_off[k0..]),
                        (_, 6..) => t.run::<1, 6>(&k_off[k0..]),
                        (_, 3..) => t.run::<1, 3>(&k_off[k0..]),
                        (_, 2) => t.run::<1, 2>(&k_off[k0..]),
                        _ => t.run::<1, 1>(&k_off[k0..]),
                    }
                };
            }
            co0 += 8 * v;
        }
        c_lo = c_hi;
    }
}

/// `dst[j·rows + r] = src[r·sc + j]` for `r < rows` (a multiple of 8), `j < cols`: 8×8 blocks
/// through registers, the last `cols % 8` columns one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_planes(src: &[f32], sc: usize, rows: usize, cols: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(rows.is_multiple_of(8) && src.len() >= (rows - 1) * sc + cols);
    assert!(dst.len() >= rows * cols);
    let full = cols / 8 * 8;
    for r0 in (0..rows).step_by(8) {
        for j0 in (0..full).step_by(8) {
            let s = src.as_ptr().add(r0 * sc + j0);
            let row = |r: usize| _mm256_loadu_ps(s.add(r * sc));
            let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
            let (a4, a5, a6, a7) = (row(4), row(5), row(6), row(7));
            let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
            let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
            let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
            let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            let d = dst.as_mut_ptr().add(j0 * rows + r0);
            for (j, v) in out.iter().enumerate() {
                _mm256_storeu_ps(d.add(j * rows), *v);
            }
        }
        for r in r0..r0 + 8 {
            for j in full..cols {
                dst[j * rows + r] = src[r * sc + j];
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_planes(_: &[f32], _: usize, _: usize, _: usize, _: &mut [f32]) {
    unreachable!("weight_grad_applies is false off x86-64")
}

/// One weight-gradient register tile: `8·V` output channels × `T` consecutive `(ci, tap)`
/// columns of dW, summed over one K block of image columns.
struct WgTile<'a> {
    pad: *const f32,
    dyt: *const f32,
    cout: usize,
    co0: usize,
    /// The block's columns: padded-chunk offset of each column's top-left tap.
    col_off: &'a [u32],
    /// First column of the block (row of `dyt`).
    c_lo: usize,
    dw: *mut f32,
    k: usize,
}

impl WgTile<'_> {
    /// Returns T (columns of dW done).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const V: usize, const T: usize>(&self, k_off: &[u32]) -> usize {
        use std::arch::x86_64::*;
        let offs: [usize; T] = std::array::from_fn(|t| k_off[t] as usize);
        let mut acc = [[_mm256_setzero_ps(); T]; V];
        let mut dy = self.dyt.add(self.c_lo * self.cout + self.co0);
        for &base in self.col_off {
            let xb = self.pad.add(base as usize);
            let mut d = [_mm256_setzero_ps(); V];
            for (v, d) in d.iter_mut().enumerate() {
                *d = _mm256_loadu_ps(dy.add(8 * v));
            }
            for t in 0..T {
                let b = _mm256_broadcast_ss(&*xb.add(offs[t]));
                for v in 0..V {
                    acc[v][t] = _mm256_fmadd_ps(d[v], b, acc[v][t]);
                }
            }
            dy = dy.add(self.cout);
        }
        let k0 = self.k - k_off.len();
        for (v, acc) in acc.iter().enumerate() {
            for (t, a) in acc.iter().enumerate() {
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
                for (l, s) in lanes.iter().enumerate() {
                    let d = self.dw.add((self.co0 + 8 * v + l) * self.k + k0 + t);
                    *d += *s;
                }
            }
        }
        T
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run<const V: usize, const T: usize>(&self, _k_off: &[u32]) -> usize {
        unreachable!("weight_grad_applies is false off x86-64")
    }
}
