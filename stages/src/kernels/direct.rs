//! Direct 3×3 stride-1 'same' convolution for narrow layers, without a column matrix.
//!
//! In the small ResNet's 16- and 32-channel stages the im2col route copies every input value nine
//! times into the column matrix and `gemm` then copies it again into its packed panels: those
//! copies cost about as much as the arithmetic. Here each image is copied once into a zero-bordered
//! buffer and an AVX2/FMA register tile (up to 6 output channels × 16 pixels of one output row)
//! reads its nine shifted input rows straight from it.
//!
//! **Bit-identical to the im2col + `gemm` route.** `gemm` computes every output element as one
//! chain of fused multiply-adds over the column index `(ci, ky, kx)` in order, starting from zero,
//! when the inner dimension fits one of its K blocks (≥ 512); padding taps are multiplied as
//! zeros. The tile below runs the same chain in the same order (zeros included), so results do not
//! change and cached artifacts stay valid. [`applies`] therefore admits only `Cin·9 ≤ 512`; the
//! unit tests compare both routes bit for bit.
//!
//! Used for the forward pass and, through the transposed-weight formulation in `conv.rs`, for the
//! input gradient of stride-1 convolutions.

use super::im2col::ConvGeom;

/// Largest inner dimension `gemm` runs as a single K block (`gemm-common`'s `kernel_params`:
/// `kc = max(…, 512).min(k)`); beyond it `gemm` sums blocks separately and the orders differ.
const MAX_K: usize = 512;
/// Output channels per register tile.
const MR: usize = 6;

/// Whether the direct kernel handles this convolution (and the CPU has AVX2 + FMA).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.groups == 1
        && g.w.is_multiple_of(8)
        && g.k_g() <= MAX_K
        && cpu_has_avx2_fma()
}

fn cpu_has_avx2_fma() -> bool {
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

/// Side of the zero-bordered copy of one image: (H+2)·(W+2) floats per channel.
pub(crate) fn padded_len(g: &ConvGeom) -> usize {
    g.cin * (g.h + 2) * (g.w + 2)
}

/// One image: `x` holds its `Cin` planes at stride `sc`, `out` receives `Cout` contiguous
/// H×W planes, `packed` comes from [`pack_weights`], `pad` is scratch of [`padded_len`] floats.
pub(crate) fn conv_image(
    g: &ConvGeom,
    x: &[f32],
    sc: usize,
    packed: &[f32],
    out: &mut [f32],
    pad: &mut [f32],
) {
    assert!(
        applies(g),
        "direct conv called for an unsupported geometry {g:?}"
    );
    let (h, w) = (g.h, g.w);
    let wp = w + 2;
    let plane_p = (h + 2) * wp;
    assert!(pad.len() >= g.cin * plane_p && out.len() >= g.cout * h * w);
    assert!(packed.len() >= g.cout * g.cin * 9);
    for c in 0..g.cin {
        let src = &x[c * sc..c * sc + h * w];
        let dst = &mut pad[c * plane_p..(c + 1) * plane_p];
        dst[..wp].fill(0.0);
        dst[(h + 1) * wp..].fill(0.0);
        for y in 0..h {
            let row = &mut dst[(y + 1) * wp..(y + 2) * wp];
            row[0] = 0.0;
            row[wp - 1] = 0.0;
            row[1..=w].copy_from_slice(&src[y * w..(y + 1) * w]);
        }
    }
    // SAFETY: `applies` checked AVX2 + FMA; the asserts above bound every pointer the tiles form
    // (a tile reads rows y..y+3 of the padded planes and columns x0..x0+8·NV+2 ≤ W+2).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        conv_image_avx2(g, packed, out, pad)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_image_avx2(g: &ConvGeom, packed: &[f32], out: &mut [f32], pad: &[f32]) {
    let (h, w, cin) = (g.h, g.w, g.cin);
    let wp = w + 2;
    let plane_p = (h + 2) * wp;
    let plane = h * w;
    let nv = if w.is_multiple_of(16) { 2 } else { 1 };
    let mut c0 = 0;
    while c0 < g.cout {
        let mr = MR.min(g.cout - c0);
        let wk = packed.as_ptr().add(c0 * cin * 9);
        for y in 0..h {
            for x0 in (0..w).step_by(8 * nv) {
                let xp = pad.as_ptr().add(y * wp + x0);
                let o = out.as_mut_ptr().add(c0 * plane + y * w + x0);
                let t = Tile {
                    x: xp,
                    plane_p,
                    wp,
                    cin,
                    w: wk,
                    out: o,
                    out_plane: plane,
                };
                match (mr, nv) {
                    (6, 2) => t.run::<6, 2>(),
                    (5, 2) => t.run::<5, 2>(),
                    (4, 2) => t.run::<4, 2>(),
                    (3, 2) => t.run::<3, 2>(),
                    (2, 2) => t.run::<2, 2>(),
                    (1, 2) => t.run::<1, 2>(),
                    (6, _) => t.run::<6, 1>(),
                    (5, _) => t.run::<5, 1>(),
                    (4, _) => t.run::<4, 1>(),
                    (3, _) => t.run::<3, 1>(),
                    (2, _) => t.run::<2, 1>(),
                    _ => t.run::<1, 1>(),
                }
            }
        }
        c0 += mr;
    }
}

/// One register tile: `M` output channels × `8·V` pixels of one output row.
#[cfg(target_arch = "x86_64")]
struct Tile {
    /// Padded input at (channel 0, tile row, tile column): the top-left tap of the first pixel.
    x: *const f32,
    plane_p: usize,
    /// Padded row length.
    wp: usize,
    cin: usize,
    /// This channel block's packed weights.
    w: *const f32,
    /// Output at (first channel of the block, row, first pixel).
    out: *mut f32,
    out_plane: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    #[inline(always)]
    unsafe fn run<const M: usize, const V: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm256_setzero_ps(); V]; M];
        for ci in 0..self.cin {
            let base = self.x.add(ci * self.plane_p);
            let wci = self.w.add(ci * 9 * M);
            for ky in 0..3 {
                let row = base.add(ky * self.wp);
                for kx in 0..3 {
                    let mut xv = [_mm256_setzero_ps(); V];
                    for (v, xv) in xv.iter_mut().enumerate() {
                        *xv = _mm256_loadu_ps(row.add(kx + 8 * v));
                    }
                    let wt = wci.add((ky * 3 + kx) * M);
                    for (m, acc) in acc.iter_mut().enumerate() {
                        let b = _mm256_broadcast_ss(&*wt.add(m));
                        for (a, xv) in acc.iter_mut().zip(&xv) {
                            *a = _mm256_fmadd_ps(b, *xv, *a);
                        }
                    }
                }
            }
        }
        for (m, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(self.out.add(m * self.out_plane + 8 * v), *a);
            }
        }
    }
}

/// Whether [`weight_grad_chunk`] handles this convolution's weight gradient.
///
/// Beyond the 3×3 'same' geometry: output channels in whole AVX2 vectors, and products large
/// enough that `gemm` runs its general kernels (it hands `m·n ≤ 256` to a horizontal kernel and
/// inner dimensions ≤ 2 to another, with other summation orders).
pub(crate) fn weight_grad_applies(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.groups == 1
        && g.cout.is_multiple_of(8)
        && g.cout * g.k_g() > 256
        && g.h * g.w >= 8
        && cpu_has_avx2_fma()
}

/// The K block length `gemm` uses for an `m×k · k×n` product: it sums each block's products in
/// registers and adds the block to the destination, so matching its sums means matching this.
fn gemm_kc(m: usize, n: usize, k: usize) -> usize {
    if m <= 64 && n <= 64 {
        // gemm-common's shortcut for small products (`gemm_basic_generic`).
        return k.min(512);
    }
    // The f32 register tile gemm picks: 3×16 × 6 with AVX-512 (gemm's `x86-v4` feature), else
    // 2×8 × 6.
    #[cfg(target_arch = "x86_64")]
    let mr = if std::is_x86_feature_detected!("avx512f") {
        48
    } else {
        16
    };
    #[cfg(not(target_arch = "x86_64"))]
    let mr = 16;
    gemm_common::cache::kernel_params(m, n, k, mr, 6, 4).kc
}

/// Adds the weight gradient of images `b0..b0+nb` to `dw` (Cout × Cin·9, row-major) exactly as
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
    let (h, w, cin, cout) = (g.h, g.w, g.cin, g.cout);
    let (p, k) = (h * w, cin * 9);
    let wp = w + 2;
    let plane_p = (h + 2) * wp;
    let img_p = cin * plane_p;
    let ld = nb * p;
    assert!(dw.len() >= cout * k);
    // Zero-bordered copies of the chunk's images, and dY transposed to (column, Cout) so one
    // column's output gradients are one contiguous vector load per 8 channels.
    let pad = super::scratch::sized(pad, nb * img_p);
    for i in 0..nb {
        let xi = &x[x_img(b0 + i)..];
        for c in 0..cin {
            let src = &xi[c * x_sc..c * x_sc + p];
            let dst = &mut pad[i * img_p + c * plane_p..i * img_p + (c + 1) * plane_p];
            dst[..wp].fill(0.0);
            dst[(h + 1) * wp..].fill(0.0);
            for y in 0..h {
                let row = &mut dst[(y + 1) * wp..(y + 2) * wp];
                row[0] = 0.0;
                row[wp - 1] = 0.0;
                row[1..=w].copy_from_slice(&src[y * w..(y + 1) * w]);
            }
        }
    }
    let dyt = super::scratch::sized(dyt, ld * cout);
    for i in 0..nb {
        let di = &dy[dy_img(b0 + i)..];
        for co in 0..cout {
            let src = &di[co * dy_sc..co * dy_sc + p];
            for (j, v) in src.iter().enumerate() {
                dyt[(i * p + j) * cout + co] = *v;
            }
        }
    }
    // Column c (image i, pixel y·W + x) reads tap (ci, ky, kx) at col_off[c] + k_off[ci·9+ky·3+kx].
    let col_off: Vec<u32> = (0..ld)
        .map(|c| {
            let (i, j) = (c / p, c % p);
            (i * img_p + (j / w) * wp + j % w) as u32
        })
        .collect();
    let k_off: Vec<u32> = (0..k)
        .map(|kk| {
            let (ci, t) = (kk / 9, kk % 9);
            (ci * plane_p + (t / 3) * wp + t % 3) as u32
        })
        .collect();
    let kc = gemm_kc(cout, k, ld);
    let mut c_lo = 0;
    while c_lo < ld {
        let c_hi = (c_lo + kc).min(ld);
        let mut co0 = 0;
        while co0 < cout {
            let v = [4, 2, 1]
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
                        (4, _) => t.run::<4, 3>(&k_off[k0..]),
                        (2, 6..) => t.run::<2, 6>(&k_off[k0..]),
                        (2, _) => t.run::<2, 3>(&k_off[k0..]),
                        (_, 12..) => t.run::<1, 12>(&k_off[k0..]),
                        (_, 9..) => t.run::<1, 9>(&k_off[k0..]),
                        (_, 6..) => t.run::<1, 6>(&k_off[k0..]),
                        _ => t.run::<1, 3>(&k_off[k0..]),
                    }
                };
            }
            co0 += 8 * v;
        }
        c_lo = c_hi;
    }
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
    /// Returns T (columns of dW done). K = Cin·9 is a multiple of 3, so T = 3 always fits.
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
