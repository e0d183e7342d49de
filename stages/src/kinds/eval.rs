//! `eval`: accuracy of trained models on a dataset split.
//!
//! - Classifier checkpoints (finetune, supervised, distill): top-1 and top-5 accuracy from the
//!   logits; per-class accuracy and the confusion matrix go into the details.
//! - Pretrain checkpoints (no classifier): kNN accuracy of the encoder features (train split as
//!   the bank, cosine similarity, k nearest vote with weight exp(sim/τ)), and optionally a linear
//!   probe (a linear classifier trained on frozen, standardized train-split features).
//!
//! Every forward pass runs in eval mode (running BN statistics, no autograd graph).
//!
//! Metric keys: with one model `top1`, `top5` (classifiers) or `knn_top1`, `knn_top5`,
//! `probe_top1`, `probe_top5` (pretrain checkpoints). With several models each key is prefixed by
//! the model's position in the `models` list: `model0.top1`, `model1.knn_top1`, ...
//! Details: `{"split", "models": [{"index", "kind", "metrics", "per_class_accuracy",
//! "confusion", ...}]}`, also written to `eval.json` in the output directory.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{resolve_typed, KindSpec, ParamError, RefSpec, RefTarget, RunCtx, StageOutput};
use crate::knn::knn_scores;
use crate::model::{read_sidecar, Network};

use crate::data::loader::to_tensor;
use crate::data::split::load_ids;
use crate::data::{Dataset, Images};
use crate::kinds::split::VAL_FILE;

pub const SPEC: KindSpec = KindSpec {
    name: "eval",
    // v2: fused residual BatchNorm and the stride-1 input gradient as a conv change the numerics.
    // v3: the "val" split; details record the number of scored images.
    version: 3,
    summary: "top-1/top-5, per-class accuracy and confusion of classifiers; kNN and linear-probe accuracy of pretrained encoders",
    refs: &[
        RefSpec {
            key: "models",
            role: "models",
            target: RefTarget::Node(&["finetune", "supervised", "distill", "pretrain"]),
            many: true,
            required: true,
        },
        RefSpec {
            key: "data",
            role: "data",
            target: RefTarget::Dataset,
            many: false,
            required: true,
        },
        RefSpec {
            key: "holdout",
            role: "holdout",
            target: RefTarget::Node(&["split"]),
            many: false,
            required: false,
        },
    ],
    trains: false,
    numerics: true,
    resolve_params,
    run,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    /// Images per forward pass (does not change results).
    pub batch_size: usize,
    /// Neighbours that vote in kNN evaluation.
    pub knn_k: usize,
    /// Temperature τ of the kNN vote weights exp(sim/τ).
    pub knn_temperature: f64,
    /// Epochs of linear-probe training on frozen features (pretrain checkpoints); 0 = no probe.
    pub linear_probe_epochs: usize,
    /// Split to evaluate: "test", "train", or "val": the validation ids (`val.txt`) of the split
    /// node named by `holdout` (a `split` with `holdout` set), for choosing hyperparameters
    /// without touching test. (kNN on "train" queries the bank it was built from, so each image
    /// finds itself: a fit measure, not held-out accuracy; on "val" the bank leaves the
    /// validation images out.)
    pub split: String,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            batch_size: 256,
            knn_k: 200,
            knn_temperature: 0.1,
            linear_probe_epochs: 0,
            split: "test".into(),
        }
    }
}

fn resolve_params(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    let v = resolve_typed::<EvalParams>(raw)?;
    let p: EvalParams = serde_json::from_value(v.clone()).expect("just serialized");
    let err = |path: &str, message: &str| ParamError {
        path: path.into(),
        message: message.into(),
    };
    if p.batch_size == 0 {
        return Err(err("batch_size", "must be at least 1"));
    }
    if p.knn_k == 0 {
        return Err(err("knn_k", "must be at least 1"));
    }
    if !(p.knn_temperature.is_finite() && p.knn_temperature > 0.0) {
        return Err(err("knn_temperature", "must be a positive number"));
    }
    if !["test", "train", "val"].contains(&p.split.as_str()) {
        return Err(err(
            "split",
            "must be \"test\", \"train\" or \"val\" (with `holdout` naming a split node)",
        ));
    }
    Ok(v)
}

/// The device stages compute on: the first CUDA device when built with `cuda`, else the CPU.
fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        Ok(Device::cuda_if_available(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

fn run(ctx: &RunCtx) -> Result<StageOutput> {
    let params: EvalParams = ctx.params()?;
    let data_dir = ctx.input("data")?;
    let dataset = Dataset::load(data_dir)
        .with_context(|| format!("loading dataset {}", data_dir.display()))?;
    let model_dirs = ctx
        .inputs
        .get("models")
        .filter(|v| !v.is_empty())
        .context("eval needs at least one model in `models`")?;
    let parts = Parts::new(&dataset, &params.split, ctx.inputs.get("holdout"))?;
    let device = device()?;
    let mut reports = Vec::with_capacity(model_dirs.len());
    for (i, dir) in model_dirs.iter().enumerate() {
        ctx.check_cancel()?;
        ctx.progress.message(&format!(
            "eval: model {i} ({}) on the {} split",
            dir.display(),
            params.split
        ));
        let sidecar = read_sidecar(dir)?;
        let net = Network::load(dir, &device)?;
        let report = if sidecar.classifier.is_some() {
            evaluate_classifier(&net, &dataset, &parts, &params, ctx)
        } else {
            evaluate_encoder(&net, &dataset, &parts, &params, ctx.seed, ctx)
        }
        .with_context(|| format!("evaluating the model in {}", dir.display()))?;
        reports.push(report);
    }
    let single = reports.len() == 1;
    let mut metrics = BTreeMap::new();
    let mut details = Vec::new();
    for (i, r) in reports.into_iter().enumerate() {
        for (k, v) in &r.metrics {
            let key = if single {
                k.clone()
            } else {
                format!("model{i}.{k}")
            };
            metrics.insert(key, *v);
        }
        let mut d = r.details;
        d["index"] = json!(i);
        d["metrics"] = json!(r.metrics);
        details.push(d);
    }
    let details = json!({ "split": params.split, "n": parts.queries.n,
                          "classes": dataset.classes, "models": details });
    let path = ctx.out_dir.join("eval.json");
    std::fs::write(&path, serde_json::to_string_pretty(&details)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(StageOutput {
        metrics,
        series: BTreeMap::new(),
        details,
    })
}

/// One model's metrics and structured details.
#[derive(Debug, Clone)]
pub struct ModelReport {
    pub metrics: BTreeMap<String, f64>,
    pub details: serde_json::Value,
}

/// The images an eval scores (`queries`) and the labeled images a kNN vote draws on (`bank`).
struct Parts<'a> {
    queries: Cow<'a, Images>,
    bank: Cow<'a, Images>,
}

impl<'a> Parts<'a> {
    fn new(dataset: &'a Dataset, split: &str, holdout: Option<&Vec<PathBuf>>) -> Result<Self> {
        let holdout = holdout.and_then(|v| v.first());
        match split {
            "train" | "test" => {
                let queries = if split == "train" {
                    &dataset.train
                } else {
                    &dataset.test
                };
                Ok(Parts {
                    queries: Cow::Borrowed(queries),
                    bank: Cow::Borrowed(&dataset.train),
                })
            }
            "val" => {
                let dir = holdout.context(
                    "split = \"val\" needs `holdout = \"<node>\"` naming a split node that sets `holdout`",
                )?;
                ensure!(
                    dir.join(VAL_FILE).exists(),
                    "split = \"val\": the split in {} has no {VAL_FILE}; set `holdout = 0.1` (say) on that split node",
                    dir.display()
                );
                let val = load_ids(dir, VAL_FILE)?;
                let n = dataset.train.n;
                if let Some(&bad) = val.iter().find(|&&i| i >= n) {
                    bail!(
                        "{VAL_FILE} in {} names train image {bad}, but the dataset has {n}",
                        dir.display()
                    );
                }
                let mut in_val = vec![false; n];
                val.iter().for_each(|&i| in_val[i] = true);
                let rest: Vec<usize> = (0..n).filter(|&i| !in_val[i]).collect();
                Ok(Parts {
                    queries: Cow::Owned(dataset.train.select(&val)),
                    bank: Cow::Owned(dataset.train.select(&rest)),
                })
            }
            other => bail!("unknown eval split {other:?}"),
        }
    }
}

fn check_compatible(net: &Network, images: &Images) -> Result<()> {
    ensure!(
        images.c == net.in_channels()
            && images.h == net.image_size()
            && images.w == net.image_size(),
        "the model expects {}×{}×{} inputs but the dataset has {}×{}×{} images",
        net.in_channels(),
        net.image_size(),
        net.image_size(),
        images.c,
        images.h,
        images.w
    );
    Ok(())
}

/// Eval-mode outputs over all images: (features (N, D), logits (N, C) if the net classifies),
/// on the CPU.
pub fn extract(
    net: &Network,
    images: &Images,
    batch_size: usize,
    ctx: Option<&RunCtx>,
) -> Result<(Tensor, Option<Tensor>)> {
    check_compatible(net, images)?;
    let (mut feats, mut logits) = (Vec::new(), Vec::new());
    let ids: Vec<usize> = (0..images.n).collect();
    for chunk in ids.chunks(batch_size.max(1)) {
        if let Some(ctx) = ctx {
            ctx.check_cancel()?;
        }
        let x = to_tensor(images, chunk, net.device())?;
        let (f, _, l) = net.forward_all(&x, false)?;
        feats.push(f.to_device(&Device::Cpu)?);
        if let Some(l) = l {
            logits.push(l.to_device(&Device::Cpu)?);
        }
    }
    ensure!(!feats.is_empty(), "the split holds no images");
    let logits = if logits.is_empty() {
        None
    } else {
        Some(Tensor::cat(&logits, 0)?)
    };
    Ok((Tensor::cat(&feats, 0)?, logits))
}

fn evaluate_classifier(
    net: &Network,
    dataset: &Dataset,
    parts: &Parts,
    params: &EvalParams,
    ctx: &RunCtx,
) -> Result<ModelReport> {
    let num_classes = dataset.classes.len();
    ensure!(
        net.num_classes() == Some(num_classes),
        "the classifier has {} outputs but the dataset has {num_classes} classes",
        net.num_classes().unwrap_or(0)
    );
    let images = parts.queries.as_ref();
    let (_, logits) = extract(net, images, params.batch_size, Some(ctx))?;
    let logits = logits.context("classifier produced no logits")?;
    let scores = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let eval = ClassScores::new(&scores, &images.labels, num_classes)?;
    let metrics = BTreeMap::from([
        ("top1".to_string(), eval.topk_accuracy(1)),
        ("top5".to_string(), eval.topk_accuracy(5)),
    ]);
    Ok(ModelReport {
        metrics,
        details: json!({
            "kind": "classifier",
            "head_layer": net.head_layer(),
            "n": images.n,
            "per_class_accuracy": eval.per_class_accuracy(),
            "confusion": eval.confusion(),
        }),
    })
}

/// kNN classification with an encoder's eval-mode features: the `eval` kind's encoder metric and
/// the pretrain kind's per-epoch monitor.
pub struct EncoderKnn {
    pub k: usize,
    /// τ of the vote weights exp(similarity / τ).
    pub temperature: f64,
    pub batch_size: usize,
}

impl EncoderKnn {
    /// (bank features, query features, per-query class scores) with `bank`'s labels voting.
    pub fn run(
        &self,
        net: &Network,
        bank: &Images,
        queries: &Images,
        num_classes: usize,
        ctx: Option<&RunCtx>,
    ) -> Result<(Tensor, Tensor, Vec<f32>)> {
        let (bank_f, _) = extract(net, bank, self.batch_size, ctx)?;
        let (query_f, _) = extract(net, queries, self.batch_size, ctx)?;
        let scores = knn_scores(
            &bank_f,
            &bank.labels,
            &query_f,
            num_classes,
            self.k,
            self.temperature,
            self.batch_size,
        )?;
        Ok((bank_f, query_f, scores))
    }
}

fn evaluate_encoder(
    net: &Network,
    dataset: &Dataset,
    parts: &Parts,
    params: &EvalParams,
    seed: u64,
    ctx: &RunCtx,
) -> Result<ModelReport> {
    let num_classes = dataset.classes.len();
    let (images, bank_images) = (parts.queries.as_ref(), parts.bank.as_ref());
    let knn = EncoderKnn {
        k: params.knn_k,
        temperature: params.knn_temperature,
        batch_size: params.batch_size,
    };
    let (bank, queries, scores) = knn.run(net, bank_images, images, num_classes, Some(ctx))?;
    let knn = ClassScores::new(&scores, &images.labels, num_classes)?;
    let mut metrics = BTreeMap::from([
        ("knn_top1".to_string(), knn.topk_accuracy(1)),
        ("knn_top5".to_string(), knn.topk_accuracy(5)),
    ]);
    let mut details = json!({
        "kind": "encoder",
        "n": images.n,
        "knn": { "k": params.knn_k, "temperature": params.knn_temperature,
                 "per_class_accuracy": knn.per_class_accuracy(), "confusion": knn.confusion() },
    });
    if params.linear_probe_epochs > 0 {
        let probe = LinearProbe {
            epochs: params.linear_probe_epochs,
            batch_size: params.batch_size,
            seed,
            ..Default::default()
        };
        let scores = probe.fit_predict(&bank, &bank_images.labels, &queries, num_classes)?;
        let p = ClassScores::new(&scores, &images.labels, num_classes)?;
        metrics.insert("probe_top1".into(), p.topk_accuracy(1));
        metrics.insert("probe_top5".into(), p.topk_accuracy(5));
        details["probe"] = json!({ "epochs": probe.epochs, "lr": probe.lr,
            "per_class_accuracy": p.per_class_accuracy(), "confusion": p.confusion() });
    }
    Ok(ModelReport { metrics, details })
}

/// Per-sample class scores (logits or kNN votes) with the true labels, and the accuracy
/// statistics derived from them. Predictions are the arg-max with ties going to the lower class.
pub struct ClassScores<'a> {
    scores: &'a [f32],
    labels: &'a [u32],
    num_classes: usize,
}

impl<'a> ClassScores<'a> {
    /// `scores` is row-major (labels.len() × num_classes).
    pub fn new(scores: &'a [f32], labels: &'a [u32], num_classes: usize) -> Result<Self> {
        ensure!(num_classes > 0, "no classes");
        ensure!(
            scores.len() == labels.len() * num_classes,
            "{} scores for {} samples × {num_classes} classes",
            scores.len(),
            labels.len()
        );
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
            anyhow::bail!("label {bad} out of range for {num_classes} classes");
        }
        Ok(ClassScores {
            scores,
            labels,
            num_classes,
        })
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.scores[i * self.num_classes..][..self.num_classes]
    }

    /// 0-based rank of the true class in sample `i`'s ordering (score desc, class asc).
    /// NaN scores rank below everything.
    fn rank(&self, i: usize) -> usize {
        let row = self.row(i);
        let y = self.labels[i] as usize;
        let key = |c: usize| {
            if row[c].is_nan() {
                f32::NEG_INFINITY
            } else {
                row[c]
            }
        };
        (0..self.num_classes)
            .filter(|&c| key(c) > key(y) || (key(c) == key(y) && c < y))
            .count()
    }

    pub fn predicted(&self, i: usize) -> usize {
        let row = self.row(i);
        let mut best = 0;
        for c in 1..self.num_classes {
            if row[c] > row[best] || row[best].is_nan() && !row[c].is_nan() {
                best = c;
            }
        }
        best
    }

    /// Fraction of samples whose true class is among the `k` highest scores (k capped at the
    /// number of classes).
    pub fn topk_accuracy(&self, k: usize) -> f64 {
        let n = self.labels.len();
        if n == 0 {
            return f64::NAN;
        }
        (0..n).filter(|&i| self.rank(i) < k).count() as f64 / n as f64
    }

    /// counts[true][predicted].
    pub fn confusion(&self) -> Vec<Vec<u64>> {
        let mut m = vec![vec![0u64; self.num_classes]; self.num_classes];
        for i in 0..self.labels.len() {
            m[self.labels[i] as usize][self.predicted(i)] += 1;
        }
        m
    }

    /// Top-1 accuracy per true class; `None` for classes absent from the split.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.confusion()
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[c] as f64 / total as f64)
            })
            .collect()
    }
}

/// Multinomial logistic regression on frozen features: standardized with the train-split mean and
/// standard deviation, zero-initialized, SGD with momentum 0.9 and a cosine-decayed learning rate,
/// no weight decay, samples shuffled per epoch from `seed`.
#[derive(Debug, Clone)]
pub struct LinearProbe {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub seed: u64,
}

impl Default for LinearProbe {
    fn default() -> Self {
        LinearProbe {
            epochs: 10,
            batch_size: 256,
            lr: 0.1,
            momentum: 0.9,
            seed: 0,
        }
    }
}

impl LinearProbe {
    /// Train on (`train`, `labels`) and return row-major class scores for `test`.
    pub fn fit_predict(
        &self,
        train: &Tensor,
        labels: &[u32],
        test: &Tensor,
        num_classes: usize,
    ) -> Result<Vec<f32>> {
        let (n, d) = train.dims2()?;
        ensure!(
            labels.len() == n && n > 0,
            "linear probe: {n} features, {} labels",
            labels.len()
        );
        let dev = train.device().clone();
        let train = train.to_dtype(DType::F32)?.detach();
        let mean = train.mean_keepdim(0)?;
        let std = (train.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
        let standardize = |x: &Tensor| -> Result<Tensor> {
            Ok(x.to_dtype(DType::F32)?
                .broadcast_sub(&mean)?
                .broadcast_div(&std)?)
        };
        let train = standardize(&train)?;
        let w = candle_core::Var::zeros((d, num_classes), DType::F32, &dev)?;
        let b = candle_core::Var::zeros(num_classes, DType::F32, &dev)?;
        let mut vel = [w.zeros_like()?, b.zeros_like()?];
        let labels_t = Tensor::new(labels, &dev)?;
        let steps_per_epoch = n.div_ceil(self.batch_size.max(1));
        let total = (self.epochs * steps_per_epoch).max(1);
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut step = 0;
        for epoch in 0..self.epochs {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            order.shuffle(&mut rng);
            for ids in order.chunks(self.batch_size.max(1)) {
                let ids = Tensor::new(ids, &dev)?;
                let x = train.index_select(&ids, 0)?;
                let y = labels_t.index_select(&ids, 0)?;
                let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                let grads = loss.backward()?;
                let lr = self.lr
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
                for (var, v) in [&w, &b].into_iter().zip(vel.iter_mut()) {
                    let g = grads
                        .get(var.as_tensor())
                        .context("linear probe: missing gradient")?;
                    *v = ((&*v * self.momentum)? + g)?;
                    var.set(&(var.as_tensor() - (&*v * lr)?)?)?;
                }
                step += 1;
            }
        }
        let logits = standardize(test)?
            .matmul(&w.as_detached_tensor())?
            .broadcast_add(&b.as_detached_tensor())?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelCfg;
    use rand::Rng;

    #[test]
    fn params_resolve_with_defaults_and_reject_bad_values() {
        let v = resolve_params(&json!({})).unwrap();
        assert_eq!(v["knn_k"], 200);
        assert_eq!(v["split"], "test");
        assert_eq!(
            resolve_params(&json!({"knn_k": 0})).unwrap_err().path,
            "knn_k"
        );
        assert_eq!(
            resolve_params(&json!({"split": "validation"}))
                .unwrap_err()
                .path,
            "split"
        );
        assert!(resolve_params(&json!({"k": 3})).is_err());
    }

    #[test]
    fn class_scores_metrics() {
        // 4 samples, 3 classes.
        let scores = [
            0.9, 0.1, 0.0, // label 0: rank 0
            0.5, 0.2, 0.3, // label 1: rank 2
            0.2, 0.2, 0.1, // label 1: tie with class 0 → rank 1, predicted 0
            0.0, 0.0, 1.0, // label 2: rank 0
        ];
        let labels = [0u32, 1, 1, 2];
        let s = ClassScores::new(&scores, &labels, 3).unwrap();
        assert_eq!(s.topk_accuracy(1), 0.5);
        assert_eq!(s.topk_accuracy(2), 0.75);
        assert_eq!(s.topk_accuracy(5), 1.0);
        assert_eq!(s.confusion(), [[1, 0, 0], [2, 0, 0], [0, 0, 1]]);
        assert_eq!(s.per_class_accuracy(), [Some(1.0), Some(0.0), Some(1.0)]);
        assert!(ClassScores::new(&scores, &[0, 1, 1, 3], 3).is_err());
        assert!(ClassScores::new(&scores[1..], &labels, 3).is_err());
    }

    #[test]
    fn linear_probe_separates_separable_features() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (n, d, c) = (60, 5, 3);
        let labels: Vec<u32> = (0..n).map(|i| (i % c) as u32).collect();
        let feats: Vec<f32> = (0..n * d)
            .map(|j| {
                let (i, k) = (j / d, j % d);
                (if k == labels[i] as usize { 3.0 } else { 0.0 }) + rng.gen::<f32>()
            })
            .collect();
        let x = Tensor::from_vec(feats, (n, d), &Device::Cpu).unwrap();
        let probe = LinearProbe {
            epochs: 20,
            batch_size: 16,
            ..Default::default()
        };
        let scores = probe.fit_predict(&x, &labels, &x, c).unwrap();
        assert_eq!(
            ClassScores::new(&scores, &labels, c)
                .unwrap()
                .topk_accuracy(1),
            1.0
        );
        assert_eq!(scores, probe.fit_predict(&x, &labels, &x, c).unwrap());
    }

    fn toy_dataset(size: usize, per_class: usize) -> Dataset {
        // Class 0 dark images, class 1 bright: any sane encoder separates them.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mk = |n: usize, rng: &mut rand_chacha::ChaCha8Rng| {
            let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
            let pixels = labels
                .iter()
                .flat_map(|&l| {
                    (0..size * size * 3)
                        .map(|_| l as u8 * 150 + rng.gen_range(0..100))
                        .collect::<Vec<_>>()
                })
                .collect();
            Images {
                n,
                h: size,
                w: size,
                c: 3,
                pixels,
                labels,
            }
        };
        Dataset {
            classes: vec!["dark".into(), "bright".into()],
            train: mk(2 * per_class, &mut rng),
            test: mk(per_class, &mut rng),
        }
    }

    #[test]
    fn to_tensor_is_nchw_in_unit_range() {
        let img = Images {
            n: 1,
            h: 1,
            w: 2,
            c: 3,
            pixels: vec![0, 51, 255, 102, 153, 204],
            labels: vec![0],
        };
        let t = to_tensor(&img, &[0], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [1, 3, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, [0.0, 0.4, 0.2, 0.6, 1.0, 0.8]);
    }

    #[test]
    fn encoder_and_classifier_evaluation_end_to_end() {
        let d = Device::Cpu;
        let data = toy_dataset(8, 6);
        let cfg = ModelCfg {
            depth: 10,
            width: 0.125,
            proj_dim: 8,
            ..Default::default()
        };
        let params = EvalParams {
            knn_k: 3,
            linear_probe_epochs: 5,
            batch_size: 4,
            ..Default::default()
        };
        let (cancel, inputs) = (std::sync::atomic::AtomicBool::new(false), BTreeMap::new());
        let out = tempfile::tempdir().unwrap();
        let pv = json!({});
        let ctx = RunCtx {
            params: &pv,
            inputs: &inputs,
            dataset_root: None,
            out_dir: out.path(),
            resume_dir: out.path(),
            seed: 0,
            checkpoint_every: 0,
            progress: &crate::api::NoProgress,
            cancel: &cancel,
        };
        let parts = Parts::new(&data, "test", None).unwrap();
        let enc = Network::new_pretrain(&cfg, 8, 3, &d, 0).unwrap();
        let r = evaluate_encoder(&enc, &data, &parts, &params, 0, &ctx).unwrap();
        assert_eq!(r.metrics["knn_top1"], 1.0, "{:?}", r.metrics);
        assert_eq!(r.metrics["probe_top1"], 1.0, "{:?}", r.metrics);
        let clf = Network::new_classifier(&cfg, 8, 3, 2, 1, &d, 0).unwrap();
        let r = evaluate_classifier(&clf, &data, &parts, &params, &ctx).unwrap();
        // Zero-initialized classifier: all logits tie, everything is predicted as class 0.
        assert_eq!(r.metrics["top1"], 0.5);
        assert_eq!(r.details["confusion"], json!([[3, 0], [3, 0]]));
        let wrong = Network::new_classifier(&cfg, 8, 3, 5, 1, &d, 0).unwrap();
        assert!(evaluate_classifier(&wrong, &data, &parts, &params, &ctx).is_err());
    }

    #[test]
    fn val_split_scores_the_holdout_and_leaves_it_out_of_the_knn_bank() {
        let data = toy_dataset(8, 6);
        let n = data.train.n;
        let dir = tempfile::tempdir().unwrap();
        let holdout = vec![dir.path().to_path_buf()];
        // No holdout node, or a split without val.txt: errors that say what to set.
        let e = Parts::new(&data, "val", None).err().unwrap().to_string();
        assert!(e.contains("holdout"), "{e}");
        let e = Parts::new(&data, "val", Some(&holdout))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("val.txt"), "{e}");
        std::fs::write(dir.path().join(VAL_FILE), "1\n4\n").unwrap();
        let parts = Parts::new(&data, "val", Some(&holdout)).unwrap();
        assert_eq!(parts.queries.as_ref(), &data.train.select(&[1, 4]));
        let rest: Vec<usize> = (0..n).filter(|i| ![1, 4].contains(i)).collect();
        assert_eq!(parts.bank.as_ref(), &data.train.select(&rest));
        std::fs::write(dir.path().join(VAL_FILE), format!("{n}\n")).unwrap();
        assert!(Parts::new(&data, "val", Some(&holdout)).is_err());
        let test = Parts::new(&data, "test", None).unwrap();
        assert_eq!(test.queries.as_ref(), &data.test);
    }
}
