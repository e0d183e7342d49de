//! The numerics profile: which arithmetic a stage's bits depend on, recorded with every result.
//!
//! There is one profile, `portable-avx2`, and it gives the same bits on every x86-64 CPU with
//! AVX2 + FMA, with or without AVX-512, at any thread count:
//! - **GEMM** (`gemm` 0.19, through candle's matmul and semiflow's convolutions): built without
//!   its `x86-v4` feature, so it runs the same AVX2 + FMA microkernels everywhere; those sum each
//!   output element as an in-order chain of fused multiply-adds per K block, one accumulator per
//!   element, so the vector width never enters. The K block length, which `gemm` derives from the
//!   CPU's L1 cache, is pinned (`candle_core::cpu_backend::pinned_gemm`). `gemm`'s threads split
//!   rows and columns, never K.
//! - **Convolutions** (the `semiflow-kernels` crate, `kernels/src/conv.rs`): the batch's chunks
//!   and the weight gradient's grouping of them are fixed by the data's shape, not the thread
//!   count; the direct kernels reproduce the GEMM's sums exactly (unit-tested), and use AVX2 + FMA
//!   only.
//! - **BatchNorm, optimizers, losses**: per-channel sums in fixed 8-lane AVX2 order (bit-identical
//!   to their portable loops, tested) or sequential; parallel reductions collect fixed-size chunk
//!   partials and add them in order.
//! - **Elementwise math** (`exp`, `ln`, …) is glibc's, which picks its FMA variants on every CPU
//!   of the class.
//!
//! What is *not* covered: another profile (none exists yet: AVX-512 GEMM kernels were measured in
//! README "Reproducibility" and would be one), a CPU without AVX2 + FMA (the direct kernels and
//! `gemm` fall back to other code, whose sums differ), aarch64 (NEON kernels of other widths and
//! blocking), and GPUs.

use serde::{Deserialize, Serialize};

/// The profile this build computes with.
pub const PROFILE: &str = "portable-avx2";

/// Part of every numerics-dependent kind's cache key (see `api::KindSpec::numerics`). Bump it,
/// once, when a change alters any such stage's outputs; every training and eval kind then gets a
/// new key together. 0 is the arithmetic every result before pinning was computed with on an
/// AVX2-only CPU with a 32 KiB L1 and 2 threads, which the pinned path reproduces.
pub const NUMERICS_VERSION: u32 = 0;

/// The numerics facts of one run, stored in each record's provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumericsInfo {
    pub profile: String,
    pub version: u32,
    /// `model name` from /proc/cpuinfo (or the architecture where there is none).
    pub cpu: String,
    /// The ISA extensions that matter here, as detected: avx2, fma, avx512f.
    pub isa: Vec<String>,
    /// Whether this CPU runs the profile's kernels (AVX2 + FMA present).
    pub in_profile: bool,
    pub threads: usize,
}

/// The facts of this process (CPU and ISA read once: every node's commit records them).
pub fn current(threads: usize) -> NumericsInfo {
    static CPU: std::sync::OnceLock<(String, Vec<String>)> = std::sync::OnceLock::new();
    let (cpu, isa) = CPU.get_or_init(|| (cpu_model(), isa())).clone();
    let in_profile = isa.iter().any(|f| f == "avx2") && isa.iter().any(|f| f == "fma");
    NumericsInfo {
        profile: PROFILE.to_string(),
        version: NUMERICS_VERSION,
        cpu,
        isa,
        in_profile,
        threads,
    }
}

fn isa() -> Vec<String> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx2", std::is_x86_feature_detected!("avx2")),
            ("fma", std::is_x86_feature_detected!("fma")),
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                out.push(name.to_string());
            }
        }
    }
    out
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Why two runs' bits may differ, from their numerics facts: empty when the profile guarantees
/// equal bits. `recorded` is `None` for records made before numerics were recorded.
pub fn explain_difference(recorded: Option<&NumericsInfo>, now: &NumericsInfo) -> Vec<String> {
    let mut why = Vec::new();
    let Some(r) = recorded else {
        why.push(
            "the record predates pinned numerics: it was computed with the CPU's own GEMM blocking \
             and thread-dependent convolution chunks, so equal bits are only expected on an \
             AVX2-only CPU with a 32 KiB L1 at 2 threads"
                .to_string(),
        );
        return why;
    };
    if r.profile != now.profile || r.version != now.version {
        why.push(format!(
            "numerics profile {} v{} then, {} v{} now: bits are expected to differ",
            r.profile, r.version, now.profile, now.version
        ));
    }
    for (info, when) in [(r, "recorded on"), (now, "this CPU")] {
        if !info.in_profile {
            why.push(format!(
                "{when} {} lacks AVX2 + FMA ({}): outside the profile, bits may differ",
                info.cpu,
                info.isa.join(" ")
            ));
        }
    }
    why
}

/// The facts that differ between two runs, for audit output (informational).
pub fn describe_changes(recorded: &NumericsInfo, now: &NumericsInfo) -> Vec<String> {
    let mut out = Vec::new();
    if recorded.cpu != now.cpu {
        out.push(format!("CPU {} → {}", recorded.cpu, now.cpu));
    }
    if recorded.isa != now.isa {
        out.push(format!(
            "ISA [{}] → [{}]",
            recorded.isa.join(" "),
            now.isa.join(" ")
        ));
    }
    if recorded.threads != now.threads {
        out.push(format!("threads {} → {}", recorded.threads, now.threads));
    }
    if recorded.profile != now.profile || recorded.version != now.version {
        out.push(format!(
            "profile {} v{} → {} v{}",
            recorded.profile, recorded.version, now.profile, now.version
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_profile_on_other_cpus_and_threads_expects_equal_bits() {
        let a = current(2);
        let mut b = a.clone();
        b.cpu = "AMD EPYC 7B13".into();
        b.threads = 8;
        b.isa = vec!["avx2".into(), "fma".into()];
        b.in_profile = true;
        if a.in_profile {
            assert!(explain_difference(Some(&b), &a).is_empty());
        }
        assert_eq!(describe_changes(&b, &b), Vec::<String>::new());
        assert!(describe_changes(&b, &a)
            .iter()
            .any(|c| c.starts_with("threads 8 →")));
        let mut c = b.clone();
        c.version += 1;
        assert!(!explain_difference(Some(&c), &b).is_empty());
        assert!(!explain_difference(None, &b).is_empty());
    }
}
