//! Image-folder trees: `<root>/<split>/<class>/*.jpg|*.jpeg|*.png`, as CIFAR-10 JPEG dumps and
//! ImageNet use.
//!
//! Classes are the sorted directory names of the train split (label id = position), files are taken in
//! sorted name order, so the decoded arrays do not depend on directory listing order. Decoding runs in
//! parallel; errors are reported for the first bad file in that sorted order, so they are deterministic
//! too.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use image::{ColorType, ImageDecoder, ImageReader};
use rayon::prelude::*;

use super::jpeg::{self, JpegDecoder};
use super::{Dataset, Images};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

fn layout_hint(root: &Path, split: &str) -> String {
    format!(
        "an image-folder dataset is laid out as {}/{split}/<class>/*.jpg|*.jpeg|*.png",
        root.display()
    )
}

/// Reads the `train` and `test` splits under `root` (JPEGs with the default decoder).
pub fn read(root: &Path, train: &str, test: &str) -> Result<Dataset> {
    read_with(root, train, test, JpegDecoder::default())
}

/// [`read`] with the JPEG decoder `decoder` (see [`super::jpeg`]).
pub fn read_with(root: &Path, train: &str, test: &str, decoder: JpegDecoder) -> Result<Dataset> {
    let train_dir = root.join(train);
    let classes = class_dirs(&train_dir).with_context(|| layout_hint(root, train))?;
    ensure!(
        !classes.is_empty(),
        "{} has no class directories; {}",
        train_dir.display(),
        layout_hint(root, train)
    );
    let test_dir = root.join(test);
    let test_classes = class_dirs(&test_dir).with_context(|| layout_hint(root, test))?;
    if let Some(extra) = test_classes.iter().find(|c| !classes.contains(c)) {
        bail!(
            "{} has class directory `{extra}` that {} lacks: both splits must use the same classes",
            test_dir.display(),
            train_dir.display()
        );
    }

    let train_files = list_files(&train_dir, &classes, true)?;
    let test_files = list_files(&test_dir, &classes, false)?;
    let n_train = train_files.len();
    let all: Vec<(PathBuf, u32)> = train_files.into_iter().chain(test_files).collect();

    let decoded: Vec<Result<Decoded>> = all.par_iter().map(|(p, _)| decode(p, decoder)).collect();
    let mut images = Vec::with_capacity(decoded.len());
    for (d, (path, _)) in decoded.into_iter().zip(&all) {
        images.push(d.with_context(|| format!("cannot decode image {}", path.display()))?);
    }

    let (w, h) = (images[0].width, images[0].height);
    if let Some((i, d)) = images
        .iter()
        .enumerate()
        .find(|(_, d)| (d.width, d.height) != (w, h))
    {
        bail!(
            "image {} is {}×{} but {} is {w}×{h}: all images of a dataset must share one size \
             (resize them beforehand)",
            all[i].0.display(),
            d.width,
            d.height,
            all[0].0.display()
        );
    }
    // A tree of only grayscale images stays one-channel; a mixed tree is promoted to RGB.
    let c = if images.iter().all(|d| d.gray) { 1 } else { 3 };

    let mut assemble = |range: std::ops::Range<usize>| -> Images {
        let mut out = Images::empty(h as usize, w as usize, c);
        out.n = range.len();
        out.pixels.reserve_exact(range.len() * out.image_len());
        for i in range {
            let d = std::mem::take(&mut images[i]);
            if c == 3 && d.gray {
                out.pixels.extend(d.bytes.iter().flat_map(|&v| [v, v, v]));
            } else {
                out.pixels.extend_from_slice(&d.bytes);
            }
            out.labels.push(all[i].1);
        }
        out
    };
    let train_images = assemble(0..n_train);
    let test_images = assemble(n_train..all.len());
    Ok(Dataset {
        classes,
        train: train_images,
        test: test_images,
    })
}

/// Sorted names of the subdirectories of `dir`.
fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("cannot list directory {}", dir.display()))?;
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot list directory {}", dir.display()))?;
        if e.file_type()?.is_dir() {
            let name = e.file_name().into_string().map_err(|n| {
                anyhow::anyhow!(
                    "class directory name {n:?} in {} is not valid UTF-8",
                    dir.display()
                )
            })?;
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Image files of each class directory in sorted name order, with their label.
fn list_files(
    split_dir: &Path,
    classes: &[String],
    require_all: bool,
) -> Result<Vec<(PathBuf, u32)>> {
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = split_dir.join(class);
        if !dir.is_dir() && !require_all {
            continue;
        }
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
            })
            .collect();
        ensure!(
            !files.is_empty() || !require_all,
            "class directory {} holds no .jpg/.jpeg/.png files",
            dir.display()
        );
        files.sort();
        out.extend(files.into_iter().map(|p| (p, label as u32)));
    }
    Ok(out)
}

#[derive(Default)]
struct Decoded {
    width: u32,
    height: u32,
    gray: bool,
    /// HW (gray) or HWC with 3 channels.
    bytes: Vec<u8>,
}

/// The most bytes an image file of `file_len` bytes may decode to: 2048 times its size (no PNG
/// can exceed deflate's ~1032:1, and a JPEG needs at least about a bit per 8×8 block), at least
/// 1 MiB.
fn max_decoded_bytes(file_len: u64) -> u64 {
    file_len.saturating_mul(2048).max(1 << 20)
}

fn decode(path: &Path, decoder: JpegDecoder) -> Result<Decoded> {
    if decoder == JpegDecoder::LibjpegTurbo {
        let bytes = fs::read(path)?;
        if jpeg::is_jpeg(&bytes) {
            let max = max_decoded_bytes(bytes.len() as u64);
            let (width, height, gray, bytes) = jpeg::decode_libjpeg_turbo(&bytes, max)?;
            return Ok(Decoded {
                width,
                height,
                gray,
                bytes,
            });
        }
    }
    // The format is guessed from the content, so a PNG named .jpg still decodes.
    let reader = ImageReader::open(path)?.with_guessed_format()?;
    // A header can promise any size: the image crate allows up to 512 MiB for it, and the JPEG
    // decoder fills missing data in, so a 300-byte JPEG whose header says 16385×4096 decoded to
    // 64 MiB (found by fuzzing). Check the header's promise against the file's size before
    // anything is decoded, and bound the decoder's allocations the same way.
    let file_len = fs::metadata(path)?.len();
    let max = max_decoded_bytes(file_len);
    let mut decoder = reader.into_decoder()?;
    let (w, h) = decoder.dimensions();
    let promised = decoder.total_bytes();
    ensure!(
        promised <= max,
        "its header says {w}×{h} pixels ({promised} bytes decoded), more than a {file_len}-byte file \
         can hold: corrupt header"
    );
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max);
    decoder.set_limits(limits)?;
    let img = image::DynamicImage::from_decoder(decoder)?;
    let gray = matches!(
        img.color(),
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16
    );
    let (width, height) = (img.width(), img.height());
    let bytes = if gray {
        img.into_luma8().into_raw()
    } else {
        img.into_rgb8().into_raw()
    };
    Ok(Decoded {
        width,
        height,
        gray,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, RgbImage};

    fn write_rgb(path: &Path, w: u32, h: u32, seed: u8) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([seed, (x * 10) as u8, (y * 20) as u8])
        });
        img.save(path).unwrap();
    }

    fn write_gray(path: &Path, w: u32, h: u32, seed: u8) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        GrayImage::from_fn(w, h, |x, y| image::Luma([seed + (x + y) as u8]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn reads_png_tree_in_sorted_order() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write_rgb(&r.join("train/dog/b.png"), 4, 3, 2);
        write_rgb(&r.join("train/dog/a.png"), 4, 3, 1);
        write_rgb(&r.join("train/cat/z.PNG"), 4, 3, 9);
        fs::write(r.join("train/cat/notes.txt"), "ignored").unwrap();
        write_rgb(&r.join("test/dog/x.png"), 4, 3, 7);
        let ds = read(r, "train", "test").unwrap();
        assert_eq!(ds.classes, ["cat", "dog"]);
        assert_eq!(
            (ds.train.n, ds.train.h, ds.train.w, ds.train.c),
            (3, 3, 4, 3)
        );
        assert_eq!(ds.train.labels, [0, 1, 1]);
        // First byte of each image is its red channel = seed: cat/z, dog/a, dog/b.
        let firsts: Vec<u8> = (0..3).map(|i| ds.train.image(i)[0]).collect();
        assert_eq!(firsts, [9, 1, 2]);
        // Pixel (x=2, y=1) of dog/a: HWC offset (1·4 + 2)·3.
        assert_eq!(&ds.train.image(1)[18..21], &[1, 20, 20]);
        assert_eq!((ds.test.n, ds.test.labels.as_slice()), (1, &[1u32][..]));
        ds.validate().unwrap();
    }

    #[test]
    fn grayscale_tree_is_one_channel_and_mixed_tree_is_rgb() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write_gray(&r.join("train/0/a.png"), 5, 5, 3);
        write_gray(&r.join("test/0/a.png"), 5, 5, 4);
        let ds = read(r, "train", "test").unwrap();
        assert_eq!(ds.train.c, 1);
        assert_eq!(ds.train.image(0)[6], 3 + 2); // (x=1, y=1)

        write_rgb(&r.join("train/1/a.png"), 5, 5, 8);
        let ds = read(r, "train", "test").unwrap();
        assert_eq!(ds.train.c, 3);
        assert_eq!(&ds.train.image(0)[18..21], &[5, 5, 5]);
        assert_eq!(ds.test.image(0)[0..3], [4, 4, 4]);
    }

    #[test]
    fn size_mismatch_names_the_file() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write_rgb(&r.join("train/a/1.png"), 4, 4, 0);
        write_rgb(&r.join("train/b/2.png"), 4, 5, 0);
        fs::create_dir_all(r.join("test")).unwrap();
        let err = format!("{:#}", read(r, "train", "test").unwrap_err());
        assert!(err.contains("b/2.png") && err.contains("4×5"), "{err}");
    }

    #[test]
    fn corrupt_and_missing_inputs_are_named() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let err = format!("{:#}", read(r, "train", "test").unwrap_err());
        assert!(err.contains("train") && err.contains("<class>"), "{err}");

        write_rgb(&r.join("train/a/1.png"), 4, 4, 0);
        let err = format!("{:#}", read(r, "train", "test").unwrap_err());
        assert!(err.contains("test"), "{err}");

        fs::create_dir_all(r.join("test/a")).unwrap();
        fs::write(r.join("train/a/2.jpg"), b"not a jpeg").unwrap();
        let err = format!("{:#}", read(r, "train", "test").unwrap_err());
        assert!(err.contains("2.jpg"), "{err}");

        fs::remove_file(r.join("train/a/2.jpg")).unwrap();
        fs::create_dir_all(r.join("test/zebra")).unwrap();
        let err = format!("{:#}", read(r, "train", "test").unwrap_err());
        assert!(err.contains("zebra"), "{err}");
    }

    #[test]
    fn committed_cifar10_tiny() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/cifar10-tiny");
        let ds = read(&root, "train", "test").unwrap();
        assert_eq!(ds.classes.len(), 10);
        assert_eq!(ds.classes[0], "airplane");
        assert_eq!(ds.classes[9], "truck");
        assert_eq!((ds.train.n, ds.test.n), (300, 100));
        assert_eq!((ds.train.h, ds.train.w, ds.train.c), (32, 32, 3));
        assert_eq!(ds.train.class_counts(10), vec![30; 10]);
        assert_eq!(ds.test.class_counts(10), vec![10; 10]);
        // Real photographs: the mean intensity is mid-range, not a constant.
        let mean =
            ds.train.pixels.iter().map(|&v| v as f64).sum::<f64>() / ds.train.pixels.len() as f64;
        assert!((90.0..160.0).contains(&mean), "mean {mean}");
    }
}
