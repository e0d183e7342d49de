//! CPU speed benchmark: fp32 GEMM peak, then images/s of an eval forward and of a full training
//! step (forward + backward + SGD) for a small CIFAR ResNet and ResNet-18, built on
//! `semiflow_stages::kernels`; the real SimCLR pretraining step (`model::Network`, two views,
//! NT-Xent, LARS); augmentation throughput. Every step row shows its fraction of the GEMM peak.
//!
//! Run: `cargo bench -p semiflow-stages --bench speed`
//! Filters (comma lists): `SEMIFLOW_BENCH=gemm,small,r18,pretrain,augment` picks sections
//! (`pretrain` runs the models named alongside it, or both),
//! `SEMIFLOW_BENCH_BATCH=64,256` picks batch sizes, `SEMIFLOW_BENCH_STEPS=5` sets timed steps.
//! `SEMIFLOW_BENCH_DEVICE=cuda` (or `cuda:N`; default `cpu`) runs the steps on a GPU, with
//! candle's own conv/BatchNorm there (the custom kernels are CPU-only); needs `--features cuda`.
//! `bench/torch_step.py` prints the same table for PyTorch.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semiflow_stages::augment::AugmentCfg;
use semiflow_stages::data::{loader, Images};
use semiflow_stages::model::{ModelCfg, Network};
use semiflow_stages::optim::{Lars, Optimizer};
use semiflow_stages::{kernels, loss};

// Candle allocates every op result; mimalloc keeps those allocations cheap, as in the engine binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EPS: f64 = 1e-5;
const CLASSES: usize = 10;

/// A conv (no bias) followed by BatchNorm.
struct ConvBn {
    w: Var,
    gamma: Var,
    beta: Var,
    running_mean: Tensor,
    running_var: Tensor,
    stride: usize,
    pad: usize,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, dev: &Device) -> Result<Self> {
        let std = (2.0 / (cin * k * k) as f64).sqrt();
        Ok(Self {
            w: Var::from_tensor(&(Tensor::randn(0f32, 1.0, (cout, cin, k, k), dev)? * std)?)?,
            gamma: Var::ones(cout, DType::F32, dev)?,
            beta: Var::zeros(cout, DType::F32, dev)?,
            running_mean: Tensor::zeros(cout, DType::F32, dev)?,
            running_var: Tensor::ones(cout, DType::F32, dev)?,
            stride,
            pad: k / 2,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.w.clone(), self.gamma.clone(), self.beta.clone()]
    }

    fn conv(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let w = if train {
            self.w.as_tensor().clone()
        } else {
            self.w.as_tensor().detach()
        };
        Ok(kernels::conv2d(x, &w, self.stride, self.pad, 1)?)
    }

    /// conv → BN (→ ReLU), or with `residual`: conv → BN → + residual → ReLU.
    fn forward(
        &self,
        x: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let h = self.conv(x, train)?;
        let (g, b) = (self.gamma.as_tensor(), self.beta.as_tensor());
        Ok(match (train, residual) {
            (true, None) => kernels::batch_norm_train(&h, g, Some(b), EPS, relu)?.0,
            (true, Some(r)) => kernels::batch_norm_add_relu_train(&h, r, g, Some(b), EPS)?.0,
            (false, None) => kernels::batch_norm_eval(
                &h,
                &g.detach(),
                Some(&b.detach()),
                &self.running_mean,
                &self.running_var,
                EPS,
                relu,
            )?,
            (false, Some(r)) => kernels::batch_norm_add_relu_eval(
                &h,
                r,
                &g.detach(),
                Some(&b.detach()),
                &self.running_mean,
                &self.running_var,
                EPS,
            )?,
        })
    }
}

struct BasicBlock {
    c1: ConvBn,
    c2: ConvBn,
    down: Option<ConvBn>,
}

impl BasicBlock {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.c1.forward(x, true, None, train)?;
        let shortcut = match &self.down {
            Some(d) => d.forward(x, false, None, train)?,
            None => x.clone(),
        };
        self.c2.forward(&h, true, Some(&shortcut), train)
    }
}

/// CIFAR ResNet: 3×3 stride-1 stem, no max-pool, two basic blocks per stage.
struct ResNet {
    stem: ConvBn,
    blocks: Vec<BasicBlock>,
    fc_w: Var,
    fc_b: Var,
    /// Multiply-adds ×2 of one image's forward pass.
    flops_fwd: f64,
}

impl ResNet {
    fn new(widths: [usize; 4], dev: &Device) -> Result<Self> {
        let stem = ConvBn::new(3, widths[0], 3, 1, dev)?;
        let mut blocks = Vec::new();
        let mut cin = widths[0];
        for (stage, &cout) in widths.iter().enumerate() {
            for i in 0..2 {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let down = (stride != 1 || cin != cout)
                    .then(|| ConvBn::new(cin, cout, 1, stride, dev))
                    .transpose()?;
                blocks.push(BasicBlock {
                    c1: ConvBn::new(cin, cout, 3, stride, dev)?,
                    c2: ConvBn::new(cout, cout, 3, 1, dev)?,
                    down,
                });
                cin = cout;
            }
        }
        let flops = conv_flops(widths) + 2.0 * (cin * CLASSES) as f64;
        let bound = 1.0 / (cin as f64).sqrt();
        Ok(Self {
            stem,
            blocks,
            fc_w: Var::from_tensor(&Tensor::rand(
                -bound as f32,
                bound as f32,
                (CLASSES, cin),
                dev,
            )?)?,
            fc_b: Var::zeros(CLASSES, DType::F32, dev)?,
            flops_fwd: flops,
        })
    }

    fn vars(&self) -> Vec<Var> {
        let mut v = self.stem.vars();
        for b in &self.blocks {
            v.extend(b.c1.vars());
            v.extend(b.c2.vars());
            if let Some(d) = &b.down {
                v.extend(d.vars());
            }
        }
        v.extend([self.fc_w.clone(), self.fc_b.clone()]);
        v
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = self.stem.forward(x, true, None, train)?;
        for b in &self.blocks {
            h = b.forward(&h, train)?;
        }
        let pooled = h.mean((2, 3))?;
        let (w, b) = if train {
            (self.fc_w.as_tensor().clone(), self.fc_b.as_tensor().clone())
        } else {
            (
                self.fc_w.as_tensor().detach(),
                self.fc_b.as_tensor().detach(),
            )
        };
        Ok(candle_nn::Linear::new(w, Some(b)).forward(&pooled)?)
    }
}

/// Multiply-adds ×2 of the convolutions of one 32×32 image through the CIFAR ResNet with these
/// group widths (two basic blocks per group, 1×1 projection shortcuts).
fn conv_flops(widths: [usize; 4]) -> f64 {
    let mut side = 32usize;
    let mut flops = 2.0 * (3 * widths[0] * 9 * side * side) as f64;
    let mut cin = widths[0];
    for (stage, &cout) in widths.iter().enumerate() {
        for i in 0..2 {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            side /= stride;
            flops += 2.0 * ((cin * cout * 9 + cout * cout * 9) * side * side) as f64;
            if stride != 1 || cin != cout {
                flops += 2.0 * (cin * cout * side * side) as f64;
            }
            cin = cout;
        }
    }
    flops
}

/// SGD with momentum 0.9 and weight decay 5e-4 (PyTorch's formulation), on plain candle ops.
struct Sgd {
    vars: Vec<Var>,
    momentum: Vec<Tensor>,
    lr: f64,
}

impl Sgd {
    fn new(vars: Vec<Var>, lr: f64) -> Result<Self> {
        let momentum = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { vars, momentum, lr })
    }

    fn step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        for (v, m) in self.vars.iter().zip(self.momentum.iter_mut()) {
            let Some(g) = grads.get(v) else { continue };
            let g = (g + (v.as_tensor() * 5e-4)?)?;
            *m = ((&*m * 0.9)? + g)?;
            v.set(&(v.as_tensor() - (&*m * self.lr)?)?)?;
        }
        Ok(())
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Median seconds of `steps` runs of `f` after `warmup` untimed runs.
fn time_it(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// fp32 GEMM GFLOP/s on all threads: the ceiling the conv kernels work against. The best of 15
/// products: on a shared VM the median drifted by a third between runs.
fn gemm_peak(dev: &Device) -> Result<f64> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    a.matmul(&b)?;
    dev.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..15 {
        let t = Instant::now();
        a.matmul(&b)?;
        // A GPU only queues the product; wait for it.
        dev.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * n * n) as f64 / best / 1e9)
}

struct Config {
    sections: Option<Vec<String>>,
    batches: Vec<usize>,
    steps: usize,
}

impl Config {
    fn from_env() -> Result<Self> {
        let list = |key: &str| {
            std::env::var(key).ok().map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .collect::<Vec<_>>()
            })
        };
        let batches = match list("SEMIFLOW_BENCH_BATCH") {
            Some(v) => v
                .iter()
                .map(|s| {
                    s.parse()
                        .with_context(|| format!("SEMIFLOW_BENCH_BATCH: {s:?} is not a batch size"))
                })
                .collect::<Result<_>>()?,
            None => vec![64, 256],
        };
        let steps = match std::env::var("SEMIFLOW_BENCH_STEPS") {
            Ok(s) => s
                .parse()
                .with_context(|| format!("SEMIFLOW_BENCH_STEPS: {s:?} is not a count"))?,
            Err(_) => 5,
        };
        Ok(Self {
            sections: list("SEMIFLOW_BENCH"),
            batches,
            steps,
        })
    }

    fn wants(&self, section: &str) -> bool {
        self.sections
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == section))
    }

    /// The pretrain section runs the models named among the sections, or both if none is named.
    fn wants_pretrain(&self, model: &str) -> bool {
        let named = |m: &str| {
            self.sections
                .as_ref()
                .is_some_and(|s| s.iter().any(|x| x == m))
        };
        self.wants("pretrain") && (named(model) || !MODELS.iter().any(|(m, _)| named(m)))
    }
}

/// The two benchmarked CIFAR ResNets: name and group widths.
const MODELS: [(&str, [usize; 4]); 2] =
    [("small", [16, 32, 64, 128]), ("r18", [64, 128, 256, 512])];

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
    // Candle and gemm size their thread pools from this; unset, candle re-reads /proc/cpuinfo on
    // every matmul. Must happen before the first rayon use.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // Keep freed memory mapped for reuse: otherwise every large op result page-faults fresh zeroed
    // pages from the kernel (11k faults per small-ResNet step, ~10% of its CPU time). mimalloc
    // reads MIMALLOC_* variables before main, so set the option directly.
    // `mi_option_purge_delay` is 15 in mimalloc.h (v2 and v3); libmimalloc-sys names no constant.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setter of the linked mimalloc, called before any threads start.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
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

    let peak = if ["gemm", "small", "r18", "pretrain"]
        .iter()
        .any(|s| cfg.wants(s))
    {
        let p = gemm_peak(&dev)?;
        println!("fp32 GEMM 1024^3: {p:.0} GFLOP/s\n");
        Some(p)
    } else {
        None
    };

    println!("| model | batch | mode | images/s | ms/step | GFLOP/s | % of GEMM peak |");
    println!("|---|---|---|---|---|---|---|");
    for (name, widths) in MODELS {
        if !cfg.wants(name) {
            continue;
        }
        let model = ResNet::new(widths, &dev)?;
        for &batch in &cfg.batches {
            let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), &dev)?;
            let labels = Tensor::from_vec(
                (0..batch as u32)
                    .map(|i| i % CLASSES as u32)
                    .collect::<Vec<_>>(),
                batch,
                &dev,
            )?;
            let fwd = time_it(1, cfg.steps, || {
                model.forward(&x, false)?;
                dev.synchronize()?;
                Ok(())
            })?;
            let mut sgd = Sgd::new(model.vars(), 0.01)?;
            let train = time_it(1, cfg.steps, || {
                let logits = model.forward(&x, true)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
                sgd.step(&loss)?;
                // Reading the loss forces the step to finish, as a training loop would.
                loss.to_scalar::<f32>()?;
                Ok(())
            })?;
            for (mode, secs, flops) in [
                ("fwd (eval)", fwd, model.flops_fwd),
                ("train", train, 3.0 * model.flops_fwd),
            ] {
                let gflops = batch as f64 * flops / secs / 1e9;
                let frac = peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * gflops / p));
                println!(
                    "| {name} | {batch} | {mode} | {:.1} | {:.1} | {gflops:.0} | {frac} |",
                    batch as f64 / secs,
                    secs * 1e3
                );
            }
        }
    }
    let gemm_frac =
        |gflops: f64| peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * gflops / p));
    // SimCLR pretraining as the `pretrain` kind runs it; images/s counts views (2 per image).
    let mut pretrain_rate: Option<f64> = None;
    for (name, widths) in MODELS {
        if !cfg.wants_pretrain(name) {
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
                gemm_frac(gflops)
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
