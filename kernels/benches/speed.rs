//! The kernels' speed bench: fp32 GEMM peak, then images/s of an eval forward and of a full
//! training step (forward + backward + SGD) for a small CIFAR ResNet and ResNet-18 built on
//! `semiflow_kernels`' conv2d and BatchNorm. Every row shows its fraction of the GEMM peak.
//! `bench/torch_step.py` prints the same table for PyTorch; `stages/benches/speed.rs` times the
//! real SimCLR pretraining step and augmentation.
//!
//! Run: `cargo bench -p semiflow-kernels --bench speed`
//! Filters (comma lists): `SEMIFLOW_BENCH=gemm,small,r18` picks sections,
//! `SEMIFLOW_BENCH_BATCH=64,256` picks batch sizes, `SEMIFLOW_BENCH_STEPS=5` sets timed steps.
//! `SEMIFLOW_BENCH_DEVICE=cuda` (or `cuda:N`; default `cpu`) runs the steps on a GPU, with
//! candle's own conv/BatchNorm there (the custom kernels are CPU-only); needs `--features cuda`.

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor, Var};
use common::{conv_flops, gemm_peak, peak_frac, time_it, Config, MODELS};
use semiflow_kernels as kernels;

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

/// `SEMIFLOW_BENCH_DEVICE`: `cpu` (default), `cuda` or `cuda:N`; with the device's description.
/// A GPU is opened as `semiflow_stages::device` opens it (one shared stream), after the same check
/// of the CUDA libraries.
fn open_device() -> Result<(Device, String)> {
    let choice = std::env::var("SEMIFLOW_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let ordinal = match choice.as_str() {
        "cpu" => return Ok((Device::Cpu, "CPU".into())),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| {
                format!("SEMIFLOW_BENCH_DEVICE: {other:?} is not cpu, cuda or cuda:N")
            })?,
    };
    check_cuda_libraries().with_context(|| format!("SEMIFLOW_BENCH_DEVICE={choice}"))?;
    let dev = Device::new_cuda_with_stream(ordinal).with_context(|| {
        format!("SEMIFLOW_BENCH_DEVICE={choice}: needs `--features cuda` and a CUDA device")
    })?;
    Ok((dev, format!("on cuda:{ordinal}")))
}

/// cudarc opens the CUDA libraries at first use and panics when one is missing: name it instead.
#[cfg(feature = "cuda")]
fn check_cuda_libraries() -> Result<()> {
    use candle_core::cuda_backend::cudarc;
    // SAFETY: only dlopen/dlclose of the named libraries.
    let present: [(&str, bool); 4] = unsafe {
        [
            (
                "libcuda.so (the NVIDIA driver: no GPU or no driver here?)",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("libcublas.so.13", cudarc::cublas::sys::is_culib_present()),
            (
                "libcublasLt.so.13",
                cudarc::cublaslt::sys::is_culib_present(),
            ),
            ("libcurand.so.10", cudarc::curand::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "cannot load {} (put the CUDA 13 libraries on LD_LIBRARY_PATH)",
        missing.join(", ")
    );
    Ok(())
}

/// Without the `cuda` feature candle itself says so when the device is opened.
#[cfg(not(feature = "cuda"))]
fn check_cuda_libraries() -> Result<()> {
    Ok(())
}

fn main() -> Result<()> {
    common::setup_process();
    let cfg = Config::from_env()?;
    let (dev, on) = open_device()?;
    let threads = rayon::current_num_threads();
    println!(
        "semiflow kernels speed bench ({on}): {threads} threads, {} timed steps (median)",
        cfg.steps
    );

    let peak = if ["gemm", "small", "r18"].iter().any(|s| cfg.wants(s)) {
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
                println!(
                    "| {name} | {batch} | {mode} | {:.1} | {:.1} | {gflops:.0} | {} |",
                    batch as f64 / secs,
                    secs * 1e3,
                    peak_frac(peak, gflops)
                );
            }
        }
    }
    Ok(())
}
