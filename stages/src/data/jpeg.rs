//! Which JPEG decoder an image-folder dataset is read with (the dataset's `decoder` option).
//!
//! Two decoders of the same files give slightly different pixels: JPEG leaves the inverse DCT's
//! rounding and the chroma upsampling filter to the decoder. On the quickstart's 6,000 CIFAR-10
//! JPEGs (4:2:0 chroma) the default, zune-jpeg, differs from PIL's libjpeg-turbo in 21.8% of the
//! bytes, by up to 5/255, in every image; `libjpeg-turbo` decodes them bit-identically to PIL
//! (PIL 13.0 with libjpeg-turbo 3.2.0), so pixels match PIL/torchvision pipelines exactly.
//!
//! `libjpeg-turbo` is libjpeg-turbo's decompressor as the `mozjpeg` crate builds it from bundled C
//! source (mozjpeg is libjpeg-turbo with another encoder; decompression is libjpeg-turbo's:
//! accurate integer IDCT, "fancy" triangular chroma upsampling, the library's defaults, which PIL
//! uses). It is built without its SIMD assembly (no nasm needed), which gives the same bits.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// The decoder of a dataset's JPEG files (PNGs always go through the `image` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JpegDecoder {
    /// zune-jpeg, through the `image` crate (the default; every key from before the option
    /// existed was computed with it).
    #[default]
    ZuneJpeg,
    /// libjpeg-turbo's decoder: the pixels PIL and torchvision's `decode_jpeg` produce.
    LibjpegTurbo,
}

impl JpegDecoder {
    pub fn is_default(&self) -> bool {
        *self == JpegDecoder::ZuneJpeg
    }
}

/// Whether `bytes` start like a JPEG file (SOI marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decode a JPEG with libjpeg-turbo into (width, height, gray, HW or HWC bytes). `max_bytes`
/// bounds what the header may promise (a corrupt header cannot make it allocate more).
pub fn decode_libjpeg_turbo(bytes: &[u8], max_bytes: u64) -> Result<(u32, u32, bool, Vec<u8>)> {
    // libjpeg reports fatal errors by unwinding out of its error handler; the mozjpeg crate turns
    // most into io errors, and catch_unwind keeps any other from crossing a rayon worker.
    let decoded = std::panic::catch_unwind(|| -> Result<(u32, u32, bool, Vec<u8>)> {
        let d = mozjpeg::Decompress::new_mem(bytes).context("reading the JPEG header")?;
        let (w, h) = (d.width(), d.height());
        let gray = d.color_space() == mozjpeg::ColorSpace::JCS_GRAYSCALE;
        let channels = if gray { 1 } else { 3 };
        let promised = (w as u64) * (h as u64) * channels;
        ensure!(
            promised <= max_bytes,
            "its header says {w}×{h} pixels ({promised} bytes decoded), more than a {}-byte file \
             can hold: corrupt header",
            bytes.len()
        );
        if matches!(
            d.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        ) {
            bail!("a CMYK JPEG: libjpeg-turbo does not convert it to RGB; use decoder = \"zune-jpeg\"");
        }
        let mut started =
            if gray { d.grayscale() } else { d.rgb() }.context("starting the decompression")?;
        let pixels = started
            .read_scanlines::<u8>()
            .context("decoding the scanlines")?;
        started.finish().context("finishing the decompression")?;
        ensure!(
            pixels.len() as u64 == promised,
            "decoded {} bytes, expected {promised}",
            pixels.len()
        );
        Ok((w as u32, h as u32, gray, pixels))
    });
    match decoded {
        Ok(r) => r,
        Err(_) => bail!("libjpeg-turbo could not decode it (corrupt JPEG data)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, 128]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_rgb_and_refuses_broken_files_without_panicking() {
        let bytes = jpeg(12, 5);
        assert!(is_jpeg(&bytes));
        let (w, h, gray, px) = decode_libjpeg_turbo(&bytes, 1 << 20).unwrap();
        assert_eq!((w, h, gray, px.len()), (12, 5, false, 12 * 5 * 3));
        // A header promising more than the file can hold.
        let err = decode_libjpeg_turbo(&bytes, 100).unwrap_err();
        assert!(format!("{err:#}").contains("corrupt header"), "{err:#}");
        // Truncated data decodes with libjpeg's fill-in (a warning, as PIL's LOAD_TRUNCATED_IMAGES);
        // junk is an error, not a panic.
        let _ = decode_libjpeg_turbo(&bytes[..bytes.len() / 2], 1 << 20);
        assert!(decode_libjpeg_turbo(&[0xFF, 0xD8, 0xFF, 0, 1, 2], 1 << 20).is_err());
    }

    #[test]
    fn the_default_decoder_stays_out_of_resolved_params() {
        assert!(JpegDecoder::default().is_default());
        let v = serde_json::to_value(JpegDecoder::LibjpegTurbo).unwrap();
        assert_eq!(v, "libjpeg-turbo");
    }
}
