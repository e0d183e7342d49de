//! `dataset`: decode a dataset root (image-folder tree, CIFAR binary batches or IDX files) once into
//! the compact artifact of [`crate::data::Dataset::save`]. The engine caches the artifact by the
//! dataset's fingerprint, so later runs never decode again.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::api::{resolve_typed, KindSpec, ParamError, Role, RunCtx, StageOutput};
use crate::data::jpeg::JpegDecoder;
use crate::data::{cifar, idx, image_folder, Dataset};

pub const SPEC: KindSpec = KindSpec {
    name: "dataset",
    version: 1,
    summary:
        "decode an image-folder tree, CIFAR binary batches or IDX files into a cached u8 array",
    refs: &[],
    role: Role::Data,
    numerics: false,
    resolve_params: resolve,
    run,
};

/// On-disk format of a dataset root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `<root>/<train>/<class>/*.jpg|*.jpeg|*.png` and the same under `<root>/<test>`.
    ImageFolder,
    /// CIFAR-10 (`data_batch_*.bin`, `test_batch.bin`) or CIFAR-100 (`train.bin`, `test.bin`).
    CifarBin,
    /// MNIST-style `<train>-images-idx3-ubyte[.gz]`, `<train>-labels-idx1-ubyte[.gz]`, same for `<test>`.
    Idx,
}

/// Parameters of a `[datasets.NAME]` table (the engine takes `root` out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetParams {
    pub format: Format,
    /// Train split: a subdirectory for image-folder (default "train"), a file prefix for idx (default
    /// "train"); not allowed for cifar-bin, whose file names are fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<String>,
    /// Test split: default "test" for image-folder, "t10k" for idx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// Keep at most this many train images, class-balanced (the first ones of each class): for quick
    /// pipelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_train: Option<usize>,
    /// The same for the test split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_test: Option<usize>,
    /// JPEG decoder of image-folder trees: "zune-jpeg" (default; absent from the resolved params,
    /// so existing keys stay) or "libjpeg-turbo" (PIL's pixels). See `crate::data::jpeg`.
    #[serde(default, skip_serializing_if = "JpegDecoder::is_default")]
    pub decoder: JpegDecoder,
}

fn resolve(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    let checked = resolve_typed::<DatasetParams>(raw)?;
    let mut p: DatasetParams = serde_json::from_value(checked).map_err(|e| ParamError {
        path: String::new(),
        message: e.to_string(),
    })?;
    let defaults = match p.format {
        Format::ImageFolder => Some(("train", "test")),
        Format::Idx => Some(("train", "t10k")),
        Format::CifarBin => None,
    };
    match defaults {
        Some((train, test)) => {
            p.train.get_or_insert_with(|| train.into());
            p.test.get_or_insert_with(|| test.into());
        }
        None => {
            for (key, v) in [("train", &p.train), ("test", &p.test)] {
                if v.is_some() {
                    return Err(ParamError::new(
                        key,
                        "cifar-bin datasets have fixed file names (data_batch_*.bin / test_batch.bin \
                         or train.bin / test.bin): remove this key",
                    ));
                }
            }
        }
    }
    for (key, v) in [("train", &p.train), ("test", &p.test)] {
        if let Some(s) = v {
            if s.is_empty() || s.contains("..") {
                return Err(ParamError::new(
                    key,
                    format!("`{s}` must be a non-empty name inside the dataset root"),
                ));
            }
        }
    }
    if !p.decoder.is_default() && p.format != Format::ImageFolder {
        return Err(ParamError::new(
            "decoder",
            "only image-folder datasets have JPEGs to decode: remove this key",
        ));
    }
    for (key, v) in [("limit_train", p.limit_train), ("limit_test", p.limit_test)] {
        if v == Some(0) {
            return Err(ParamError::new(
                key,
                "must be at least 1 (leave it out for no limit)",
            ));
        }
    }
    serde_json::to_value(&p).map_err(|e| ParamError::new("", e.to_string()))
}

fn run(ctx: &RunCtx) -> Result<StageOutput> {
    let p: DatasetParams = ctx.params()?;
    let root = ctx
        .dataset_root
        .context("the dataset stage was given no dataset root")?;
    let started = Instant::now();
    let split_name = |s: &Option<String>| s.clone().unwrap_or_default();
    let mut ds = match p.format {
        Format::ImageFolder => {
            image_folder::read_with(root, &split_name(&p.train), &split_name(&p.test), p.decoder)
        }
        Format::CifarBin => cifar::read(root),
        Format::Idx => idx::read(root, &split_name(&p.train), &split_name(&p.test)),
    }
    .with_context(|| format!("reading the {:?} dataset at {}", p.format, root.display()))?;
    ctx.check_cancel()?;

    let k = ds.num_classes();
    if let Some(limit) = p.limit_train {
        ds.train = ds.train.limit_balanced(limit, k).context("limit_train")?;
    }
    if let Some(limit) = p.limit_test {
        ds.test = ds.test.limit_balanced(limit, k).context("limit_test")?;
    }
    ds.save(ctx.out_dir)?;
    ctx.progress.message(&format!(
        "decoded {} train + {} test images of {}×{}×{} in {:.1} s",
        ds.train.n,
        ds.test.n,
        ds.train.h,
        ds.train.w,
        ds.train.c,
        started.elapsed().as_secs_f64()
    ));
    Ok(summary(&ds))
}

fn summary(ds: &Dataset) -> StageOutput {
    let k = ds.num_classes();
    let mut out = StageOutput::default();
    for (key, v) in [
        ("n_train", ds.train.n),
        ("n_test", ds.test.n),
        ("classes", k),
        ("height", ds.train.h),
        ("width", ds.train.w),
        ("channels", ds.train.c),
    ] {
        out.metrics.insert(key.into(), v as f64);
    }
    let (tr, te) = (ds.train.class_counts(k), ds.test.class_counts(k));
    out.details = serde_json::json!({
        "classes": ds.classes.iter().enumerate().map(|(i, name)| serde_json::json!({
            "name": name, "train": tr[i], "test": te[i],
        })).collect::<Vec<_>>(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NoProgress;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn resolve_fills_per_format_defaults() {
        let r = resolve(&json!({"format": "image-folder"})).unwrap();
        assert_eq!(
            r,
            json!({"format": "image-folder", "train": "train", "test": "test"})
        );
        assert_eq!(resolve(&r).unwrap(), r);
        let r = resolve(&json!({"format": "idx", "limit_train": 100})).unwrap();
        assert_eq!(
            r,
            json!({"format": "idx", "train": "train", "test": "t10k", "limit_train": 100})
        );
        assert_eq!(
            resolve(&json!({"format": "cifar-bin"})).unwrap(),
            json!({"format": "cifar-bin"})
        );
    }

    #[test]
    fn resolve_rejects_bad_tables() {
        let e = resolve(&json!({"format": "cifar-bin", "train": "x"})).unwrap_err();
        assert_eq!(e.path, "train");
        let e = resolve(&json!({"format": "jpeg-folder"})).unwrap_err();
        assert_eq!(e.path, "format");
        let e = resolve(&json!({"format": "idx", "limt_train": 3})).unwrap_err();
        assert!(e.message.contains("limt_train"), "{e}");
        assert!(resolve(&json!({})).is_err());
        let e = resolve(&json!({"format": "idx", "limit_test": 0})).unwrap_err();
        assert_eq!(e.path, "limit_test");
    }

    #[test]
    fn decodes_committed_cifar10_tiny() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/cifar10-tiny");
        let out = tempfile::tempdir().unwrap();
        let params = resolve(&json!({"format": "image-folder", "limit_train": 105})).unwrap();
        let inputs = BTreeMap::new();
        let cancel = AtomicBool::new(false);
        let ctx = RunCtx {
            params: &params,
            inputs: &inputs,
            dataset_root: Some(&root),
            out_dir: out.path(),
            resume_dir: out.path(),
            seed: 0,
            checkpoint_every: 0,
            progress: &NoProgress,
            cancel: &cancel,
        };
        let res = run(&ctx).unwrap();
        assert_eq!(res.metrics["n_train"], 105.0);
        assert_eq!(res.metrics["n_test"], 100.0);
        assert_eq!(res.metrics["channels"], 3.0);
        assert_eq!(
            res.details["classes"][0],
            json!({"name": "airplane", "train": 11, "test": 10})
        );
        assert_eq!(res.details["classes"][9]["train"], json!(10));
        let ds = Dataset::load(out.path()).unwrap();
        assert_eq!((ds.train.n, ds.test.n, ds.classes.len()), (105, 100, 10));
    }
}
