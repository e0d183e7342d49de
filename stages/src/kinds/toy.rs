//! Test-only stage kinds (`toy-train`, `toy-eval`) for exercising the engine without candle:
//! compiled only with the `test-kinds` feature, which the engine's tests enable (a dev-dependency
//! feature: release builds never have them).
//!
//! `toy-train` fits a small linear model `y = w·x` by SGD on samples drawn from a ChaCha RNG seeded
//! by the node's seed. It keeps the contract real stages keep: outputs depend only on params, inputs
//! and seed; an epoch checkpoint (weights, RNG position, epoch, loss curve) is written atomically to
//! `resume_dir` every `checkpoint_every` epochs and resumed from, so an interrupted run finishes
//! bit-identical to an uninterrupted one. `sleep_ms` slows each epoch so tests can kill it mid-run;
//! `fail_at_epoch` makes it fail on purpose; `alloc_mb` makes it hold that many megabytes (touched)
//! through every epoch, to run into a memory limit. Its implementation version can be overridden with
//! `SEMIFLOW_TOY_VERSION` so tests can simulate a code change.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::api::{
    resolve_typed, EvalSpec, KindSpec, RefSpec, RefTarget, Role, RunCtx, StageOutput,
};

/// `base` followed by the test kinds (built once; `toy-train`'s version read from the environment).
pub fn with_test_kinds(base: &'static [KindSpec]) -> &'static [KindSpec] {
    static ALL: OnceLock<Vec<KindSpec>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<KindSpec> = base.iter().map(copy_spec).collect();
        let version = std::env::var("SEMIFLOW_TOY_VERSION")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        all.push(KindSpec {
            name: "toy-train",
            version,
            summary: "TEST KIND: fits a tiny linear model by SGD (checkpoints, resumes, can fail)",
            refs: &[
                RefSpec {
                    key: "data",
                    role: "data",
                    target: RefTarget::Dataset,
                    many: false,
                    required: false,
                },
                RefSpec {
                    key: "from",
                    role: "from",
                    target: RefTarget::Node(&["toy-train"]),
                    many: false,
                    required: false,
                },
            ],
            role: Role::Train { labels_from: &[] },
            numerics: false,
            resolve_params: resolve_typed::<TrainParams>,
            run: run_train,
        });
        all.push(KindSpec {
            name: "toy-eval",
            version: 1,
            summary:
                "TEST KIND: scores toy-train models on held-out samples (top1 = sign agreement)",
            refs: &[RefSpec {
                key: "models",
                role: "models",
                target: RefTarget::Node(&["toy-train"]),
                many: true,
                required: true,
            }],
            role: Role::Eval(EvalSpec {
                models: "models",
                split_param: "split",
                default_split: "test",
                per_model: super::eval::per_model_metrics,
            }),
            numerics: false,
            resolve_params: resolve_typed::<EvalParams>,
            run: run_eval,
        });
        all
    })
}

fn copy_spec(k: &KindSpec) -> KindSpec {
    KindSpec {
        name: k.name,
        version: k.version,
        summary: k.summary,
        refs: k.refs,
        role: k.role,
        numerics: k.numerics,
        resolve_params: k.resolve_params,
        run: k.run,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    pub epochs: usize,
    pub steps: usize,
    pub lr: f64,
    pub dim: usize,
    /// Which ground-truth task (shared with `toy-eval`).
    pub task: u64,
    /// Sleep per epoch; does not affect results.
    pub sleep_ms: u64,
    pub fail_at_epoch: Option<usize>,
    /// Megabytes allocated and touched at the start of every epoch and held through it (for
    /// memory-limit tests); does not affect results. Left out of the resolved params when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub alloc_mb: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            epochs: 3,
            steps: 20,
            lr: 0.05,
            dim: 4,
            task: 0,
            sleep_ms: 0,
            fail_at_epoch: None,
            alloc_mb: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    pub samples: usize,
    pub task: u64,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            samples: 256,
            task: 0,
        }
    }
}

fn truth(task: u64, dim: usize) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(task ^ 0x5EED_7A5C);
    (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn sample(rng: &mut ChaCha8Rng, w_true: &[f64]) -> (Vec<f64>, f64) {
    let x: Vec<f64> = (0..w_true.len())
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let noise: f64 = rng.gen_range(-0.01..0.01);
    let y = x.iter().zip(w_true).map(|(a, b)| a * b).sum::<f64>() + noise;
    (x, y)
}

/// Checkpoint: epoch, RNG word position, weights, per-epoch losses. Little-endian, fixed layout.
struct Checkpoint {
    epoch: usize,
    word_pos: u128,
    w: Vec<f64>,
    losses: Vec<f64>,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.epoch as u64).to_le_bytes());
        b.extend_from_slice(&self.word_pos.to_le_bytes());
        b.extend_from_slice(&(self.w.len() as u64).to_le_bytes());
        for v in self.w.iter().chain(&self.losses) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Result<Checkpoint> {
        let u64_at = |o: usize| -> Result<u64> {
            Ok(u64::from_le_bytes(
                b.get(o..o + 8)
                    .context("truncated checkpoint")?
                    .try_into()?,
            ))
        };
        let epoch = u64_at(0)? as usize;
        let word_pos =
            u128::from_le_bytes(b.get(8..24).context("truncated checkpoint")?.try_into()?);
        let dim = u64_at(24)? as usize;
        let floats: Vec<f64> = b[32..]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if floats.len() != dim + epoch {
            bail!(
                "checkpoint holds {} values, expected {}",
                floats.len(),
                dim + epoch
            );
        }
        Ok(Checkpoint {
            epoch,
            word_pos,
            w: floats[..dim].to_vec(),
            losses: floats[dim..].to_vec(),
        })
    }
}

fn read_model(dir: &Path) -> Result<Vec<f64>> {
    let path = dir.join("model.bin");
    let b = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    Ok(())
}

fn run_train(ctx: &RunCtx) -> Result<StageOutput> {
    let p: TrainParams = ctx.params()?;
    let w_true = truth(p.task, p.dim);
    let mut seed = ctx.seed;
    if let Ok(data) = ctx.input("data") {
        // Make the result depend on the dataset's content (order-stable).
        let mut h = 0u64;
        for e in fs::read_dir(data)? {
            let bytes = fs::read(e?.path()).unwrap_or_default();
            h ^= blake_like(&bytes);
        }
        seed ^= h;
    }
    let ckpt_path = ctx.resume_dir.join("toy.ckpt");
    let mut state = if ckpt_path.exists() {
        let ck = Checkpoint::decode(&fs::read(&ckpt_path)?)
            .with_context(|| format!("reading checkpoint {}", ckpt_path.display()))?;
        ctx.progress.message(&format!(
            "resuming from epoch checkpoint at epoch {}",
            ck.epoch
        ));
        ck
    } else {
        let w = match ctx.input("from") {
            Ok(dir) => read_model(dir)?,
            Err(_) => vec![0.0; p.dim],
        };
        if w.len() != p.dim {
            bail!(
                "input model has dim {}, this node has dim {}",
                w.len(),
                p.dim
            );
        }
        Checkpoint {
            epoch: 0,
            word_pos: 0,
            w,
            losses: Vec::new(),
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_word_pos(state.word_pos);
    ctx.progress.begin(p.epochs, p.steps, state.epoch);
    while state.epoch < p.epochs {
        let epoch = state.epoch;
        if p.fail_at_epoch == Some(epoch) {
            bail!("toy-train: failing at epoch {epoch} as asked (fail_at_epoch)");
        }
        // Every page written, so the memory is resident (a lazily mapped zeroed buffer is not).
        let held: Vec<u8> = vec![1u8; (p.alloc_mb as usize) << 20];
        let mut total = 0.0;
        for step in 0..p.steps {
            ctx.check_cancel()?;
            let (x, y) = sample(&mut rng, &w_true);
            let pred: f64 = x.iter().zip(&state.w).map(|(a, b)| a * b).sum();
            let err = pred - y;
            let loss = err * err;
            if !loss.is_finite() {
                bail!("toy-train: loss is {loss} at epoch {epoch} step {step}; lower lr");
            }
            for (wi, xi) in state.w.iter_mut().zip(&x) {
                *wi -= p.lr * 2.0 * err * xi;
            }
            total += loss;
            ctx.progress.step(epoch, step, loss, 0.0);
        }
        std::thread::sleep(std::time::Duration::from_millis(p.sleep_ms));
        std::hint::black_box(&held);
        drop(held);
        let mean = total / p.steps.max(1) as f64;
        state.losses.push(mean);
        state.epoch += 1;
        state.word_pos = rng.get_word_pos();
        ctx.progress
            .epoch(epoch, &BTreeMap::from([("loss".to_string(), mean)]));
        if ctx.checkpoint_every > 0 && state.epoch % ctx.checkpoint_every == 0 {
            write_atomic(&ckpt_path, &state.encode())?;
        }
    }
    let model: Vec<u8> = state.w.iter().flat_map(|v| v.to_le_bytes()).collect();
    fs::write(ctx.out_dir.join("model.bin"), model)?;
    let final_loss = state.losses.last().copied().unwrap_or(f64::NAN);
    Ok(StageOutput {
        metrics: BTreeMap::from([("loss".to_string(), final_loss)]),
        series: BTreeMap::from([("loss".to_string(), state.losses)]),
        details: serde_json::json!({ "weights": state.w }),
    })
}

fn blake_like(bytes: &[u8]) -> u64 {
    // FNV-1a: enough to make toy outputs depend on data; not a security hash.
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn run_eval(ctx: &RunCtx) -> Result<StageOutput> {
    let p: EvalParams = ctx.params()?;
    let models = ctx
        .inputs
        .get("models")
        .context("toy-eval needs `models`")?;
    let mut per_model = Vec::new();
    let (mut top1_sum, mut mse_sum) = (0.0, 0.0);
    for dir in models {
        let w = read_model(dir)?;
        let w_true = truth(p.task, w.len());
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0xE7A1);
        let (mut agree, mut se) = (0usize, 0.0);
        for _ in 0..p.samples {
            let (x, y) = sample(&mut rng, &w_true);
            let pred: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            agree += usize::from((pred >= 0.0) == (y >= 0.0));
            se += (pred - y) * (pred - y);
        }
        let top1 = agree as f64 / p.samples.max(1) as f64;
        let mse = se / p.samples.max(1) as f64;
        top1_sum += top1;
        mse_sum += mse;
        per_model.push(serde_json::json!({ "top1": top1, "mse": mse }));
    }
    let n = models.len().max(1) as f64;
    let metrics = BTreeMap::from([
        ("top1".to_string(), top1_sum / n),
        ("mse".to_string(), mse_sum / n),
    ]);
    fs::write(
        ctx.out_dir.join("metrics.json"),
        serde_json::to_vec_pretty(&metrics)?,
    )?;
    Ok(StageOutput {
        metrics,
        series: BTreeMap::new(),
        details: serde_json::json!({ "per_model": per_model }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_roundtrips() {
        let ck = Checkpoint {
            epoch: 2,
            word_pos: 1 << 70,
            w: vec![0.5, -1.0],
            losses: vec![3.0, 2.0],
        };
        let back = Checkpoint::decode(&ck.encode()).unwrap();
        assert_eq!(
            (back.epoch, back.word_pos, back.w, back.losses),
            (2, 1 << 70, vec![0.5, -1.0], vec![3.0, 2.0])
        );
    }
}
