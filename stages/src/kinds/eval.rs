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
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{
    resolve_typed, EvalSpec, KindSpec, ParamError, RefSpec, RefTarget, Role, RunCtx, StageOutput,
};
use crate::device::DeviceChoice;
use crate::evaluate::{extract, ClassScores, EncoderKnn, LinearProbe};
use crate::model::{read_sidecar, Network};

use crate::data::split::load_ids;
use crate::data::{Dataset, Images};
use crate::kinds::split::VAL_FILE;

pub const SPEC: KindSpec = KindSpec {
    name: "eval",
    // v2: fused residual BatchNorm (a numerics change from before `NUMERICS_VERSION`; such changes
    // now bump that one shared version, never this one).
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
    role: Role::Eval(EVAL),
    numerics: true,
    resolve_params,
    run,
};

/// The report's view of eval records: `models` in order, the `split` parameter, and metrics
/// prefixed `model<i>.` when several models are scored.
pub const EVAL: EvalSpec = EvalSpec {
    models: "models",
    split_param: "split",
    default_split: "test",
    per_model: per_model_metrics,
};

/// Each model's metrics from an eval record's: unprefixed with one model, `model<i>.`-prefixed
/// with several (`None` if a record of several models has no such keys).
pub fn per_model_metrics(
    metrics: &BTreeMap<String, f64>,
    models: usize,
) -> Option<Vec<BTreeMap<String, f64>>> {
    if models == 1 {
        return Some(vec![metrics.clone()]);
    }
    if models == 0 || !metrics.keys().any(|k| k.starts_with("model0.")) {
        return None;
    }
    Some(
        (0..models)
            .map(|i| {
                let prefix = format!("model{i}.");
                metrics
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), *v)))
                    .collect()
            })
            .collect(),
    )
}

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
    /// Where to compute: "cpu" (default), "cuda" or "cuda:N" (`crate::device`). Absent from the
    /// resolved params (and so from the cache key) when "cpu".
    #[serde(skip_serializing_if = "DeviceChoice::is_cpu")]
    pub device: DeviceChoice,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            batch_size: 256,
            knn_k: 200,
            knn_temperature: 0.1,
            linear_probe_epochs: 0,
            split: "test".into(),
            device: DeviceChoice::Cpu,
        }
    }
}

fn resolve_params(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    let v = resolve_typed::<EvalParams>(raw)?;
    let p: EvalParams = serde_json::from_value(v.clone()).expect("just serialized");
    if p.batch_size == 0 {
        return Err(ParamError::new("batch_size", "must be at least 1"));
    }
    if p.knn_k == 0 {
        return Err(ParamError::new("knn_k", "must be at least 1"));
    }
    if !(p.knn_temperature.is_finite() && p.knn_temperature > 0.0) {
        return Err(ParamError::new(
            "knn_temperature",
            "must be a positive number",
        ));
    }
    if !["test", "train", "val"].contains(&p.split.as_str()) {
        return Err(ParamError::new(
            "split",
            "must be \"test\", \"train\" or \"val\" (with `holdout` naming a split node)",
        ));
    }
    Ok(v)
}

fn run(ctx: &RunCtx) -> Result<StageOutput> {
    let params: EvalParams = ctx.params()?;
    let (choice, batch_size) = (params.device, params.batch_size);
    crate::device::run_on(ctx, choice, batch_size, |device| {
        run_on(ctx, params, device)
    })
}

fn run_on(ctx: &RunCtx, params: EvalParams, device: Device) -> Result<StageOutput> {
    let data_dir = ctx.input("data")?;
    let dataset = Dataset::load(data_dir)
        .with_context(|| format!("loading dataset {}", data_dir.display()))?;
    let model_dirs = ctx
        .inputs
        .get("models")
        .filter(|v| !v.is_empty())
        .context("eval needs at least one model in `models`")?;
    let parts = Parts::new(&dataset, &params.split, ctx.inputs.get("holdout"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelCfg;
    use rand::{Rng, SeedableRng};

    #[test]
    fn per_model_metrics_undo_the_prefix() {
        let one = BTreeMap::from([("top1".to_string(), 0.5)]);
        assert_eq!(per_model_metrics(&one, 1), Some(vec![one.clone()]));
        assert_eq!(per_model_metrics(&one, 2), None);
        let two = BTreeMap::from([
            ("model0.top1".to_string(), 0.5),
            ("model1.knn_top1".to_string(), 0.25),
        ]);
        let split = per_model_metrics(&two, 2).unwrap();
        assert_eq!(split[0], BTreeMap::from([("top1".to_string(), 0.5)]));
        assert_eq!(split[1], BTreeMap::from([("knn_top1".to_string(), 0.25)]));
    }

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
