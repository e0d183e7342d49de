//! The model-level speed bench: images/s of the real SimCLR pretraining step (`model::Network`,
//! two views, NT-Xent, LARS) with its fraction of the fp32 GEMM peak, and augmentation throughput.
//! The kernels' own bench (conv/BatchNorm ResNets, eval forward and training step, against
//! PyTorch) is `kernels/benches/speed.rs`; this one shares its helpers (`common`).
//!
//! Run: `cargo bench -p semiflow-stages --bench speed`
//! Filters (comma lists): `SEMIFLOW_BENCH=gemm,pretrain,augment` picks sections (`pretrain` runs
//! the models named alongside it, `small` or `r18`, or both),
//! `SEMIFLOW_BENCH_BATCH=64,256` picks batch sizes (views per step), `SEMIFLOW_BENCH_STEPS=5` sets
//! timed steps. `SEMIFLOW_BENCH_DEVICE=cuda` (or `cuda:N`; default `cpu`) runs the steps on a GPU,
//! with candle's own conv/BatchNorm there (the custom kernels are CPU-only); needs `--features cuda`.

#[path = "../../kernels/benches/common/mod.rs"]
mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{conv_flops, gemm_peak, peak_frac, time_it, Config, MODELS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semiflow_stages::augment::AugmentCfg;
use semiflow_stages::data::{loader, Images};
use semiflow_stages::loss;
use semiflow_stages::model::{ModelCfg, Network};
use semiflow_stages::optim::{Lars, Optimizer};

// Candle allocates every op result; mimalloc keeps those allocations cheap, as in the engine binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The pretrain section runs the models named among the sections, or both if none is named.
fn wants_pretrain(cfg: &Config, model: &str) -> bool {
    cfg.wants("pretrain") && (cfg.names(model) || !MODELS.iter().any(|(m, _)| cfg.names(m)))
}

/// Random 32×32 RGB images (augmentation cost does not depend on the pixel values).
fn random_images(n: usize) -> Images {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    Images {
        n,
        h: 32,
        w: 32,
        c: 3,
        pixels: (0..n * 32 * 32 * 3).map(|_| rng.gen()).collect(),
        labels: vec![0; n],
    }
}

/// One SimCLR pretraining step of the real model (`model::Network` with its 3-layer projection
/// head): both augmented views in one forward pass, NT-Xent, backward, LARS. `views` = 2N rows.
/// Returns (median seconds per step, forward GFLOP per view).
fn pretrain_step(
    widths: [usize; 4],
    views: usize,
    steps: usize,
    dev: &Device,
) -> Result<(f64, f64)> {
    let model_cfg = ModelCfg {
        depth: 18,
        width: widths[0] as f64 / 64.0,
        ..ModelCfg::default()
    };
    let net = Network::new_pretrain(&model_cfg, 32, 3, dev, 0)?;
    let n = views / 2;
    let images = random_images(n);
    let ids: Vec<usize> = (0..n).collect();
    let aug = AugmentCfg::simclr(0.5, false);
    // Augmentation runs on the prefetch thread in training, so it stays out of the timed step
    // (its throughput is its own section).
    let v1 = loader::augment_batch(&images, &ids, &aug, 0, 0, 0, dev)?;
    let v2 = loader::augment_batch(&images, &ids, &aug, 0, 0, 1, dev)?;
    let x = Tensor::cat(&[&v1, &v2], 0)?;
    let params = net.trainable();
    let mut opt = Lars::new(0.9, 1e-6);
    let secs = time_it(1, steps, || {
        let z = net.project(&x, true)?;
        let (loss, _) = loss::nt_xent(&z.narrow(0, 0, n)?, &z.narrow(0, n, n)?, 0.2)?;
        let grads = loss.backward()?;
        opt.step(&params, &grads, 0.1)?;
        loss.to_scalar::<f32>()?;
        Ok(())
    })?;
    // Head: Linear layers d→d, d→d, d→proj_dim on the encoder's d features.
    let d = net.num_features();
    let head = 2.0 * (2 * d * d + d * model_cfg.proj_dim) as f64;
    Ok((secs, conv_flops(widths) + head))
}

fn main() -> Result<()> {
    common::setup_process();
    let cfg = Config::from_env()?;
    let choice = std::env::var("SEMIFLOW_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let choice = semiflow_stages::device::DeviceChoice::parse(&choice)
        .map_err(|e| anyhow::anyhow!("SEMIFLOW_BENCH_DEVICE: {e}"))?;
    let dev = choice.open()?;
    let threads = rayon::current_num_threads();
    let on = match semiflow_stages::device::describe(&dev) {
        Some(d) => format!("on {}", d["name"].as_str().unwrap_or("a GPU")),
        None => "CPU".into(),
    };
    println!(
        "semiflow speed bench ({on}): {threads} threads, {} timed steps (median)",
        cfg.steps
    );

    let peak = if cfg.wants("gemm") || MODELS.iter().any(|(m, _)| wants_pretrain(&cfg, m)) {
        let p = gemm_peak(&dev)?;
        println!("fp32 GEMM 1024^3: {p:.0} GFLOP/s\n");
        Some(p)
    } else {
        None
    };

    // SimCLR pretraining as the `pretrain` kind runs it; images/s counts views (2 per image).
    let mut pretrain_rate: Option<f64> = None;
    if MODELS.iter().any(|(m, _)| wants_pretrain(&cfg, m)) {
        println!("| model | batch | mode | images/s | ms/step | GFLOP/s | % of GEMM peak |");
        println!("|---|---|---|---|---|---|---|");
    }
    for (name, widths) in MODELS {
        if !wants_pretrain(&cfg, name) {
            continue;
        }
        for &batch in &cfg.batches {
            let (secs, flops) = pretrain_step(widths, batch, cfg.steps, &dev)?;
            let rate = batch as f64 / secs;
            let gflops = 3.0 * flops * rate / 1e9;
            pretrain_rate = Some(pretrain_rate.map_or(rate, |r: f64| r.max(rate)));
            println!(
                "| {name} | {batch} views | pretrain (2 views, NT-Xent, LARS) | {rate:.1} | {:.1} | {gflops:.0} | {} |",
                secs * 1e3,
                peak_frac(peak, gflops)
            );
        }
    }
    // Augmentation on all threads, 32×32 RGB, batches of 256: it must outpace the training step
    // (≥ 5×) so the prefetch thread never stalls it.
    if cfg.wants("augment") {
        println!(
            "\n| augmentation (32×32, {threads} threads) | images/s | × fastest pretrain step |"
        );
        println!("|---|---|---|");
        for (name, aug) in [
            (
                "SimCLR (strength 0.5, no blur)",
                AugmentCfg::simclr(0.5, false),
            ),
            ("crop + flip", AugmentCfg::crop_flip()),
        ] {
            let rate = loader::bench_augment(4096, 32, 32, 3, &aug, 256);
            let ratio = pretrain_rate.map_or("-".to_string(), |p| format!("{:.1}×", rate / p));
            println!("| {name} | {rate:.0} | {ratio} |");
        }
    }
    Ok(())
}
