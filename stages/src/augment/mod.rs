//! SimCLR data augmentation (SimCLR v1 Appendix A; reference: google-research/simclr `tf2/data_util.py`).
//!
//! One call turns a u8 HWC image into an f32 CHW image in [0, 1] of the same size:
//! random resized crop → horizontal flip → colour jitter (p = 0.8, random order) → grayscale
//! (p = 0.2) → Gaussian blur (p = 0.5, optional) → clip.
//!
//! Where the paper and the reference code differ, the paper wins:
//! - crop area is drawn uniformly from [0.08, 1] of the image (the reference's
//!   `min_object_covered = 0.1` would silently raise the lower bound to 0.1).
//!
//! Where the paper is silent, the reference is followed:
//! - aspect ratio uniform in [3/4, 4/3]; up to 100 attempts, then the whole image;
//! - bicubic resize (Keys, a = −0.5, half-pixel centres, taps outside the crop dropped and the rest
//!   renormalised, as TF2's `tf.image.resize`), not clipped until the colour ops clip;
//! - SimCLRv2 brightness: multiply by a factor in [max(0, 1 − 0.8s), 1 + 0.8s]; contrast per channel
//!   around the channel mean; saturation and hue in HSV, factors 1 ± 0.8s and hue shift ± 0.2s;
//!   clip after each of the four ops;
//! - grayscale with ITU-R 601 weights (0.2989, 0.5870, 0.1140), kept as three channels;
//! - blur kernel of 2·⌊⌊H/10⌋/2⌋ + 1 taps (3 for 32 px: no blur below 20 px), σ ∈ [0.1, 2],
//!   zero ("SAME") padding.
//!
//! This module is the policy (what a view is: which operations, with which random parameters, in
//! which order); the pixel operations themselves are generic and live in `ops.rs`.
//!
//! Randomness: every (seed, epoch, sample index, view) gets its own ChaCha8 stream
//! ([`sample_rng`]), so a sample's augmentation never depends on thread count, batch composition or
//! order, and resumed training reproduces it exactly.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::derive_seed;

mod ops;

pub use ops::CropBox;

/// Which augmentations to apply and how strongly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentCfg {
    /// Random resized crop.
    pub crop: bool,
    /// Smallest crop area as a fraction of the image (0.08).
    pub crop_min_area: f32,
    /// Aspect-ratio range (width / height) of the crop (3/4, 4/3).
    pub crop_aspect: (f32, f32),
    /// Horizontal flip with p = 0.5.
    pub flip: bool,
    /// Colour-jitter strength s (0 = off).
    pub color_jitter: f32,
    /// Probability of applying colour jitter (0.8).
    pub color_p: f32,
    /// Probability of converting to grayscale (0.2).
    pub grayscale_p: f32,
    /// Probability of Gaussian blur (0 = off; 0.5 when on).
    pub blur_p: f32,
    /// Range of the blur's σ in pixels (0.1, 2.0).
    pub blur_sigma: (f32, f32),
}

impl AugmentCfg {
    /// The SimCLR pretraining augmentation with colour strength `strength` (SimCLRv2 uses 1.0 on
    /// ImageNet; SimCLR's CIFAR-10 runs use 0.5) and optional blur (on for ImageNet, off for CIFAR).
    pub fn simclr(strength: f32, blur: bool) -> Self {
        AugmentCfg {
            crop: true,
            crop_min_area: 0.08,
            crop_aspect: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
            color_jitter: strength,
            color_p: 0.8,
            grayscale_p: 0.2,
            blur_p: if blur { 0.5 } else { 0.0 },
            blur_sigma: (0.1, 2.0),
        }
    }

    /// Random resized crop and flip only (fine-tuning and distillation).
    pub fn crop_flip() -> Self {
        AugmentCfg {
            color_jitter: 0.0,
            color_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            ..Self::simclr(0.0, false)
        }
    }

    /// No augmentation: the output is the input scaled to [0, 1] (evaluation).
    pub fn none() -> Self {
        AugmentCfg {
            crop: false,
            flip: false,
            ..Self::crop_flip()
        }
    }

    /// Whether this configuration leaves every image unchanged.
    pub fn is_identity(&self) -> bool {
        !self.crop
            && !self.flip
            && (self.color_jitter == 0.0 || self.color_p == 0.0)
            && self.grayscale_p == 0.0
            && self.blur_p == 0.0
    }
}

/// The random stream of one augmented view of one sample.
pub fn sample_rng(seed: u64, epoch: usize, index: usize, view: u32) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(
        "augment",
        &[seed, epoch as u64, index as u64, u64::from(view)],
    ))
}

const CROP_ATTEMPTS: usize = 100;

/// Draws a random resized crop box of an `h`×`w` image: area uniform in [`crop_min_area`, 1] of
/// the image, aspect ratio uniform in `crop_aspect`, rounded to whole pixels, uniformly placed;
/// the whole image if no draw fits in 100 attempts.
pub fn sample_crop(h: usize, w: usize, cfg: &AugmentCfg, rng: &mut impl Rng) -> CropBox {
    let total = (h * w) as f32;
    for _ in 0..CROP_ATTEMPTS {
        let area = rng.gen_range(cfg.crop_min_area..=1.0) * total;
        let aspect = rng.gen_range(cfg.crop_aspect.0..=cfg.crop_aspect.1);
        let cw = (area * aspect).sqrt().round() as usize;
        let ch = (area / aspect).sqrt().round() as usize;
        if (1..=w).contains(&cw) && (1..=h).contains(&ch) {
            let y = rng.gen_range(0..=h - ch);
            let x = rng.gen_range(0..=w - cw);
            return CropBox { y, x, h: ch, w: cw };
        }
    }
    CropBox { y: 0, x: 0, h, w }
}

/// Augments one image: `src` is `h·w·c` u8 in HWC order, `out` receives `c·h·w` f32 in CHW order,
/// values in [0, 1]. All randomness comes from `rng`.
#[allow(clippy::too_many_arguments)]
pub fn augment_into(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    cfg: &AugmentCfg,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    assert_eq!(src.len(), h * w * c, "source is not {h}×{w}×{c}");
    assert_eq!(out.len(), h * w * c, "output is not {c}×{h}×{w}");
    let crop = if cfg.crop {
        sample_crop(h, w, cfg, rng)
    } else {
        CropBox { y: 0, x: 0, h, w }
    };
    let flip = cfg.flip && rng.gen::<f32>() < 0.5;
    if (crop.h, crop.w) == (h, w) {
        ops::copy_to_planes(src, h, w, c, flip, out);
    } else {
        ops::resize_bicubic(src, h, w, c, crop, flip, out);
    }

    let plane = h * w;
    if cfg.color_jitter > 0.0 && rng.gen::<f32>() < cfg.color_p {
        color_jitter(out, plane, c, cfg.color_jitter, rng);
    }
    if cfg.grayscale_p > 0.0 && rng.gen::<f32>() < cfg.grayscale_p && c == 3 {
        ops::to_grayscale(out, plane);
    }
    if cfg.blur_p > 0.0 && rng.gen::<f32>() < cfg.blur_p {
        let sigma = rng.gen_range(cfg.blur_sigma.0..=cfg.blur_sigma.1);
        ops::gaussian_blur(out, h, w, c, sigma);
    }
    ops::clip(out);
}

/// Brightness, contrast, saturation and hue in a random order, each clipped to [0, 1].
fn color_jitter(img: &mut [f32], plane: usize, c: usize, s: f32, rng: &mut impl Rng) {
    let (b, ct, sat, hue) = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s);
    let mut order = [0u8, 1, 2, 3];
    order.shuffle(rng);
    for op in order {
        match op {
            0 => {
                let f = rng.gen_range((1.0 - b).max(0.0)..=1.0 + b);
                ops::brightness(img, f);
            }
            1 => {
                let f = rng.gen_range((1.0 - ct).max(0.0)..=1.0 + ct);
                ops::contrast(img, plane, f);
            }
            2 => {
                let f = rng.gen_range((1.0 - sat).max(0.0)..=1.0 + sat);
                if c == 3 {
                    ops::saturation(img, plane, f);
                }
            }
            _ => {
                let d = rng.gen_range(-hue..=hue);
                if c == 3 {
                    ops::hue_shift(img, plane, d);
                }
            }
        }
        ops::clip(img);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_image(h: usize, w: usize, c: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..h * w * c).map(|_| rng.gen()).collect()
    }

    fn run(
        src: &[u8],
        h: usize,
        w: usize,
        c: usize,
        cfg: &AugmentCfg,
        rng_id: (u64, usize, usize, u32),
    ) -> Vec<f32> {
        let mut out = vec![0f32; h * w * c];
        let mut rng = sample_rng(rng_id.0, rng_id.1, rng_id.2, rng_id.3);
        augment_into(src, h, w, c, cfg, &mut rng, &mut out);
        out
    }

    /// u8 HWC → f32 CHW / 255, the reference for unaugmented output.
    fn planes(src: &[u8], h: usize, w: usize, c: usize) -> Vec<f32> {
        let mut out = vec![0f32; h * w * c];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    out[ch * h * w + y * w + x] = src[(y * w + x) * c + ch] as f32 / 255.0;
                }
            }
        }
        out
    }

    #[test]
    fn none_is_identity() {
        let src = random_image(5, 7, 3, 0);
        assert!(AugmentCfg::none().is_identity());
        assert!(!AugmentCfg::crop_flip().is_identity());
        assert_eq!(
            run(&src, 5, 7, 3, &AugmentCfg::none(), (1, 2, 3, 0)),
            planes(&src, 5, 7, 3)
        );
    }

    #[test]
    fn same_stream_same_output_other_stream_other_output() {
        let src = random_image(32, 32, 3, 1);
        let cfg = AugmentCfg::simclr(1.0, true);
        let a = run(&src, 32, 32, 3, &cfg, (9, 4, 17, 0));
        assert_eq!(a, run(&src, 32, 32, 3, &cfg, (9, 4, 17, 0)));
        for other in [(10, 4, 17, 0), (9, 5, 17, 0), (9, 4, 18, 0), (9, 4, 17, 1)] {
            assert_ne!(a, run(&src, 32, 32, 3, &cfg, other), "{other:?}");
        }
    }

    #[test]
    fn output_stays_in_unit_range() {
        for (i, cfg) in [
            AugmentCfg::simclr(1.0, true),
            AugmentCfg::simclr(2.0, false),
            AugmentCfg::crop_flip(),
        ]
        .iter()
        .enumerate()
        {
            for s in 0..50 {
                let src = random_image(32, 32, 3, s);
                let out = run(&src, 32, 32, 3, cfg, (s, i, 0, 0));
                assert!(
                    out.iter().all(|v| (0.0..=1.0).contains(v)),
                    "cfg {i} sample {s}"
                );
            }
        }
    }

    #[test]
    fn flip_mirrors_rows() {
        let (h, w, c) = (4, 6, 3);
        let src = random_image(h, w, c, 2);
        let cfg = AugmentCfg {
            flip: true,
            ..AugmentCfg::none()
        };
        let plain = planes(&src, h, w, c);
        let mut mirrored = plain.clone();
        for row in mirrored.chunks_exact_mut(w) {
            row.reverse();
        }
        let (mut n_plain, mut n_mirror) = (0, 0);
        for s in 0..200 {
            let out = run(&src, h, w, c, &cfg, (s, 0, 0, 0));
            if out == plain {
                n_plain += 1;
            } else {
                assert_eq!(out, mirrored);
                n_mirror += 1;
            }
        }
        assert!(
            (70..=130).contains(&n_mirror),
            "{n_plain} plain, {n_mirror} mirrored"
        );
    }

    #[test]
    fn crop_area_and_aspect_follow_the_paper() {
        let cfg = AugmentCfg::simclr(1.0, false);
        let mut rng = sample_rng(0, 0, 0, 0);
        let n = 4000;
        let mut areas = Vec::with_capacity(n);
        for _ in 0..n {
            let b = sample_crop(32, 32, &cfg, &mut rng);
            assert!(b.y + b.h <= 32 && b.x + b.w <= 32 && b.h > 0 && b.w > 0);
            let area = (b.h * b.w) as f32 / 1024.0;
            // Rounding a 0.08·1024-pixel crop to whole pixels can lose a little area.
            assert!((0.065..=1.0).contains(&area), "area {area}");
            let aspect = b.w as f32 / b.h as f32;
            // One pixel of rounding on a ~9-pixel side stretches the aspect ratio by up to ~12%.
            assert!(
                (0.75 / 1.13..=1.3334 * 1.13).contains(&aspect),
                "aspect {aspect} of {b:?}"
            );
            areas.push(area);
        }
        let mean = areas.iter().sum::<f32>() / n as f32;
        // Uniform on [0.08, 1] has mean 0.54; draws that do not fit are redrawn, which lowers it a bit.
        assert!((0.44..0.58).contains(&mean), "mean crop area {mean}");
        let small = areas.iter().filter(|&&a| a < 0.3).count() as f32 / n as f32;
        assert!(
            (0.15..0.35).contains(&small),
            "fraction of crops below 0.3: {small}"
        );
    }

    #[test]
    fn grayscale_gives_equal_channels() {
        let src = random_image(8, 8, 3, 3);
        let cfg = AugmentCfg {
            grayscale_p: 1.0,
            ..AugmentCfg::none()
        };
        let out = run(&src, 8, 8, 3, &cfg, (0, 0, 0, 0));
        let (r, rest) = out.split_at(64);
        let (g, b) = rest.split_at(64);
        assert_eq!(r, g);
        assert_eq!(g, b);
        let want = (0.2989 * src[0] as f32 + 0.587 * src[1] as f32 + 0.114 * src[2] as f32) / 255.0;
        assert!((r[0] - want).abs() < 1e-6);
    }

    #[test]
    fn color_jitter_changes_colors_and_gray_input_stays_gray() {
        let src = random_image(16, 16, 3, 5);
        let cfg = AugmentCfg {
            color_jitter: 1.0,
            color_p: 1.0,
            ..AugmentCfg::none()
        };
        let plain = planes(&src, 16, 16, 3);
        assert_ne!(run(&src, 16, 16, 3, &cfg, (0, 0, 0, 0)), plain);
        // One channel: brightness and contrast apply, hue and saturation are no-ops.
        let gray = random_image(16, 16, 1, 6);
        let out = run(&gray, 16, 16, 1, &cfg, (0, 0, 0, 0));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_ne!(out, planes(&gray, 16, 16, 1));
    }
}
