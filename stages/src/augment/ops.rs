//! Generic image operations: u8 HWC → f32 CHW conversion, bicubic resize of a crop, brightness,
//! contrast, HSV saturation and hue, grayscale, Gaussian blur, clipping. Deterministic: every
//! random draw is the caller's ([`super::augment_into`], the SimCLR policy, which also fixes their
//! order). Where an operation follows TF2's `tf.image`, its doc says so.

/// A crop rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub y: usize,
    pub x: usize,
    pub h: usize,
    pub w: usize,
}

/// `v / 255` for every byte value, correctly rounded (a multiply by 1/255 is off by an ulp for some).
const UNIT: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

/// u8 HWC → f32 CHW / 255, optionally mirrored left-right.
pub(super) fn copy_to_planes(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    flip: bool,
    out: &mut [f32],
) {
    let plane = h * w;
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            let s = (y * w + sx) * c;
            for ch in 0..c {
                out[ch * plane + y * w + x] = UNIT[src[s + ch] as usize];
            }
        }
    }
}

/// Keys' cubic convolution kernel with a = −0.5 (TF's and PIL's bicubic).
fn keys_cubic(x: f32) -> f32 {
    let x = x.abs();
    if x <= 1.0 {
        (1.5 * x - 2.5) * x * x + 1.0
    } else if x < 2.0 {
        ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    } else {
        0.0
    }
}

/// For each of `out_len` output positions: 4 source indices (absolute, already offset by `start`)
/// and their weights, sampling a span of `in_len` source pixels with half-pixel centres.
fn cubic_taps(start: usize, in_len: usize, out_len: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let pos = (o as f32 + 0.5) * scale - 0.5;
            let base = pos.floor();
            let t = pos - base;
            let mut idx = [0usize; 4];
            let mut wts = [0f32; 4];
            let mut sum = 0.0;
            for k in 0..4 {
                let i = base as isize - 1 + k as isize;
                let wk = keys_cubic(t + 1.0 - k as f32);
                // Taps outside the crop are dropped and the remaining weights renormalised.
                if i >= 0 && (i as usize) < in_len {
                    idx[k] = start + i as usize;
                    wts[k] = wk;
                    sum += wk;
                } else {
                    idx[k] = start;
                    wts[k] = 0.0;
                }
            }
            for wk in &mut wts {
                *wk /= sum;
            }
            (idx, wts)
        })
        .collect()
}

/// Bicubic resize of `crop` of the u8 HWC image to the full `h`×`w`, into f32 CHW planes.
pub(super) fn resize_bicubic(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    crop: CropBox,
    flip: bool,
    out: &mut [f32],
) {
    const INV: f32 = 1.0 / 255.0;
    let mut xt = cubic_taps(crop.x, crop.w, w);
    if flip {
        xt.reverse();
    }
    let yt = cubic_taps(crop.y, crop.h, h);
    // Horizontal pass over the crop's rows: rows[ch][r][ox].
    let mut rows = vec![0f32; c * crop.h * w];
    for r in 0..crop.h {
        let row = &src[(crop.y + r) * w * c..(crop.y + r + 1) * w * c];
        for (ox, (idx, wts)) in xt.iter().enumerate() {
            for ch in 0..c {
                let mut acc = 0.0;
                for k in 0..4 {
                    acc += wts[k] * row[idx[k] * c + ch] as f32;
                }
                rows[(ch * crop.h + r) * w + ox] = acc * INV;
            }
        }
    }
    // Vertical pass.
    let plane = h * w;
    for ch in 0..c {
        let rows_c = &rows[ch * crop.h * w..(ch + 1) * crop.h * w];
        for (oy, (idx, wts)) in yt.iter().enumerate() {
            let dst = &mut out[ch * plane + oy * w..ch * plane + (oy + 1) * w];
            let r: [&[f32]; 4] =
                std::array::from_fn(|k| &rows_c[(idx[k] - crop.y) * w..(idx[k] - crop.y + 1) * w]);
            for ox in 0..w {
                dst[ox] =
                    wts[0] * r[0][ox] + wts[1] * r[1][ox] + wts[2] * r[2][ox] + wts[3] * r[3][ox];
            }
        }
    }
}

/// Multiplies every value by `f` (brightness).
pub(super) fn brightness(img: &mut [f32], f: f32) {
    for v in img.iter_mut() {
        *v *= f;
    }
}

/// Scales each CHW plane's deviation from its mean by `f` (contrast per channel).
pub(super) fn contrast(img: &mut [f32], plane: usize, f: f32) {
    for p in img.chunks_exact_mut(plane) {
        let mean = p.iter().sum::<f32>() / plane as f32;
        for v in p {
            *v = (*v - mean) * f + mean;
        }
    }
}

/// Multiplies a CHW RGB image's HSV saturation by `f`, clamped to [0, 1].
pub(super) fn saturation(img: &mut [f32], plane: usize, f: f32) {
    map_hsv(img, plane, |h, s, v| (h, (s * f).clamp(0.0, 1.0), v));
}

/// Turns a CHW RGB image's hue by `d` (in turns), wrapping to [0, 1).
pub(super) fn hue_shift(img: &mut [f32], plane: usize, d: f32) {
    map_hsv(img, plane, |h, s, v| {
        let h = h + d;
        (h - h.floor(), s, v)
    });
}

/// Clamps every value to [0, 1].
pub(super) fn clip(x: &mut [f32]) {
    for v in x {
        *v = v.clamp(0.0, 1.0);
    }
}

/// Applies `f(hue, saturation, value)` to every pixel of a CHW RGB image in HSV space (hue in
/// [0, 1)), as TF's `adjust_saturation` and `adjust_hue` do.
fn map_hsv(img: &mut [f32], plane: usize, f: impl Fn(f32, f32, f32) -> (f32, f32, f32)) {
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (h, s, v) = rgb_to_hsv(*r, *g, *b);
        let (h, s, v) = f(h, s, v);
        (*r, *g, *b) = hsv_to_rgb(h, s, v);
    }
}

/// Hue in [0, 1), saturation, value (TF's `rgb_to_hsv`).
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let range = max - min;
    let s = if max > 0.0 { range / max } else { 0.0 };
    let mut h = if range <= 0.0 {
        0.0
    } else if max == r {
        (g - b) / range
    } else if max == g {
        (b - r) / range + 2.0
    } else {
        (r - g) / range + 4.0
    } / 6.0;
    if h < 0.0 {
        h += 1.0;
    }
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor();
    let frac = h6 - sector;
    let p = v * (1.0 - s);
    let q = v * (1.0 - s * frac);
    let t = v * (1.0 - s * (1.0 - frac));
    match sector as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Replaces every channel of a CHW RGB image by its luma.
pub(super) fn to_grayscale(img: &mut [f32], plane: usize) {
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in 0..plane {
        let y = 0.2989 * r[i] + 0.5870 * g[i] + 0.1140 * b[i];
        r[i] = y;
        g[i] = y;
        b[i] = y;
    }
}

/// Separable Gaussian blur of each CHW plane, zero padding, as the reference's `gaussian_blur` with
/// `kernel_size = H / 10`.
pub(super) fn gaussian_blur(img: &mut [f32], h: usize, w: usize, c: usize, sigma: f32) {
    let radius = (h / 10 / 2) as isize;
    if radius == 0 {
        return;
    }
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|x| (-((x * x) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);

    let plane = h * w;
    let mut tmp = vec![0f32; plane];
    for p in img.chunks_exact_mut(plane).take(c) {
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (k, kv) in kernel.iter().enumerate() {
                    let sx = x as isize + k as isize - radius;
                    if (0..w as isize).contains(&sx) {
                        acc += kv * p[y * w + sx as usize];
                    }
                }
                tmp[y * w + x] = acc;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (k, kv) in kernel.iter().enumerate() {
                    let sy = y as isize + k as isize - radius;
                    if (0..h as isize).contains(&sy) {
                        acc += kv * tmp[sy as usize * w + x];
                    }
                }
                p[y * w + x] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn random_image(h: usize, w: usize, c: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..h * w * c).map(|_| rng.gen()).collect()
    }

    #[test]
    fn bicubic_reproduces_a_ramp_inside_the_crop() {
        // Value = 8·x: a crop of the left half, upsampled 2×, samples the ramp at half-pixel steps.
        let (h, w) = (8, 32);
        let src: Vec<u8> = (0..h * w).map(|i| (8 * (i % w)) as u8).collect();
        let mut out = vec![0f32; h * w];
        resize_bicubic(
            &src,
            h,
            w,
            1,
            CropBox {
                y: 0,
                x: 0,
                h,
                w: 16,
            },
            false,
            &mut out,
        );
        for ox in 4..w - 4 {
            let pos = (ox as f32 + 0.5) * 0.5 - 0.5;
            let want = 8.0 * pos / 255.0;
            assert!(
                (out[3 * w + ox] - want).abs() < 1e-5,
                "x {ox}: {} vs {want}",
                out[3 * w + ox]
            );
        }
        // A constant image stays constant everywhere, borders included.
        let src = vec![77u8; 32 * 32 * 3];
        let mut out = vec![0f32; 32 * 32 * 3];
        resize_bicubic(
            &src,
            32,
            32,
            3,
            CropBox {
                y: 3,
                x: 5,
                h: 11,
                w: 17,
            },
            true,
            &mut out,
        );
        assert!(out.iter().all(|v| (v - 77.0 / 255.0).abs() < 1e-5));
    }

    #[test]
    fn hsv_roundtrip_and_hue_shift() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..1000 {
            let (r, g, b): (f32, f32, f32) = (rng.gen(), rng.gen(), rng.gen());
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() + (g - g2).abs() + (b - b2).abs() < 1e-5);
        }
        // A third of a turn takes pure red to pure green.
        let mut img = vec![1.0, 0.0, 0.0];
        map_hsv(&mut img, 1, |h, s, v| (h + 1.0 / 3.0, s, v));
        assert!(
            (img[0]).abs() < 1e-6 && (img[1] - 1.0).abs() < 1e-6 && img[2].abs() < 1e-6,
            "{img:?}"
        );
    }

    #[test]
    fn blur_keeps_constant_interior_and_smooths() {
        let (h, w) = (40, 40); // kernel 40/10 = 4 → radius 2
        let mut img = vec![0.5f32; h * w];
        gaussian_blur(&mut img, h, w, 1, 1.5);
        assert!((img[20 * w + 20] - 0.5).abs() < 1e-6);
        assert!(img[0] < 0.5, "zero padding darkens the corner");
        let mut spike = vec![0f32; h * w];
        spike[20 * w + 20] = 1.0;
        gaussian_blur(&mut spike, h, w, 1, 1.0);
        assert!(spike[20 * w + 20] < 0.5 && spike[20 * w + 21] > 0.0);
        assert!((spike.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // Below 20 px the reference's kernel has one tap: no blur.
        let mut small = random_image(16, 16, 1, 7)
            .iter()
            .map(|&v| v as f32)
            .collect::<Vec<_>>();
        let before = small.clone();
        gaussian_blur(&mut small, 16, 16, 1, 2.0);
        assert_eq!(small, before);
    }
}
