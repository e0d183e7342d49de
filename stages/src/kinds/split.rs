//! `split`: a class-balanced labeled subset of a dataset's train images (SimCLRv2's 1% / 10%),
//! by fraction, by count per class, or from a user list file; optionally a class-balanced validation
//! holdout disjoint from it.
//!
//! Outputs: `split.txt` (labeled train-sample ids, ascending, one per line, like the paper's
//! `1percent.txt` but with indices instead of file names) and, with `holdout`, `val.txt`.
//!
//! `list_file` is a path, absolute or relative to the working directory `semiflow` runs in. Because a
//! cache key sees only parameters, resolving the parameters reads the file and records its blake3
//! digest as `list_digest`: editing the list changes the key, and a run refuses a list that changed
//! after planning.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::api::{
    resolve_typed, KindSpec, ParamError, RefSpec, RefTarget, Role, RunCtx, StageOutput,
};
use crate::data::split::{draw, parse_ids, write_ids, Selection};
use crate::data::{Dataset, Part};

pub const SPEC: KindSpec = KindSpec {
    name: "split",
    version: 1,
    summary: "class-balanced labeled subset (fraction, per-class count or id list) and validation holdout",
    refs: &[RefSpec {
        key: "data",
        role: "data",
        target: RefTarget::Dataset,
        many: false,
        required: true,
    }],
    role: Role::Split { fraction: "fraction" },
    numerics: false,
    resolve_params: resolve,
    run,
};

/// The labeled ids file every split artifact has.
pub const SPLIT_FILE: &str = "split.txt";
/// The validation ids file, present when `holdout` is set.
pub const VAL_FILE: &str = "val.txt";

/// Exactly one of `fraction`, `per_class`, `list_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitParams {
    /// Fraction of each class's train images to label, in (0, 1]: ⌊fraction · n_class⌋ each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Number of labeled images per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<usize>,
    /// A file of train-sample ids (one per line, `#` comments allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_file: Option<String>,
    /// blake3 of `list_file`'s bytes, filled in when parameters are resolved (any given value is
    /// replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_digest: Option<String>,
    /// Fraction of each class's train images held out for validation (`val.txt`), in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
}

fn resolve(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    let checked = resolve_typed::<SplitParams>(raw)?;
    let mut p: SplitParams =
        serde_json::from_value(checked).map_err(|e| ParamError::new("", e.to_string()))?;
    let given = [
        p.fraction.is_some(),
        p.per_class.is_some(),
        p.list_file.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(ParamError::new(
            "",
            "set exactly one of `fraction` (e.g. 0.01), `per_class` (e.g. 25) or `list_file`",
        ));
    }
    if let Some(f) = p.fraction {
        if !(f > 0.0 && f <= 1.0) {
            return Err(ParamError::new(
                "fraction",
                format!("must be in (0, 1], got {f}"),
            ));
        }
    }
    if p.per_class == Some(0) {
        return Err(ParamError::new("per_class", "must be at least 1"));
    }
    if let Some(h) = p.holdout {
        if !(h > 0.0 && h < 1.0) {
            return Err(ParamError::new(
                "holdout",
                format!("must be in (0, 1), got {h}"),
            ));
        }
    }
    p.list_digest = match &p.list_file {
        Some(path) => Some(
            digest(Path::new(path)).map_err(|e| ParamError::new("list_file", format!("{e:#}")))?,
        ),
        None => None,
    };
    serde_json::to_value(&p).map_err(|e| ParamError::new("", e.to_string()))
}

fn digest(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| {
        format!(
            "cannot read id list {} (relative paths are relative to the working directory)",
            path.display()
        )
    })?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

fn run(ctx: &RunCtx) -> Result<StageOutput> {
    let p: SplitParams = ctx.params()?;
    let data = ctx.input("data")?;
    let meta = Dataset::load_meta(data)?;
    let labels = Dataset::load_labels(data, Part::Train)?;
    let selection = if let Some(f) = p.fraction {
        Selection::Fraction(f)
    } else if let Some(m) = p.per_class {
        Selection::PerClass(m)
    } else if let Some(file) = &p.list_file {
        let path = Path::new(file);
        let bytes = fs::read(path).with_context(|| format!("cannot read id list {file}"))?;
        let now = blake3::hash(&bytes).to_hex().to_string();
        if p.list_digest.as_deref() != Some(now.as_str()) {
            bail!("id list {file} changed after the pipeline was planned: run the pipeline again");
        }
        let text = String::from_utf8(bytes).with_context(|| format!("{file} is not UTF-8 text"))?;
        Selection::Ids(parse_ids(&text, file)?)
    } else {
        bail!("split parameters name no selection (they were not resolved)");
    };
    let split = draw(&labels, &meta.classes, &selection, p.holdout, ctx.seed)?;
    write_ids(&ctx.out_dir.join(SPLIT_FILE), &split.labeled)?;
    if p.holdout.is_some() {
        write_ids(&ctx.out_dir.join(VAL_FILE), &split.val)?;
    }

    let mut out = StageOutput::default();
    let counts = &split.labeled_per_class;
    let m = &mut out.metrics;
    m.insert("n_labeled".into(), split.labeled.len() as f64);
    m.insert(
        "labeled_fraction".into(),
        split.labeled.len() as f64 / labels.len() as f64,
    );
    m.insert(
        "min_per_class".into(),
        *counts.iter().min().unwrap_or(&0) as f64,
    );
    m.insert(
        "max_per_class".into(),
        *counts.iter().max().unwrap_or(&0) as f64,
    );
    if p.holdout.is_some() {
        m.insert("n_val".into(), split.val.len() as f64);
    }
    out.details = serde_json::json!({
        "classes": meta.classes.iter().enumerate().map(|(i, name)| serde_json::json!({
            "name": name, "labeled": counts[i], "val": split.val_per_class[i],
        })).collect::<Vec<_>>(),
    });
    ctx.progress.message(&format!(
        "labeled {} of {} train images ({}–{} per class)",
        split.labeled.len(),
        labels.len(),
        m["min_per_class"],
        m["max_per_class"]
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NoProgress;
    use crate::data::split::load_ids;
    use crate::data::Images;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;

    fn dataset_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let imgs = |n: usize| Images {
            n,
            h: 1,
            w: 1,
            c: 1,
            pixels: vec![0; n],
            labels: (0..n as u32).map(|i| i % 4).collect(),
        };
        Dataset {
            classes: ["a", "b", "c", "d"].map(String::from).to_vec(),
            train: imgs(40),
            test: imgs(8),
        }
        .save(dir.path())
        .unwrap();
        dir
    }

    fn run_split(params: serde_json::Value, seed: u64) -> Result<(StageOutput, tempfile::TempDir)> {
        let data = dataset_dir();
        let params = resolve(&params).map_err(|e| anyhow::anyhow!("{e}"))?;
        let inputs = BTreeMap::from([("data".to_string(), vec![PathBuf::from(data.path())])]);
        let out = tempfile::tempdir().unwrap();
        let cancel = AtomicBool::new(false);
        let ctx = RunCtx {
            params: &params,
            inputs: &inputs,
            dataset_root: None,
            out_dir: out.path(),
            resume_dir: out.path(),
            seed,
            checkpoint_every: 0,
            progress: &NoProgress,
            cancel: &cancel,
        };
        Ok((run(&ctx)?, out))
    }

    #[test]
    fn resolve_requires_exactly_one_selection() {
        assert!(resolve(&json!({})).is_err());
        assert!(resolve(&json!({"fraction": 0.1, "per_class": 2})).is_err());
        assert_eq!(
            resolve(&json!({"fraction": 1.5})).unwrap_err().path,
            "fraction"
        );
        assert_eq!(
            resolve(&json!({"per_class": 2, "holdout": 1.0}))
                .unwrap_err()
                .path,
            "holdout"
        );
        let r = resolve(&json!({"fraction": 0.1})).unwrap();
        assert_eq!(r, json!({"fraction": 0.1}));
        assert_eq!(resolve(&r).unwrap(), r);
        let e = resolve(&json!({"list_file": "/nonexistent/1percent.txt"})).unwrap_err();
        assert_eq!(e.path, "list_file");
    }

    #[test]
    fn per_class_with_holdout_writes_both_files() {
        let (res, out) = run_split(json!({"per_class": 3, "holdout": 0.25}), 5).unwrap();
        assert_eq!(res.metrics["n_labeled"], 12.0);
        assert_eq!(res.metrics["n_val"], 8.0);
        assert_eq!(
            (res.metrics["min_per_class"], res.metrics["max_per_class"]),
            (3.0, 3.0)
        );
        let labeled = load_ids(out.path(), SPLIT_FILE).unwrap();
        let val = load_ids(out.path(), VAL_FILE).unwrap();
        assert_eq!((labeled.len(), val.len()), (12, 8));
        assert!(labeled.iter().all(|i| !val.contains(i)));
        // Same seed, same bytes; another seed, other ids.
        let (_, again) = run_split(json!({"per_class": 3, "holdout": 0.25}), 5).unwrap();
        assert_eq!(
            fs::read(out.path().join(SPLIT_FILE)).unwrap(),
            fs::read(again.path().join(SPLIT_FILE)).unwrap()
        );
        let (_, other) = run_split(json!({"per_class": 3, "holdout": 0.25}), 6).unwrap();
        assert_ne!(load_ids(other.path(), SPLIT_FILE).unwrap(), labeled);
    }

    #[test]
    fn too_small_fraction_fails_with_minimum() {
        let err = run_split(json!({"fraction": 0.05}), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0.1"), "{err}");
        let (res, out) = run_split(json!({"fraction": 0.1}), 0).unwrap();
        assert_eq!(res.metrics["n_labeled"], 4.0);
        assert!(!out.path().join(VAL_FILE).exists());
    }

    #[test]
    fn list_file_is_digested_and_used() {
        let t = tempfile::tempdir().unwrap();
        let list = t.path().join("ids.txt");
        fs::write(&list, "# my labels\n3\n0\n").unwrap();
        let params = json!({"list_file": list.to_str().unwrap()});
        let r1 = resolve(&params).unwrap();
        assert_eq!(r1["list_digest"].as_str().unwrap().len(), 64);
        let (res, out) = run_split(params.clone(), 0).unwrap();
        assert_eq!(load_ids(out.path(), SPLIT_FILE).unwrap(), [0, 3]);
        assert_eq!(res.metrics["min_per_class"], 0.0);
        fs::write(&list, "1\n").unwrap();
        assert_ne!(resolve(&params).unwrap(), r1);
    }
}
