//! `distill`: SimCLRv2 distillation. A frozen teacher (eval mode, no autograd graph) labels every
//! train image; a student (random init, or a pretrained checkpoint: see `init` below) learns to
//! match softmax(teacher/τ) with the soft cross-entropy (scaled by τ²), optionally mixed with
//! cross-entropy on the labeled examples of each batch: loss = mean over the batch of
//! (1−α)·distill + α·CE, where CE counts only on labeled images (0 elsewhere). Crop+flip
//! augmentation; teacher and student see the same crop, or with `teacher_view = "clean"` the
//! teacher labels each whole unaugmented image once before training (Noisy Student's split of a
//! clean teacher and a noised student) while the student still learns on random crops.
//!
//! Inputs: `teacher` (a finetune, distill or supervised node), `data`, optional `labels` (a split
//! node; needed when `alpha` > 0), optional `init` (a pretrain or classifier node). Output: the student
//! checkpoint. Metrics: final `loss` and `agreement` (fraction of images where student and teacher
//! predict the same class); series.
//!
//! The student's architecture defaults to the teacher's (self-distillation, which SimCLRv2 shows
//! still helps); give `model` for a smaller student.
//!
//! `init` (optional, a pretrain node) starts the student from that self-supervised checkpoint
//! (encoder and head layers 1..=head_layer, zero classifier) instead of random weights: the
//! student then begins where its teacher's fine-tuning began, but learns from the teacher's labels
//! on every unlabeled image. Under a CPU budget of a few distillation epochs this is what lets a
//! self-distilled student match or beat its teacher; a random-init student needs far more epochs.
//! `init` may also name a classifier node (finetune, distill, supervised): the student then starts
//! as that network, classifier included (`init = "finetune"`, the teacher itself, makes
//! self-distillation a continuation of the teacher on its own soft labels of the unlabeled images).

use std::collections::HashSet;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::train::{self, StepLoss, Trainer, Training};
use crate::api::{KindSpec, ParamError, RefSpec, RefTarget, Role, RunCtx, StageOutput};
use crate::augment::AugmentCfg;
use crate::data::loader::{augment_batch, step_batch};
use crate::device::DeviceChoice;
use crate::loss::{cross_entropy, soft_cross_entropy};
use crate::model::{ModelCfg, Network};
use crate::optim::{Optimizer, OptimizerKind, Param, Scaling};

pub const SPEC: KindSpec = KindSpec {
    name: "distill",
    // v2: fused residual BatchNorm (a numerics change from before `NUMERICS_VERSION`; such changes
    // now bump that one shared version, never this one).
    // v3: the labeled cross-entropy (alpha > 0) is averaged over the whole batch.
    version: 3,
    summary: "distill a frozen teacher into a student on all (unlabeled) train images",
    refs: &[
        RefSpec {
            key: "teacher",
            role: "teacher",
            target: RefTarget::Node(&["finetune", "distill", "supervised"]),
            many: false,
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
            key: "labels",
            role: "labels",
            target: RefTarget::Node(&["split"]),
            many: false,
            required: false,
        },
        RefSpec {
            key: "init",
            role: "init",
            // A pretrain node, a classifier node (the student starts as that network: the teacher
            // itself for self-distillation), or `init = { file, format }` (kinds/import.rs).
            target: RefTarget::Node(&[
                "pretrain",
                "finetune",
                "distill",
                "supervised",
                super::import::KIND,
            ]),
            many: false,
            required: false,
        },
    ],
    role: Role::Train {
        labels_from: &["labels", "teacher"],
    },
    numerics: true,
    resolve_params: resolve,
    run,
};

train::training_params! {
    pub struct Params {
        /// Student architecture; `None` = the teacher's.
        pub model: Option<ModelCfg> = None,
        /// Student's classifier head layer; `None` = the teacher's.
        pub head_layer: Option<usize> = None,
        /// Distillation temperature τ.
        pub temperature: f64 = 1.0,
        /// Weight of the labeled cross-entropy (requires `labels`).
        pub alpha: f64 = 0.0,
        /// What the teacher sees.
        pub teacher_view: TeacherView = TeacherView::Same,
    }
    training = Training {
        epochs: 30,
        batch_size: 128,
        optimizer: OptimizerKind::Lars,
        lr: 1.0,
        lr_scaling: Scaling::Linear,
        momentum: 0.9,
        weight_decay: 1e-4,
        warmup_epochs: 1.0,
        nesterov: false,
        device: DeviceChoice::Cpu,
    };
}

/// The input the teacher's soft labels come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherView {
    /// The student's augmented crop, each step (SimCLRv2).
    Same,
    /// The whole unaugmented image, labeled once before training: the teacher's most accurate
    /// view, and one teacher pass over the images however many epochs the student trains.
    Clean,
}

fn check(p: &Params) -> Result<(), ParamError> {
    if let Some(m) = &p.model {
        train::check_model(m)?;
        if let Some(h) = p.head_layer {
            if h > m.head_layers {
                return Err(ParamError::new(
                    "head_layer",
                    format!("must be at most model.head_layers = {}", m.head_layers),
                ));
            }
        }
    }
    p.training().check()?;
    if !(p.temperature > 0.0 && p.temperature.is_finite()) {
        return Err(ParamError::new(
            "temperature",
            format!("must be positive, got {}", p.temperature),
        ));
    }
    if !(0.0..=1.0).contains(&p.alpha) {
        return Err(ParamError::new(
            "alpha",
            format!("must be in [0, 1], got {}", p.alpha),
        ));
    }
    Ok(())
}

fn resolve(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    train::resolve_checked::<Params>(raw, check)
}

/// One step's input.
struct Batch {
    x: Tensor,
    /// The teacher's logits for these images when they were computed ahead (`teacher_view =
    /// "clean"`); `None`: the teacher labels `x` itself.
    teacher_logits: Option<Tensor>,
    /// Rows of `x` whose image is in the labeled split, and their labels.
    labeled_rows: Option<(Tensor, Tensor)>,
}

struct Distiller {
    /// `None` when every image's teacher logits were computed ahead.
    teacher: Option<Network>,
    student: Network,
    params: Vec<Param>,
    opt: Box<dyn Optimizer + Send>,
    temperature: f64,
    alpha: f64,
}

impl Trainer for Distiller {
    type Batch = Batch;

    fn forward(&mut self, b: Batch) -> anyhow::Result<StepLoss> {
        let images = b.x.dim(0)?;
        let teacher = match (b.teacher_logits, &self.teacher) {
            (Some(t), _) => t,
            // Eval mode: running BN statistics, detached weights, no graph.
            (None, Some(net)) => net.logits(&b.x, false)?.detach(),
            (None, None) => anyhow::bail!("distill: no teacher logits for the batch"),
        };
        let student = self.student.logits(&b.x, true)?;
        let mut loss = soft_cross_entropy(&student, &teacher, self.temperature)?;
        if self.alpha > 0.0 {
            loss = (loss * (1.0 - self.alpha))?;
            if let Some((rows, labels)) = &b.labeled_rows {
                let ce = labeled_cross_entropy(&student, rows, labels)?;
                loss = (loss + (ce * self.alpha)?)?;
            }
        }
        let s_pred = student.detach().argmax(1)?.to_vec1::<u32>()?;
        let t_pred = teacher.argmax(1)?.to_vec1::<u32>()?;
        let agree =
            s_pred.iter().zip(&t_pred).filter(|(a, b)| a == b).count() as f64 / images as f64;
        Ok(StepLoss {
            loss,
            metrics: vec![("agreement", agree)],
            images,
        })
    }

    fn update(&mut self, loss: &Tensor, lr: f64) -> anyhow::Result<()> {
        let grads = loss.backward()?;
        self.opt.step(&self.params, &grads, lr)
    }

    fn state(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        Ok(train::net_and_opt_state(&self.student, self.opt.as_ref()))
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        train::load_net_and_opt(&self.student, self.opt.as_mut(), state)
    }
}

fn run(ctx: &RunCtx) -> anyhow::Result<StageOutput> {
    let p: Params = ctx.params()?;
    let (choice, batch_size) = (p.device, p.batch_size);
    crate::device::run_on(ctx, choice, batch_size, |device| run_on(ctx, p, device))
}

fn run_on(ctx: &RunCtx, p: Params, device: candle_core::Device) -> anyhow::Result<StageOutput> {
    let ds = train::load_dataset(ctx, "data")?;
    let teacher_dir = ctx.input("teacher")?;
    let teacher = Network::load(teacher_dir, &device)?;
    let (Some(num_classes), Some(teacher_head)) = (teacher.num_classes(), teacher.head_layer())
    else {
        anyhow::bail!(
            "teacher {} is not a classifier checkpoint",
            teacher_dir.display()
        );
    };
    anyhow::ensure!(
        num_classes == ds.classes.len() && teacher.image_size() == ds.train.h && teacher.in_channels() == ds.train.c,
        "teacher {} ({} classes, {}×{}×{} inputs) does not match the dataset ({} classes, {}×{}×{})",
        teacher_dir.display(),
        num_classes,
        teacher.image_size(),
        teacher.image_size(),
        teacher.in_channels(),
        ds.classes.len(),
        ds.train.h,
        ds.train.w,
        ds.train.c
    );
    let has_labels = ctx.inputs.get("labels").is_some_and(|v| !v.is_empty());
    anyhow::ensure!(
        p.alpha == 0.0 || has_labels,
        "alpha = {} weighs a labeled cross-entropy, but no `labels` split is given",
        p.alpha
    );
    let labeled: Option<Arc<HashSet<usize>>> = if has_labels && p.alpha > 0.0 {
        Some(Arc::new(
            train::load_labeled(ctx, "labels", ds.train.n)?
                .into_iter()
                .collect(),
        ))
    } else {
        None
    };

    let cfg = p.model.clone().unwrap_or_else(|| teacher.arch().clone());
    let head_layer = p.head_layer.unwrap_or(teacher_head);
    let init_seed = train::seed_for(ctx, "distill.init");
    let mut student_init = "random";
    let student = match ctx.inputs.get("init").and_then(|v| v.first()) {
        Some(init_dir) => {
            let (net, from) = super::import::student_init(
                init_dir,
                &cfg,
                &ds,
                head_layer,
                num_classes,
                &device,
                init_seed,
            )?;
            student_init = from;
            // Depth and width name the usual mismatch; the full config shows any other.
            let short = |m: &ModelCfg| format!("depth {} width {}", m.depth, m.width);
            let same_short = short(net.arch()) == short(&cfg);
            let arch = |m: &ModelCfg| {
                if same_short {
                    format!("{m:?}")
                } else {
                    short(m)
                }
            };
            anyhow::ensure!(
                net.arch() == &cfg,
                "init {} holds a {} network but the student is {} (give `model` the init's \
                 architecture, or drop `init`)",
                init_dir.display(),
                arch(net.arch()),
                arch(&cfg)
            );
            train::check_input_shape(&net, &ds, &format!("init {}", init_dir.display()))?;
            net
        }
        None => Network::new_classifier(
            &cfg,
            ds.train.h,
            ds.train.c,
            num_classes,
            head_layer,
            &device,
            init_seed,
        )?,
    };
    // The clean view's labels do not change during training: one eval pass over the images.
    let (teacher, clean_logits) = match p.teacher_view {
        TeacherView::Same => (Some(teacher), None),
        TeacherView::Clean => {
            let (_, logits) = crate::evaluate::extract(&teacher, &ds.train, 256, Some(ctx))?;
            let logits = logits
                .ok_or_else(|| {
                    anyhow::anyhow!("teacher {} produced no logits", teacher_dir.display())
                })?
                .to_dtype(candle_core::DType::F32)?;
            (None, Some(Arc::new(logits)))
        }
    };
    let (spec, batch) = train::loop_spec("distill", p.training().schedule(), ds.train.n)?;
    let mut trainer = Distiller {
        teacher,
        params: train::optimizer_params(&student),
        student,
        opt: p.training().optimizer(),
        temperature: p.temperature,
        alpha: p.alpha,
    };

    let images = Arc::new(ds.train);
    let n_images = images.n;
    let seed = train::seed_for(ctx, "distill.data");
    let aug = AugmentCfg::crop_flip();
    let make_batch = move |epoch: usize, step: usize| -> anyhow::Result<Batch> {
        let ids = &step_batch(images.n, seed, epoch, step, batch);
        let x = augment_batch(&images, ids, &aug, seed, epoch, 0, &device)?;
        let teacher_logits = match &clean_logits {
            Some(all) => {
                let rows: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                let rows = Tensor::from_vec(rows, ids.len(), all.device())?;
                Some(all.index_select(&rows, 0)?.to_device(&device)?)
            }
            None => None,
        };
        let labeled_rows = match &labeled {
            Some(set) => labeled_rows(&images.labels, ids, set, &device)?,
            None => None,
        };
        Ok(Batch {
            x,
            teacher_logits,
            labeled_rows,
        })
    };
    let result = train::run(ctx, &spec, &mut trainer, make_batch)?;
    trainer.student.save(ctx.out_dir)?;
    Ok(StageOutput {
        metrics: result.final_metrics(),
        series: result.series,
        details: serde_json::json!({
            "train_images": n_images,
            "steps_per_epoch": spec.steps_per_epoch,
            "batch_size": batch,
            "peak_lr": spec.peak_lr,
            "student_head_layer": head_layer,
            "student_init": student_init,
            "teacher_view": p.teacher_view,
        }),
    })
}

/// Cross-entropy of the batch's labeled rows, summed and divided by the whole batch (not by the
/// labeled rows), like the distillation term: a mean over the few labeled rows alone would weigh
/// each labeled image batch/labeled times more (10× at 10% labels), which at distillation
/// learning rates wrecked the student (29% vs 57% on CIFAR-10 validation at alpha 0.5).
fn labeled_cross_entropy(
    student: &Tensor,
    rows: &Tensor,
    labels: &Tensor,
) -> candle_core::Result<Tensor> {
    let share = rows.dim(0)? as f64 / student.dim(0)? as f64;
    cross_entropy(&student.index_select(rows, 0)?, labels)? * share
}

/// Positions in the batch `ids` of labeled images and their labels, `None` if there are none.
fn labeled_rows(
    labels: &[u32],
    ids: &[usize],
    labeled: &HashSet<usize>,
    device: &Device,
) -> anyhow::Result<Option<(Tensor, Tensor)>> {
    let (rows, ys): (Vec<u32>, Vec<u32>) = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| labeled.contains(id))
        .map(|(row, &id)| (row as u32, labels[id]))
        .unzip();
    if rows.is_empty() {
        return Ok(None);
    }
    let n = rows.len();
    Ok(Some((
        Tensor::from_vec(rows, n, device)?,
        Tensor::from_vec(ys, n, device)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::super::train::testutil::{dataset_and_split, files, tiny_model, tiny_pretrain, Run};
    use super::*;

    /// A supervised teacher, then a self-distilled student with α = 0.5 on the labels: the student
    /// learns to agree with the teacher on the (unlabeled) train images.
    #[test]
    fn student_learns_to_agree_with_the_teacher() {
        let root = tempfile::tempdir().unwrap();
        let (data, split) = dataset_and_split(root.path(), 12, &[0, 1, 2, 3]);
        let teacher = Run {
            kind: &super::super::supervised::SPEC,
            params: serde_json::json!({ "model": tiny_model(), "epochs": 10, "batch_size": 4, "lr": 0.05, "lr_scaling": "sqrt" }),
            inputs: vec![("data", data.clone()), ("labels", split.clone())],
            out: root.path().join("teacher"),
            resume: root.path().join("teacher-resume"),
            seed: 1,
            checkpoint_every: 0,
        };
        teacher.run().unwrap();
        let student = Run {
            kind: &SPEC,
            params: serde_json::json!({ "epochs": 6, "batch_size": 8, "alpha": 0.5, "temperature": 2.0, "lr": 0.2, "optimizer": "sgd", "weight_decay": 0.0 }),
            inputs: vec![
                ("teacher", teacher.out.clone()),
                ("data", data.clone()),
                ("labels", split),
            ],
            out: root.path().join("student"),
            resume: root.path().join("student-resume"),
            seed: 2,
            checkpoint_every: 0,
        };
        let out = student.run().unwrap();
        let loss = &out.series["loss"];
        assert_eq!(loss.len(), 6);
        assert!(loss[5] < loss[0], "{loss:?}");
        assert!(
            out.metrics["agreement"] > 0.9,
            "{:?}",
            out.series["agreement"]
        );
        assert!(files(&student.out).contains_key("model.safetensors"));

        // α > 0 without labels is refused before training.
        let mut no_labels = Run {
            inputs: vec![("teacher", teacher.out.clone()), ("data", data)],
            ..student
        };
        no_labels.out = root.path().join("x");
        let err = no_labels.run().unwrap_err().to_string();
        assert!(err.contains("no `labels` split"), "{err}");

        // A clean-view teacher (logits of the whole images, computed once) teaches as well.
        let clean = Run {
            params: serde_json::json!({ "epochs": 6, "batch_size": 8, "temperature": 2.0, "lr": 0.2, "optimizer": "sgd", "weight_decay": 0.0, "teacher_view": "clean" }),
            out: root.path().join("clean"),
            resume: root.path().join("clean-resume"),
            ..no_labels
        };
        let out = clean.run().unwrap();
        assert_eq!(out.details["teacher_view"], "clean");
        assert!(
            out.metrics["agreement"] > 0.9,
            "{:?}",
            out.series["agreement"]
        );
    }

    /// `init` starts the student from the pretrain checkpoint: with a vanishing learning rate its
    /// conv kernels are still the pretrained ones after an epoch, while a random-init student's are
    /// not; an init of another architecture is refused with both architectures named.
    #[test]
    fn init_starts_the_student_from_the_pretrained_encoder() {
        let root = tempfile::tempdir().unwrap();
        let (data, split) = dataset_and_split(root.path(), 6, &[0, 1, 2, 3]);
        let pre = tiny_pretrain(root.path(), &data);
        let teacher = Run {
            kind: &super::super::finetune::SPEC,
            params: serde_json::json!({ "epochs": 1, "batch_size": 4 }),
            inputs: vec![
                ("from", pre.clone()),
                ("labels", split),
                ("data", data.clone()),
            ],
            out: root.path().join("teacher"),
            resume: root.path().join("teacher-resume"),
            seed: 1,
            checkpoint_every: 0,
        };
        teacher.run().unwrap();
        let student = |name: &str, init: bool| {
            let mut inputs = vec![("teacher", teacher.out.clone()), ("data", data.clone())];
            if init {
                inputs.push(("init", pre.clone()));
            }
            Run {
                kind: &SPEC,
                params: serde_json::json!({ "epochs": 1, "batch_size": 8, "lr": 1e-12, "optimizer": "sgd" }),
                inputs,
                out: root.path().join(name),
                resume: root.path().join(format!("{name}-resume")),
                seed: 2,
                checkpoint_every: 0,
            }
        };
        // The checkpoint's tensors that `keep` selects, by name.
        let tensors = |dir: &std::path::Path, keep: fn(&str, &Tensor) -> bool| {
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
                .unwrap()
                .into_iter()
                .filter(|(k, v)| keep(k, v))
                .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let kernels = |dir: &std::path::Path| tensors(dir, |_, v| v.rank() == 4);
        let max_diff = |a: &std::collections::BTreeMap<String, Vec<f32>>,
                        b: &std::collections::BTreeMap<String, Vec<f32>>| {
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
            a.iter()
                .flat_map(|(k, v)| v.iter().zip(&b[k]).map(|(x, y)| (x - y).abs()))
                .fold(0f32, f32::max)
        };
        let pretrained = kernels(&pre);
        let inited = student("inited", true);
        let out = inited.run().unwrap();
        assert_eq!(out.details["student_init"], "pretrain");
        assert!(max_diff(&pretrained, &kernels(&inited.out)) < 1e-6);
        let random = student("random", false);
        assert_eq!(random.run().unwrap().details["student_init"], "random");
        assert!(max_diff(&pretrained, &kernels(&random.out)) > 1e-2);

        // From a classifier (the teacher itself): the student starts as the teacher, classifier
        // included, so at a vanishing rate every weight is the teacher's (BatchNorm's running
        // statistics still move); a student whose classifier sits elsewhere is refused with both
        // head layers named.
        let all = |dir: &std::path::Path| tensors(dir, |k, _| !k.contains("running"));
        let mut from_teacher = student("from_teacher", false);
        from_teacher.inputs.push(("init", teacher.out.clone()));
        let out = from_teacher.run().unwrap();
        assert_eq!(out.details["student_init"], "classifier");
        assert!(all(&teacher.out).keys().any(|k| k.contains("classifier")));
        assert!(max_diff(&all(&teacher.out), &all(&from_teacher.out)) < 1e-6);
        let mut elsewhere = student("elsewhere", false);
        elsewhere.inputs.push(("init", teacher.out.clone()));
        elsewhere.params["head_layer"] = serde_json::json!(0);
        let err = format!("{:#}", elsewhere.run().unwrap_err());
        assert!(
            err.contains("head layer 1") && err.contains("head layer 0"),
            "{err}"
        );

        let mut other = student("other", true);
        let mut model = tiny_model();
        model["width"] = serde_json::json!(0.125);
        other.params["model"] = model;
        let err = format!("{:#}", other.run().unwrap_err());
        assert!(err.contains("init") && err.contains("width 0.125"), "{err}");
        // Same depth and width, another head: the full configurations are shown.
        let mut other_head = student("other_head", true);
        let mut model = tiny_model();
        model["proj_dim"] = serde_json::json!(8);
        other_head.params["model"] = model;
        let err = format!("{:#}", other_head.run().unwrap_err());
        assert!(
            err.contains("proj_dim: 8") && err.contains("proj_dim: 16"),
            "{err}"
        );
    }

    /// The labeled term weighs each labeled image like one image of the batch: the sum of its
    /// rows' cross-entropies over the batch size, not their mean.
    #[test]
    fn labeled_cross_entropy_is_averaged_over_the_whole_batch() {
        let dev = Device::Cpu;
        let logits: Vec<f32> = (0..8 * 3)
            .map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.6)
            .collect();
        let student = Tensor::from_vec(logits.clone(), (8, 3), &dev).unwrap();
        let rows = Tensor::new(&[1u32, 4], &dev).unwrap();
        let labels = Tensor::new(&[2u32, 0], &dev).unwrap();
        let got = labeled_cross_entropy(&student, &rows, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let nll = |row: usize, label: usize| {
            let z = &logits[row * 3..row * 3 + 3];
            let lse = z.iter().map(|v| v.exp()).sum::<f32>().ln();
            lse - z[label]
        };
        let want = (nll(1, 2) + nll(4, 0)) / 8.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn defaults() {
        let v = resolve(&serde_json::json!({})).unwrap();
        assert_eq!(v["model"], serde_json::Value::Null);
        assert_eq!(v["temperature"], 1.0);
        assert_eq!(v["alpha"], 0.0);
        assert_eq!(v["teacher_view"], "same");
        let err = resolve(&serde_json::json!({ "teacher_view": "noisy" })).unwrap_err();
        assert!(err.to_string().contains("teacher_view"), "{err}");
        assert_eq!(
            resolve(&serde_json::json!({ "alpha": 1.5 }))
                .unwrap_err()
                .path,
            "alpha"
        );
    }
}
