//! A short contrastive pretraining on real CIFAR-10 images (the 300 training JPEGs committed
//! under `tests/data/cifar10-tiny`) must give an encoder whose kNN top-1 accuracy is clearly above
//! that of randomly initialized encoders of the same architecture, evaluated the same way (the
//! `eval` kind, k = 20, bank = the 300 images, queries = 1,000 held-out test images).
//!
//! Settings: ResNet-10 at width 0.125, batch 64 (4 steps per epoch), 40 epochs, LARS lr 3.0
//! (× 64/256), τ = 0.5 — about 26 s on 2 idle CPU cores. Margins seen over the mean of the three
//! random encoders (21.2%) with these settings: +4.3 (seed 0, 25.5%), +3.1 (seed 1, 24.3%), +4.4
//! points (seed 2, 25.6%). At 15 epochs the margins were +3.6..+6.0 before the fused residual
//! kernels landed and +1.5 (seed 0) after: too close to the noise, hence 40. The asserted margin of 2.5 points (25 of 1,000 queries, about
//! twice the standard deviation of such a difference). What was tried and why these settings:
//! - lr 1.0 moved the loss less and gave +10 and −3 points for two seeds (on the 100 tiny-set
//!   queries); lr 10 and 30 gave no more than lr 3 (+2.4, +1.9 over the seed-0 random encoder);
//!   τ = 0.2 (+1.4) and batch 32 (+0.2) were worse;
//! - 30 epochs gave +3.3 over the seed-0 random encoder versus +1.8 at 15: more training helps,
//!   but slowly; this budget only buys a few points on 300 images.
//!
//! The `PRETRAIN_LEARNS_*` environment variables override the settings, for tuning:
//! `EPOCHS`, `LR`, `TEMPERATURE`, `WIDTH`, `BATCH`, `SEEDS` (comma-separated pretrain seeds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use semiflow_stages::api::{kind, NoProgress, RunCtx, StageOutput};
use semiflow_stages::data::image_folder;
use semiflow_stages::model::{ModelCfg, Network};

// Candle allocates every op result; mimalloc keeps that cheap, as in the engine binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Random initializations averaged into the baseline.
const RANDOM_INITS: u64 = 3;
/// How far above the baseline's kNN top-1 the pretrained encoder must be.
const MARGIN: f64 = 0.025;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(format!("PRETRAIN_LEARNS_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the stage kind `name` with raw (unresolved) `params`.
fn run_kind(
    name: &str,
    params: serde_json::Value,
    inputs: &[(&str, &Path)],
    out: &Path,
    seed: u64,
) -> StageOutput {
    let spec = kind(name).unwrap_or_else(|| panic!("stage kind `{name}` is not registered"));
    let params = (spec.resolve_params)(&params).unwrap_or_else(|e| panic!("{name} params: {e}"));
    let mut by_role: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (role, dir) in inputs {
        by_role
            .entry(role.to_string())
            .or_default()
            .push(dir.to_path_buf());
    }
    let resume = out.with_extension("resume");
    std::fs::create_dir_all(out).unwrap();
    std::fs::create_dir_all(&resume).unwrap();
    let cancel = AtomicBool::new(false);
    let ctx = RunCtx {
        params: &params,
        inputs: &by_role,
        dataset_root: None,
        out_dir: out,
        resume_dir: &resume,
        seed,
        checkpoint_every: 0,
        progress: &NoProgress,
        cancel: &cancel,
    };
    (spec.run)(&ctx).unwrap_or_else(|e| panic!("{name} failed: {e:#}"))
}

fn knn_top1(model_dir: &Path, data_dir: &Path, out: &Path) -> f64 {
    // k = 20: with a 300-image bank (30 per class) the default k = 200 would let most of the
    // bank vote on every query.
    let params = serde_json::json!({ "knn_k": 20 });
    let r = run_kind(
        "eval",
        params,
        &[("models", model_dir), ("data", data_dir)],
        out,
        0,
    );
    r.metrics["knn_top1"]
}

/// The engine binary's CPU setup (see `src/main.rs` and `benches/speed.rs`): a fixed rayon pool
/// size (unset, candle re-reads /proc/cpuinfo on every matmul) and mimalloc keeping freed pages
/// mapped. Called before any rayon use; this file holds one test, so no other thread is running.
fn cpu_setup() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // `mi_option_purge_delay` is 15 in mimalloc.h (v2 and v3); libmimalloc-sys names no constant.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setter of the linked mimalloc.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[test]
fn pretraining_beats_a_random_encoder_in_knn_accuracy() {
    cpu_setup();
    let epochs: usize = env_or("EPOCHS", 40);
    let lr: f64 = env_or("LR", 3.0);
    let temperature: f64 = env_or("TEMPERATURE", 0.5);
    let width: f64 = env_or("WIDTH", 0.125);
    let batch_size: usize = env_or("BATCH", 64);
    let seeds: Vec<u64> = std::env::var("PRETRAIN_LEARNS_SEEDS")
        .unwrap_or_else(|_| "0".into())
        .split(',')
        .map(|s| s.trim().parse().expect("PRETRAIN_LEARNS_SEEDS: integers"))
        .collect();

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut ds =
        image_folder::read(&repo.join("tests/data/cifar10-tiny"), "train", "test").unwrap();
    // Queries: the 1,000 test images of the committed 5,000-image subset rather than the 100 of
    // the tiny set. With 100 queries one image is a whole point and the paired difference of two
    // encoders has a standard deviation of ~4 points, so no margin would be both meaningful and
    // stable; with 1,000 it is ~1.5. The bank (kNN train split) stays the 300 pretraining images.
    let queries = image_folder::read(&repo.join("data/cifar10-small"), "train", "test").unwrap();
    assert_eq!(queries.classes, ds.classes);
    ds.test = queries.test;
    assert_eq!((ds.train.n, ds.test.n), (300, 1000));
    ds.save(&data_dir).unwrap();

    let model = serde_json::json!({ "depth": 10, "width": width });
    let cfg: ModelCfg = serde_json::from_value(model.clone()).unwrap();
    // The baseline is the mean over three random initializations: single random encoders vary by
    // several points on these queries (23.2%, 19.6%, 20.7% for seeds 0–2), which would make a
    // comparison with any one of them a lottery.
    let random: Vec<f64> = (0..RANDOM_INITS)
        .map(|seed| {
            let dir = tmp.path().join(format!("random{seed}"));
            std::fs::create_dir_all(&dir).unwrap();
            Network::new_pretrain(&cfg, 32, 3, &Device::Cpu, seed)
                .unwrap()
                .save(&dir)
                .unwrap();
            knn_top1(&dir, &data_dir, &tmp.path().join(format!("eval_r{seed}")))
        })
        .collect();
    let baseline = random.iter().sum::<f64>() / random.len() as f64;

    let mut results = Vec::new();
    for seed in seeds {
        let pre_dir = tmp.path().join(format!("pretrain{seed}"));
        let started = std::time::Instant::now();
        let out = run_kind(
            "pretrain",
            serde_json::json!({
                "model": model,
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "temperature": temperature,
            }),
            &[("data", &data_dir)],
            &pre_dir,
            seed,
        );
        let secs = started.elapsed().as_secs_f64();
        let trained = knn_top1(
            &pre_dir,
            &data_dir,
            &tmp.path().join(format!("eval_p{seed}")),
        );
        eprintln!(
            "seed {seed}: kNN top-1 pretrained {trained:.3}, random {random:.3?} (mean \
             {baseline:.3}); {epochs} epochs in {secs:.1} s; loss per epoch {:.3?}",
            out.series.get("loss")
        );
        results.push((seed, trained));
    }
    for (seed, trained) in results {
        assert!(
            trained >= baseline + MARGIN,
            "seed {seed}: pretrained kNN top-1 {trained:.3} is not {:.1} points above the mean \
             of {RANDOM_INITS} random encoders ({baseline:.3}; each {random:.3?})",
            MARGIN * 100.0
        );
    }
}
