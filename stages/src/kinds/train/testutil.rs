//! Fixtures for the training kinds' tests: a tiny generated dataset, a split, a `RunCtx`
//! runner, and an interrupting progress sink.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::api::{KindSpec, NoProgress, RunCtx, StageOutput};
use crate::data::{Dataset, Images};

/// `n` 8×8 RGB images per class, class 0 reddish and class 1 bluish with per-pixel noise, so
/// crops and flips keep the class visible.
pub fn images(n_per_class: usize, salt: u32) -> Images {
    let (h, w, c) = (8, 8, 3);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..2 * n_per_class {
        let class = (i % 2) as u32;
        for p in 0..h * w {
            let noise = ((i as u32 * 131 + p as u32 * 71 + salt * 17) % 61) as u8;
            let (r, g, b) = if class == 0 {
                (170, 60, 40)
            } else {
                (40, 60, 170)
            };
            pixels.extend([r + noise, g + noise / 2, b + noise]);
        }
        labels.push(class);
    }
    Images {
        n: 2 * n_per_class,
        h,
        w,
        c,
        pixels,
        labels,
    }
}

/// A dataset artifact directory and a split artifact directory labeling `labeled` images.
pub fn dataset_and_split(root: &Path, n_per_class: usize, labeled: &[usize]) -> (PathBuf, PathBuf) {
    let ds = Dataset {
        classes: vec!["red".into(), "blue".into()],
        train: images(n_per_class, 0),
        test: images(2, 1),
    };
    let data_dir = root.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    ds.save(&data_dir).unwrap();
    let split_dir = root.join("split");
    std::fs::create_dir_all(&split_dir).unwrap();
    crate::data::split::write_ids(&split_dir.join(crate::kinds::split::SPLIT_FILE), labeled)
        .unwrap();
    (data_dir, split_dir)
}

/// The smallest ResNet the models build: depth 10, channel widths 4/8/16/32, 16-d head.
pub fn tiny_model() -> serde_json::Value {
    serde_json::json!({ "depth": 10, "width": 0.0625, "proj_dim": 16, "proj_hidden": 16 })
}

/// One epoch of pretraining of [`tiny_model`] on `data`; returns the checkpoint directory
/// (`root/pre`).
pub fn tiny_pretrain(root: &Path, data: &Path) -> PathBuf {
    let pre = Run {
        kind: &crate::kinds::pretrain::SPEC,
        params: serde_json::json!({ "model": tiny_model(), "epochs": 1, "batch_size": 8 }),
        inputs: vec![("data", data.to_path_buf())],
        out: root.join("pre"),
        resume: root.join("pre-resume"),
        seed: 1,
        checkpoint_every: 0,
    };
    pre.run().unwrap();
    pre.out
}

/// Run `kind` with `params` (resolved first) and inputs `(role, dir)`.
pub struct Run<'a> {
    pub kind: &'a KindSpec,
    pub params: serde_json::Value,
    pub inputs: Vec<(&'a str, PathBuf)>,
    pub out: PathBuf,
    pub resume: PathBuf,
    pub seed: u64,
    pub checkpoint_every: usize,
}

impl Run<'_> {
    pub fn go(
        &self,
        progress: &dyn crate::api::Progress,
        cancel: &AtomicBool,
    ) -> anyhow::Result<StageOutput> {
        let params =
            (self.kind.resolve_params)(&self.params).map_err(|e| anyhow::anyhow!("{e}"))?;
        let inputs: BTreeMap<String, Vec<PathBuf>> = self
            .inputs
            .iter()
            .map(|(r, d)| (r.to_string(), vec![d.clone()]))
            .collect();
        std::fs::create_dir_all(&self.out).unwrap();
        std::fs::create_dir_all(&self.resume).unwrap();
        let ctx = RunCtx {
            params: &params,
            inputs: &inputs,
            dataset_root: None,
            out_dir: &self.out,
            resume_dir: &self.resume,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            progress,
            cancel,
        };
        (self.kind.run)(&ctx)
    }

    pub fn run(&self) -> anyhow::Result<StageOutput> {
        self.go(&NoProgress, &AtomicBool::new(false))
    }
}

/// Sets the cancel flag once `stop_after` epochs have finished (simulates an interruption).
pub struct StopAfter<'a> {
    pub stop_after: usize,
    pub flag: &'a AtomicBool,
}
impl crate::api::Progress for StopAfter<'_> {
    fn epoch(&self, epoch: usize, _m: &BTreeMap<String, f64>) {
        if epoch + 1 == self.stop_after {
            self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The bytes of every file in `dir`, by name.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}
