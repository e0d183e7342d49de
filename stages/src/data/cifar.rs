//! CIFAR-10 and CIFAR-100 binary batches (the "binary version" from the CIFAR web page).
//!
//! - CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`;
//!   each record is 1 label byte + 3072 pixel bytes; class names in `batches.meta.txt`.
//! - CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`; each record is a coarse label byte,
//!   a fine label byte + 3072 pixel bytes. We use the fine (100-class) label; names in
//!   `fine_label_names.txt`.
//!
//! Pixels are stored planar (1024 red, 1024 green, 1024 blue bytes, each row-major 32×32) and are
//! converted to HWC here. Without a names file, classes are named "0", "1", ….

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::{Dataset, Images};

const SIDE: usize = 32;
const PIXELS: usize = SIDE * SIDE * 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }
    fn num_classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
    fn names_file(self) -> &'static str {
        match self {
            Variant::Cifar10 => "batches.meta.txt",
            Variant::Cifar100 => "fine_label_names.txt",
        }
    }
}

const LAYOUT: &str =
    "expected CIFAR-10 binary batches (data_batch_1.bin … data_batch_5.bin, test_batch.bin) \
or CIFAR-100 binary files (train.bin, test.bin) directly in the dataset root or in its \
cifar-10-batches-bin/ or cifar-100-binary/ subdirectory";

/// Reads CIFAR-10 or CIFAR-100 binary batches under `root` (detected from the file names).
pub fn read(root: &Path) -> Result<Dataset> {
    let (dir, variant) = locate(root)?;
    let (train_files, test_file) = match variant {
        Variant::Cifar10 => (cifar10_train_batches(&dir)?, dir.join("test_batch.bin")),
        Variant::Cifar100 => (vec![dir.join("train.bin")], dir.join("test.bin")),
    };
    let classes = class_names(&dir, variant)?;
    let mut train = Images::empty(SIDE, SIDE, 3);
    for f in &train_files {
        append_records(f, variant, &mut train)?;
    }
    let mut test = Images::empty(SIDE, SIDE, 3);
    append_records(&test_file, variant, &mut test)?;
    Ok(Dataset {
        classes,
        train,
        test,
    })
}

/// Finds the directory holding the batches, accepting the archive's own subdirectory.
fn locate(root: &Path) -> Result<(PathBuf, Variant)> {
    ensure!(
        root.is_dir(),
        "dataset root {} is not a directory; {LAYOUT}",
        root.display()
    );
    for dir in [
        root.to_path_buf(),
        root.join("cifar-10-batches-bin"),
        root.join("cifar-100-binary"),
    ] {
        if dir.join("data_batch_1.bin").is_file() {
            return Ok((dir, Variant::Cifar10));
        }
        if dir.join("train.bin").is_file() {
            return Ok((dir, Variant::Cifar100));
        }
    }
    bail!(
        "no CIFAR binary batches found in {}; {LAYOUT}",
        root.display()
    )
}

/// `data_batch_<k>.bin` files sorted by their number k.
fn cifar10_train_batches(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut batches: Vec<(u32, PathBuf)> = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(k) = name
            .strip_prefix("data_batch_")
            .and_then(|s| s.strip_suffix(".bin"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            batches.push((k, path));
        }
    }
    batches.sort();
    Ok(batches.into_iter().map(|(_, p)| p).collect())
}

fn class_names(dir: &Path, variant: Variant) -> Result<Vec<String>> {
    let k = variant.num_classes();
    let path = dir.join(variant.names_file());
    if !path.is_file() {
        return Ok((0..k).map(|i| i.to_string()).collect());
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    ensure!(
        names.len() == k,
        "{} lists {} class names, expected {k}",
        path.display(),
        names.len()
    );
    Ok(names)
}

/// Decodes every record of one batch file and appends it to `out`.
fn append_records(path: &Path, variant: Variant, out: &mut Images) -> Result<()> {
    let bytes = fs::read(path)
        .with_context(|| format!("cannot read CIFAR batch {}; {LAYOUT}", path.display()))?;
    let record = variant.label_bytes() + PIXELS;
    ensure!(
        !bytes.is_empty() && bytes.len() % record == 0,
        "CIFAR batch {} has {} bytes, not a whole number of {record}-byte records: truncated or \
         not a {} file",
        path.display(),
        bytes.len(),
        match variant {
            Variant::Cifar10 => "CIFAR-10",
            Variant::Cifar100 => "CIFAR-100",
        }
    );
    let n = bytes.len() / record;
    out.pixels.reserve(n * PIXELS);
    for (r, rec) in bytes.chunks_exact(record).enumerate() {
        // CIFAR-100 records start with the coarse label; the fine label is the last label byte.
        let label = rec[variant.label_bytes() - 1];
        ensure!(
            (label as usize) < variant.num_classes(),
            "CIFAR batch {}: record {r} has label {label}, above the {} classes: not a {} file",
            path.display(),
            variant.num_classes(),
            if variant == Variant::Cifar10 {
                "CIFAR-10"
            } else {
                "CIFAR-100"
            }
        );
        let planes = &rec[variant.label_bytes()..];
        let plane = SIDE * SIDE;
        for p in 0..plane {
            out.pixels
                .extend_from_slice(&[planes[p], planes[plane + p], planes[2 * plane + p]]);
        }
        out.labels.push(label as u32);
    }
    out.n += n;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose pixel (y, x) has R = label, G = y, B = x.
    fn record(prefix: &[u8], label: u8) -> Vec<u8> {
        let mut r = prefix.to_vec();
        r.push(label);
        r.extend(std::iter::repeat_n(label, 1024));
        r.extend((0..1024).map(|p| (p / 32) as u8));
        r.extend((0..1024).map(|p| (p % 32) as u8));
        r
    }

    #[test]
    fn reads_cifar10_batches() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("cifar-10-batches-bin");
        fs::create_dir_all(&dir).unwrap();
        // Batch 10 sorts after batch 2 numerically.
        fs::write(
            dir.join("data_batch_2.bin"),
            [record(&[], 3), record(&[], 4)].concat(),
        )
        .unwrap();
        fs::write(dir.join("data_batch_10.bin"), record(&[], 9)).unwrap();
        fs::write(dir.join("data_batch_1.bin"), record(&[], 1)).unwrap();
        fs::write(dir.join("test_batch.bin"), record(&[], 7)).unwrap();
        let ds = read(t.path()).unwrap();
        assert_eq!(
            ds.classes,
            (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(ds.train.labels, [1, 3, 4, 9]);
        assert_eq!(ds.test.labels, [7]);
        // Pixel (y=5, x=6) of the second train image, HWC.
        let off = (5 * 32 + 6) * 3;
        assert_eq!(&ds.train.image(1)[off..off + 3], &[3, 5, 6]);
        ds.validate().unwrap();

        let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
        fs::write(dir.join("batches.meta.txt"), names + "\n").unwrap();
        assert_eq!(read(t.path()).unwrap().classes[4], "class4");
    }

    #[test]
    fn reads_cifar100_fine_labels() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("train.bin"),
            [record(&[2], 55), record(&[19], 99)].concat(),
        )
        .unwrap();
        fs::write(t.path().join("test.bin"), record(&[0], 0)).unwrap();
        let ds = read(t.path()).unwrap();
        assert_eq!(ds.classes.len(), 100);
        assert_eq!(ds.train.labels, [55, 99]);
        assert_eq!(ds.train.image(0)[0], 55);
    }

    #[test]
    fn truncated_and_missing_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        let err = format!("{:#}", read(t.path()).unwrap_err());
        assert!(err.contains("data_batch_1.bin"), "{err}");

        let mut rec = record(&[], 1);
        fs::write(t.path().join("data_batch_1.bin"), &rec).unwrap();
        let err = format!("{:#}", read(t.path()).unwrap_err());
        assert!(err.contains("test_batch.bin"), "{err}");

        rec.pop();
        fs::write(t.path().join("test_batch.bin"), &rec).unwrap();
        let err = format!("{:#}", read(t.path()).unwrap_err());
        assert!(
            err.contains("test_batch.bin") && err.contains("truncated"),
            "{err}"
        );
    }
}
