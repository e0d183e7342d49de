//! IDX files (MNIST, Fashion-MNIST): `<prefix>-images-idx3-ubyte` and `<prefix>-labels-idx1-ubyte`,
//! gzip-compressed (`.gz`) or raw, with prefixes `train` and `t10k` by default.
//!
//! An IDX file is a big-endian header (two zero bytes, a type byte — 0x08 for unsigned bytes — and the
//! number of dimensions), one u32 per dimension, then the data. Images are grayscale (one channel);
//! classes are named "0" … "k-1" where k is one more than the largest label.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;

use super::{Dataset, Images};

/// Reads the `<train>-…` and `<test>-…` image and label files under `root`.
pub fn read(root: &Path, train: &str, test: &str) -> Result<Dataset> {
    let (train, train_path) = read_part(root, train)?;
    let (test, test_path) = read_part(root, test)?;
    // Both files are named: either one may be the wrong one (found by fuzzing: only the root was).
    ensure!(
        (train.h, train.w) == (test.h, test.w),
        "IDX train images {} are {}×{} but test images {} are {}×{}",
        train_path.display(),
        train.h,
        train.w,
        test_path.display(),
        test.h,
        test.w
    );
    // A dataset without train images is useless downstream; say so here, naming the file.
    ensure!(
        train.n > 0,
        "{} holds no images (its header says 0)",
        train_path.display()
    );
    let max_label = train
        .labels
        .iter()
        .chain(&test.labels)
        .copied()
        .max()
        .unwrap_or(0);
    Ok(Dataset {
        classes: (0..=max_label).map(|i| i.to_string()).collect(),
        train,
        test,
    })
}

/// One split's images and labels, and the images file's path (for messages).
fn read_part(root: &Path, prefix: &str) -> Result<(Images, PathBuf)> {
    let images_path = find(root, prefix, "images", 3)?;
    let labels_path = find(root, prefix, "labels", 1)?;
    let (dims, pixels) = read_idx(&images_path, 3)?;
    let (ldims, labels) = read_idx(&labels_path, 1)?;
    ensure!(
        dims[0] == ldims[0],
        "{} holds {} images but {} holds {} labels",
        images_path.display(),
        dims[0],
        labels_path.display(),
        ldims[0]
    );
    // A header may say 0 rows or columns with no data (0 × anything = 0 bytes): images without
    // pixels, which every later stage would trip over (found by fuzzing).
    ensure!(
        dims[1] > 0 && dims[2] > 0,
        "{} holds images of {}×{} pixels: corrupt header",
        images_path.display(),
        dims[1],
        dims[2]
    );
    let images = Images {
        n: dims[0],
        h: dims[1],
        w: dims[2],
        c: 1,
        pixels,
        labels: labels.into_iter().map(u32::from).collect(),
    };
    Ok((images, images_path))
}

/// The first existing spelling of `<prefix>-<what>-idx<d>-ubyte[.gz]` (MNIST mirrors also use
/// `<prefix>-<what>.idx<d>-ubyte`).
fn find(root: &Path, prefix: &str, what: &str, dims: usize) -> Result<PathBuf> {
    let stems = [
        format!("{prefix}-{what}-idx{dims}-ubyte"),
        format!("{prefix}-{what}.idx{dims}-ubyte"),
    ];
    for stem in &stems {
        for name in [stem.clone(), format!("{stem}.gz")] {
            let p = root.join(&name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "missing IDX file {}[.gz]; an IDX dataset root holds train-images-idx3-ubyte, \
         train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each raw or .gz)",
        root.join(&stems[0]).display()
    )
}

/// Reads an unsigned-byte IDX file with `ndims` dimensions: its dimensions and data.
fn read_idx(path: &Path, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not a valid gzip file", path.display()))?;
        out
    } else {
        raw
    };
    let header = 4 + 4 * ndims;
    ensure!(
        bytes.len() >= header,
        "{} is too short for an IDX header",
        path.display()
    );
    ensure!(
        bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 0x08 && bytes[3] as usize == ndims,
        "{} is not an unsigned-byte IDX file with {ndims} dimension(s) (magic {:02x?})",
        path.display(),
        &bytes[..4]
    );
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    // Checked: a lying header's product can wrap (4 · 2³¹ · 2³¹ = 2⁶⁴ is 0 in u64) and then
    // "match" an empty file, yielding images of 2³¹×2³¹ pixels without any data.
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    ensure!(
        expected == Some(bytes.len() - header),
        "{} has {} data bytes but its header {:?} promises {}: truncated or corrupt",
        path.display(),
        bytes.len() - header,
        dims,
        expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string())
    );
    Ok((dims, bytes[header..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn write_set(root: &Path, gzip: bool) {
        let px: Vec<u8> = (0..3 * 2 * 4).map(|i| i as u8).collect();
        let files = [
            ("train-images-idx3-ubyte", idx(&[3, 2, 4], &px)),
            ("train-labels-idx1-ubyte", idx(&[3], &[4, 0, 9])),
            ("t10k-images-idx3-ubyte", idx(&[1, 2, 4], &px[..8])),
            ("t10k-labels-idx1-ubyte", idx(&[1], &[2])),
        ];
        for (name, bytes) in files {
            if gzip {
                fs::write(root.join(format!("{name}.gz")), gz(&bytes)).unwrap();
            } else {
                fs::write(root.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn reads_raw_and_gzip() {
        for gzip in [false, true] {
            let t = tempfile::tempdir().unwrap();
            write_set(t.path(), gzip);
            let ds = read(t.path(), "train", "t10k").unwrap();
            assert_eq!(
                (ds.train.n, ds.train.h, ds.train.w, ds.train.c),
                (3, 2, 4, 1)
            );
            assert_eq!(ds.train.labels, [4, 0, 9]);
            assert_eq!(ds.train.image(1), &[8, 9, 10, 11, 12, 13, 14, 15]);
            assert_eq!(ds.test.labels, [2]);
            assert_eq!(ds.classes.len(), 10);
            ds.validate().unwrap();
        }
    }

    #[test]
    fn truncated_and_missing_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        let err = format!("{:#}", read(t.path(), "train", "t10k").unwrap_err());
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");

        write_set(t.path(), false);
        let f = t.path().join("t10k-images-idx3-ubyte");
        let bytes = fs::read(&f).unwrap();
        fs::write(&f, &bytes[..bytes.len() - 1]).unwrap();
        let err = format!("{:#}", read(t.path(), "train", "t10k").unwrap_err());
        assert!(
            err.contains("t10k-images-idx3-ubyte") && err.contains("truncated"),
            "{err}"
        );

        fs::write(t.path().join("train-labels-idx1-ubyte"), idx(&[2], &[1, 1])).unwrap();
        let err = format!("{:#}", read(t.path(), "train", "t10k").unwrap_err());
        assert!(
            err.contains("3 images") && err.contains("2 labels"),
            "{err}"
        );
    }
}
