//! What both speed benches share (`kernels/benches/speed.rs`, and `stages/benches/speed.rs`, which
//! includes this file by path): process setup, the environment filters, the timer, the GEMM peak,
//! the benchmarked CIFAR ResNets and their FLOP count.

// Each bench uses its own subset.
#![allow(dead_code)]

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

/// The two benchmarked CIFAR ResNets: name and group widths.
pub const MODELS: [(&str, [usize; 4]); 2] =
    [("small", [16, 32, 64, 128]), ("r18", [64, 128, 256, 512])];

/// Thread count and allocator as in the `semiflow` binary. Must run before the first rayon use.
pub fn setup_process() {
    // Candle and gemm size their thread pools from this; unset, candle re-reads /proc/cpuinfo on
    // every matmul.
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
}

/// Multiply-adds ×2 of the convolutions of one 32×32 image through the CIFAR ResNet with these
/// group widths (two basic blocks per group, 1×1 projection shortcuts).
pub fn conv_flops(widths: [usize; 4]) -> f64 {
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

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Median seconds of `steps` runs of `f` after `warmup` untimed runs.
pub fn time_it(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
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
pub fn gemm_peak(dev: &Device) -> Result<f64> {
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

/// "x% of the GEMM peak", or "-" when the peak was not measured.
pub fn peak_frac(peak: Option<f64>, gflops: f64) -> String {
    peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * gflops / p))
}

/// The filters, from the environment: `SEMIFLOW_BENCH` (sections), `SEMIFLOW_BENCH_BATCH`,
/// `SEMIFLOW_BENCH_STEPS`.
pub struct Config {
    pub sections: Option<Vec<String>>,
    pub batches: Vec<usize>,
    pub steps: usize,
}

impl Config {
    pub fn from_env() -> Result<Self> {
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

    /// Whether `SEMIFLOW_BENCH` names this section (or is unset).
    pub fn wants(&self, section: &str) -> bool {
        self.sections
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == section))
    }

    /// Whether `SEMIFLOW_BENCH` is set and names this section.
    pub fn names(&self, section: &str) -> bool {
        self.sections
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| x == section))
    }
}
