//! Datasets: reading image-folder trees, CIFAR binary batches and IDX files into one compact u8
//! array type; class-balanced label splits; batch loading.
//!
//! A decoded dataset is stored as an artifact directory (see [`Dataset::save`]):
//!
//! ```text
//! meta.json               classes, image shape, sample counts
//! train.u8  test.u8       N·H·W·C bytes each, HWC per image
//! train-labels.u32le      N little-endian u32 class ids
//! test-labels.u32le
//! ```
//!
//! Every file is read with one `read` call, so loading a cached dataset costs about as much as
//! copying it from the page cache.

pub mod cifar;
pub mod idx;
pub mod image_folder;
pub mod images;
pub mod jpeg;
pub mod loader;
pub mod split;

use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

pub use images::Images;

/// A decoded dataset: class names (index = label id) and the train and test images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub train: Images,
    pub test: Images,
}

/// Which half of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Test => "test",
        }
    }
    fn pixels_file(self) -> String {
        format!("{}.u8", self.name())
    }
    fn labels_file(self) -> String {
        format!("{}-labels.u32le", self.name())
    }
}

/// `meta.json` of a stored dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    /// Layout version of the stored files; bumped if the layout ever changes.
    pub layout: u32,
    pub classes: Vec<String>,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub n_train: usize,
    pub n_test: usize,
}

const META_FILE: &str = "meta.json";
const LAYOUT: u32 = 1;

impl DatasetMeta {
    fn n(&self, part: Part) -> usize {
        match part {
            Part::Train => self.n_train,
            Part::Test => self.n_test,
        }
    }
}

impl Dataset {
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The shape and sizes without the pixels.
    pub fn meta(&self) -> DatasetMeta {
        DatasetMeta {
            layout: LAYOUT,
            classes: self.classes.clone(),
            height: self.train.h,
            width: self.train.w,
            channels: self.train.c,
            n_train: self.train.n,
            n_test: self.test.n,
        }
    }

    /// Checks that both halves share one image shape, that array sizes agree and labels are in range.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.classes.is_empty(), "dataset has no classes");
        let (tr, te) = (&self.train, &self.test);
        ensure!(
            (tr.h, tr.w, tr.c) == (te.h, te.w, te.c) || te.n == 0,
            "train images are {}×{}×{} but test images are {}×{}×{}",
            tr.h,
            tr.w,
            tr.c,
            te.h,
            te.w,
            te.c
        );
        tr.validate(self.classes.len()).context("train images")?;
        te.validate(self.classes.len()).context("test images")?;
        Ok(())
    }

    /// Writes the dataset into `dir` (which must exist) in the layout described in the module docs.
    /// The bytes written depend only on the dataset, so equal datasets give equal artifacts.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        for (part, images) in [(Part::Train, &self.train), (Part::Test, &self.test)] {
            write(&dir.join(part.pixels_file()), &images.pixels)?;
            let labels: Vec<u8> = images.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
            write(&dir.join(part.labels_file()), &labels)?;
        }
        let meta = serde_json::to_vec_pretty(&self.meta())?;
        write(&dir.join(META_FILE), &meta)
    }

    /// Reads `meta.json` of a stored dataset.
    pub fn load_meta(dir: &Path) -> Result<DatasetMeta> {
        let path = dir.join(META_FILE);
        let bytes = fs::read(&path).with_context(|| {
            format!(
                "cannot read {}: is this a dataset artifact?",
                path.display()
            )
        })?;
        let meta: DatasetMeta = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid dataset meta file", path.display()))?;
        ensure!(
            meta.layout == LAYOUT,
            "{} has dataset layout {}, this build reads layout {LAYOUT}: re-run the dataset stage",
            path.display(),
            meta.layout
        );
        Ok(meta)
    }

    /// Reads only the labels of one half (e.g. to draw a split without touching the pixels).
    pub fn load_labels(dir: &Path, part: Part) -> Result<Vec<u32>> {
        let meta = Self::load_meta(dir)?;
        read_labels(dir, part, &meta)
    }

    /// Reads a dataset written by [`Dataset::save`], checking every file's size against `meta.json`.
    pub fn load(dir: &Path) -> Result<Dataset> {
        let meta = Self::load_meta(dir)?;
        let load_part = |part: Part| -> Result<Images> {
            let n = meta.n(part);
            let path = dir.join(part.pixels_file());
            let pixels = fs::read(&path)
                .with_context(|| format!("cannot read dataset file {}", path.display()))?;
            // Checked: a corrupt meta.json must not wrap the product into a "matching" size.
            let expected = [meta.height, meta.width, meta.channels]
                .iter()
                .try_fold(n, |a, &b| a.checked_mul(b));
            let Some(expected) = expected else {
                bail!(
                    "{} promises {n} images of {}×{}×{}, more bytes than can exist: the artifact \
                     is corrupt; re-run the dataset stage",
                    dir.join(META_FILE).display(),
                    meta.height,
                    meta.width,
                    meta.channels
                );
            };
            ensure!(
                pixels.len() == expected,
                "dataset file {} holds {} bytes but meta.json promises {n} images of {}×{}×{} = {expected} \
                 bytes: the artifact is truncated or corrupt; re-run the dataset stage",
                path.display(),
                pixels.len(),
                meta.height,
                meta.width,
                meta.channels
            );
            let labels = read_labels(dir, part, &meta)?;
            Ok(Images {
                n,
                h: meta.height,
                w: meta.width,
                c: meta.channels,
                pixels,
                labels,
            })
        };
        let ds = Dataset {
            classes: meta.classes.clone(),
            train: load_part(Part::Train)?,
            test: load_part(Part::Test)?,
        };
        Ok(ds)
    }
}

fn read_labels(dir: &Path, part: Part, meta: &DatasetMeta) -> Result<Vec<u32>> {
    let path = dir.join(part.labels_file());
    let bytes =
        fs::read(&path).with_context(|| format!("cannot read dataset file {}", path.display()))?;
    let n = meta.n(part);
    ensure!(
        bytes.len() == 4 * n,
        "dataset file {} holds {} bytes but meta.json promises {n} labels (4 bytes each): the artifact \
         is truncated or corrupt; re-run the dataset stage",
        path.display(),
        bytes.len()
    );
    let labels: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= meta.classes.len())
    {
        bail!(
            "dataset file {}: sample {i} has label {l} but there are {} classes: the artifact is corrupt",
            path.display(),
            meta.classes.len()
        );
    }
    Ok(labels)
}

/// A 64-bit seed derived from a domain tag and integers (splitmix64 chained over them), so that
/// different consumers of one user seed (split draw, epoch order, each sample's augmentation) get
/// independent, reproducible streams.
pub fn derive_seed(domain: &str, parts: &[u64]) -> u64 {
    fn splitmix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let mut h = 0x243F_6A88_85A3_08D3; // digits of π: any fixed start
    for b in domain.bytes() {
        h = splitmix(h ^ u64::from(b));
    }
    // The length separates ("ab", [1]) from ("a", [b'b', 1]).
    h = splitmix(h ^ domain.len() as u64);
    for &p in parts {
        h = splitmix(h ^ p);
    }
    h
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let half = bytes.len() / 2;
    let mut f =
        fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(&bytes[..half])
        .with_context(|| format!("cannot write {}", path.display()))?;
    crate::fault::point("dataset-write");
    f.write_all(&bytes[half..])
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn small_dataset() -> Dataset {
        let mk = |n: usize, seed: u8| Images {
            n,
            h: 2,
            w: 3,
            c: 3,
            pixels: (0..n * 18).map(|i| (i as u8).wrapping_mul(seed)).collect(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
        };
        Dataset {
            classes: vec!["a".into(), "b".into(), "c".into()],
            train: mk(7, 3),
            test: mk(4, 5),
        }
    }

    #[test]
    fn save_load_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let ds = small_dataset();
        ds.save(dir.path()).unwrap();
        assert_eq!(Dataset::load(dir.path()).unwrap(), ds);
        assert_eq!(
            Dataset::load_labels(dir.path(), Part::Test).unwrap(),
            ds.test.labels
        );
    }

    #[test]
    fn truncated_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        small_dataset().save(dir.path()).unwrap();
        let f = dir.path().join("train.u8");
        let bytes = fs::read(&f).unwrap();
        fs::write(&f, &bytes[..bytes.len() - 1]).unwrap();
        let err = format!("{:#}", Dataset::load(dir.path()).unwrap_err());
        assert!(
            err.contains("train.u8") && err.contains("truncated"),
            "{err}"
        );

        small_dataset().save(dir.path()).unwrap();
        fs::write(dir.path().join("test-labels.u32le"), [0u8; 3]).unwrap();
        let err = format!("{:#}", Dataset::load(dir.path()).unwrap_err());
        assert!(err.contains("test-labels.u32le"), "{err}");
    }

    #[test]
    fn missing_meta_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", Dataset::load(dir.path()).unwrap_err());
        assert!(err.contains("meta.json"), "{err}");
    }
}
